//! The config's loading and validation, through the file format.

use super::*;

const GOOD: &str = r#"
[[frontends]]
name = "web"
mode = "tcp"
address = "198.18.100.1"
binds = [{ port = 80 }, { port = 53, protocol = "udp" }]
default_backend = "app"
interfaces = ["eth0"]
snat_address = "198.18.2.1"

[[backends]]
name = "app"
mode = "tcp"
balancing_method = "maglev"
port = "8080"
servers = { type = "addresses", addresses = [
  { address = "198.18.11.2", weight = 1 },
  { address = "198.18.12.2", weight = 2 },
] }
"#;

fn errors(text: &str) -> ConfigError {
    Config::parse("lb.toml", text).expect_err("config should be rejected")
}

#[test]
fn every_example_config_is_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
    }
    assert!(seen >= 2);
}

#[test]
fn dsr_needs_equal_ports() {
    let text = GOOD.replace("snat_address = \"198.18.2.1\"", "forwarding = \"dsr\"");
    let e = errors(&text);
    assert_eq!(e.problems[0].1.field, "frontends[0].binds");
    assert!(
        e.problems[0]
            .1
            .message
            .contains("DSR cannot translate ports")
    );
}

#[test]
fn good_config_parses() {
    let c = Config::parse("lb.toml", GOOD).unwrap();
    assert_eq!(c.backends[0].port.number, 8080);
    assert_eq!(c.frontends[0].binds[1].protocol, Protocol::Udp);
    assert_eq!(c.interfaces(), vec!["eth0".to_string()]);
}

#[test]
fn weight_out_of_range_names_field_and_line() {
    let e = errors(&GOOD.replace("weight = 2", "weight = 101"));
    let (line, p) = &e.problems[0];
    assert_eq!(p.field, "backends[0].servers.addresses[1].weight");
    assert_eq!(*line, Some(18));
    let shown = e.to_string();
    assert!(shown.contains("lb.toml:18:"), "{shown}");
    assert!(shown.contains("fix:"), "{shown}");
}

#[test]
fn mode_mismatch_unknown_backend_and_bad_address_are_reported() {
    let e = errors(&GOOD.replacen(r#"mode = "tcp""#, r#"mode = "http""#, 1));
    assert!(
        e.problems
            .iter()
            .any(|(l, p)| p.field == "frontends[0].mode"
                && p.message.contains("differs")
                && *l == Some(4))
    );

    let e = errors(&GOOD.replace(r#"default_backend = "app""#, r#"default_backend = "nope""#));
    assert_eq!(e.problems[0].1.field, "frontends[0].default_backend");
    assert_eq!(e.problems[0].0, Some(7));

    let e = errors(&GOOD.replace("198.18.12.2", "198.18.12.999"));
    assert_eq!(
        e.problems[0].1.field,
        "backends[0].servers.addresses[1].address"
    );
    assert_eq!(e.problems[0].0, Some(18));
}

#[test]
fn more_than_500_servers_is_rejected() {
    let servers: Vec<String> = (0..501)
        .map(|i| {
            format!(
                "{{ address = \"198.18.{}.{}\" }}",
                20 + i / 250,
                1 + i % 250
            )
        })
        .collect();
    let text = GOOD.replace(
        "{ address = \"198.18.11.2\", weight = 1 },",
        &format!("{},", servers.join(",")),
    );
    let e = errors(&text);
    assert!(
        e.problems
            .iter()
            .any(|(_, p)| p.field == "backends[0].servers.addresses"
                && p.message.contains("at most 500"))
    );
}

#[test]
fn http_frontends_are_validated_field_by_field() {
    let http = r#"
[[frontends]]
name = "site"
mode = "http"
address = "198.18.100.3"
binds = [{ port = 80, use_http3 = true }, { port = 443, ssl = true }]
default_backend = "site"
acls = [{ name = "a", criterion = "path_end", value = "/x" }]
backends = [{ backend = "nope", cond = "unless", test = "b" }]
options = { trusted_proxies = ["198.18.0.0/33"] }

[[backends]]
name = "site"
mode = "http"
balancing_method = "maglev"
port = 80
servers = { type = "addresses", addresses = [{ address = "198.18.11.2" }] }
options = { tls_verify = true, proxy_protocol = "v3" }
"#;
    let e = errors(http);
    let fields: Vec<&str> = e.problems.iter().map(|(_, p)| p.field.as_str()).collect();
    for field in [
        "frontends[0].binds[0].use_http3",
        "frontends[0].binds[1].ssl_certificate",
        "frontends[0].acls[0].criterion",
        "frontends[0].backends[0].cond",
        "frontends[0].backends[0].test",
        "frontends[0].backends[0].backend",
        "frontends[0].options.trusted_proxies[0]",
        "backends[0].balancing_method",
        "backends[0].options.tls_verify",
        "backends[0].options.proxy_protocol",
    ] {
        assert!(fields.contains(&field), "{field} not in {fields:?}");
    }
    assert!(e.problems.iter().all(|(line, _)| line.is_some()), "{e}");
}

#[test]
fn options_methods_and_dataplane_are_validated() {
    let e = errors(&GOOD.replace("\"maglev\"", "\"fastest\""));
    assert!(e.problems[0].1.message.contains("unknown balancing_method"));

    let with_options = GOOD.replace(
        "port = \"8080\"",
        "port = \"8080\"\noptions = { table_size = 65536, sticky_session = { type = \"cookie\" }, health_check = { type = \"smtp\", on_down = \"close\", user = \"x\" } }",
    );
    let e = errors(&with_options);
    let fields: Vec<&str> = e.problems.iter().map(|(_, p)| p.field.as_str()).collect();
    assert!(
        fields.contains(&"backends[0].options.table_size"),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"backends[0].options.sticky_session.type"),
        "{fields:?}"
    );
    for field in ["type", "on_down", "user"] {
        let field = format!("backends[0].options.health_check.{field}");
        assert!(
            fields.contains(&field.as_str()),
            "{field} not in {fields:?}"
        );
    }

    let small = GOOD.replace(
        "port = \"8080\"",
        "port = \"8080\"\noptions = { table_size = 101 }",
    );
    let e = errors(&small);
    assert!(e.problems[0].1.message.contains("100 x 2 servers"), "{e}");

    let max_conn = GOOD.replace("weight = 2 }", "weight = 2, max_conn = 10 }");
    let e = errors(&max_conn);
    assert_eq!(
        e.problems[0].1.field,
        "backends[0].servers.addresses[1].max_conn"
    );
    assert!(Config::parse("t", &max_conn.replace("\"maglev\"", "\"first\"")).is_ok());

    let e = errors(&format!("{GOOD}\n[dataplane]\nudp_timeout = \"soon\"\n"));
    assert_eq!(e.problems[0].1.field, "dataplane.udp_timeout");
    assert_eq!(e.problems[0].0, Some(22));
}

#[test]
fn sticky_ttl_defaults_to_five_minutes() {
    let c = Config::parse(
        "t",
        &GOOD.replace(
            "port = \"8080\"",
            "port = \"8080\"\noptions = { sticky_session = { type = \"source_ip\" } }",
        ),
    )
    .unwrap();
    assert_eq!(Config::sticky_ttl_s(&c.backends[0]), 300);
}

#[test]
fn unknown_fields_and_words_are_reported_together_each_at_its_line() {
    let text = GOOD
        .replace("weight = 1 }", "wieght = 1 }")
        .replace("\"maglev\"", "\"fastest\"")
        + "\n[dataplane]\nudp_timeout = \"1 fortnight\"\n";
    let e = errors(&text);
    let found: Vec<(Option<usize>, &str)> = e
        .problems
        .iter()
        .map(|(line, p)| (*line, p.field.as_str()))
        .collect();
    for wanted in [
        (Some(14), "backends[0].balancing_method"),
        (Some(17), "backends[0].servers.addresses[0].wieght"),
        (Some(22), "dataplane.udp_timeout"),
    ] {
        assert!(found.contains(&wanted), "{wanted:?} not in {found:?}");
    }
    let shown = e.to_string();
    assert!(shown.contains("unknown field \"wieght\""), "{shown}");
    assert!(shown.contains("fix: use one of: roundrobin, leastconn, first, source, maglev"));
    assert!(shown.contains("fix: write a duration such as"), "{shown}");
}

#[test]
fn messages_spell_values_as_the_config_does() {
    let e = errors(&GOOD.replacen(r#"mode = "tcp""#, r#"mode = "http""#, 1));
    let shown = e.to_string();
    assert!(
        shown.contains("frontend mode http differs from backend \"app\" mode tcp"),
        "{shown}"
    );
}

#[test]
fn durations_and_closed_sets_are_typed_once() {
    let c = Config::parse(
        "t",
        &format!("{GOOD}\n[dataplane]\ntcp_syn_timeout = \"1m 30s\"\n"),
    )
    .unwrap();
    assert_eq!(
        c.dataplane.tcp_syn_timeout,
        std::time::Duration::from_secs(90)
    );
    assert_eq!(c.backends[0].balancing_method, Method::Maglev);
    assert_eq!(c.frontends[0].binds[1].protocol, Protocol::Udp);
}

#[test]
fn names_are_short_and_plain() {
    for bad in ["", "has space", "slash/name", &"x".repeat(65)] {
        let e = errors(&GOOD.replace("name = \"app\"", &format!("name = {bad:?}")));
        assert!(
            e.problems
                .iter()
                .any(|(_, p)| p.field == "backends[0].name" && p.fix.contains("1 to 64")),
            "{bad:?}: {e}"
        );
    }
    let ok = GOOD
        .replace("name = \"app\"", "name = \"app_v2.1-b\"")
        .replace(
            "default_backend = \"app\"",
            "default_backend = \"app_v2.1-b\"",
        );
    Config::parse("t", &ok).unwrap();
}

#[test]
fn connection_limits_and_header_rules_are_validated() {
    let http = r#"
[http]
max_connections = 0
underscore_headers = "strip"

[[frontends]]
name = "site"
mode = "http"
address = "198.18.100.3"
binds = [{ port = 80 }]
default_backend = "site"
options = { max_connections = 0 }

[[backends]]
name = "site"
mode = "http"
balancing_method = "roundrobin"
port = 80
servers = { type = "addresses", addresses = [{ address = "198.18.11.2" }] }
"#;
    let e = errors(http);
    let shown = e.to_string();
    assert!(
        shown.contains("fix: use one of: drop, reject, allow"),
        "{shown}"
    );
    let e = errors(&http.replace("underscore_headers = \"strip\"", ""));
    let mut fields: Vec<&str> = e.problems.iter().map(|(_, p)| p.field.as_str()).collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "frontends[0].options.max_connections",
            "http.max_connections"
        ],
        "{e}"
    );
    let good = http
        .replace("max_connections = 0\n", "max_connections = 20000\n")
        .replace("\"strip\"", "\"reject\"")
        .replace("{ max_connections = 0 }", "{ max_connections = 100 }");
    let c = Config::parse("t", &good).unwrap();
    assert_eq!(c.http.max_connections, Some(20000));
    assert_eq!(c.http.underscore_headers, UnderscoreHeaders::Reject);
    assert_eq!(c.frontends[0].options.max_connections, Some(100));
    let defaults = Config::parse("t", GOOD).unwrap();
    assert_eq!(defaults.http.max_connections, None);
    assert_eq!(defaults.http.underscore_headers, UnderscoreHeaders::Drop);

    // XDP counts no connections per frontend: refused there, with a way out.
    let e = errors(&GOOD.replace(
        "snat_address = \"198.18.2.1\"",
        "snat_address = \"198.18.2.1\"\noptions = { max_connections = 10 }",
    ));
    assert_eq!(
        e.problems[0].1.field,
        "frontends[0].options.max_connections"
    );
    assert!(e.problems[0].1.fix.contains("mode = \"http\""), "{e}");
}

/// GOOD with its `snat_address` line replaced by `lines`.
fn snat(lines: &str) -> String {
    GOOD.replace("snat_address = \"198.18.2.1\"", lines)
}

/// The one problem of a config: (line, field, message, fix).
fn only_problem(text: &str) -> (Option<usize>, String, String, String) {
    let e = errors(text);
    assert_eq!(e.problems.len(), 1, "{e}");
    let (line, p) = e.problems[0].clone();
    (line, p.field, p.message, p.fix)
}

#[test]
fn snat_addresses_and_ports_parse_and_default() {
    let c = Config::parse("lb.toml", GOOD).unwrap();
    let f = &c.frontends[0];
    assert_eq!(
        f.snat_addresses(),
        vec!["198.18.2.1".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(f.snat_ports(), PortRange::new(1024, 65535));
    let c = Config::parse(
        "lb.toml",
        &snat("snat_addresses = [\"198.18.2.1\", \"198.18.2.2\"]\nsnat_ports = \"20000-29999\""),
    )
    .unwrap();
    let f = &c.frontends[0];
    assert_eq!(f.snat_addresses().len(), 2);
    assert_eq!((f.snat_ports().min, f.snat_ports().max), (20000, 29999));
    // Written back as written (the API returns these fields).
    let json = serde_json::to_value(f).unwrap();
    assert_eq!(json["snat_addresses"][1], "198.18.2.2");
    assert_eq!(json["snat_ports"], "20000-29999");
    assert!(json.get("snat_address").is_none());
}

#[test]
fn snat_address_and_snat_addresses_together_are_refused() {
    let (line, field, message, fix) = only_problem(&snat(
        "snat_address = \"198.18.2.1\"\nsnat_addresses = [\"198.18.2.2\"]",
    ));
    assert_eq!(line, Some(10));
    assert_eq!(field, "frontends[0].snat_addresses");
    assert_eq!(
        message,
        "snat_address (198.18.2.1) and snat_addresses are both set"
    );
    assert!(fix.starts_with("keep one"), "{fix}");
}

#[test]
fn snat_addresses_are_checked_one_by_one() {
    let (line, field, message, fix) =
        only_problem(&snat("snat_addresses = [\"198.18.2.1\", \"2001:2::1\"]"));
    assert_eq!(
        (line, field.as_str()),
        (Some(9), "frontends[0].snat_addresses[1]")
    );
    assert_eq!(
        message,
        "snat_addresses 2001:2::1 is not of the same family as address 198.18.100.1"
    );
    assert_eq!(fix, "use an SNAT address of the frontend's family");

    let (_, field, message, fix) =
        only_problem(&snat("snat_addresses = [\"198.18.2.1\", \"198.18.2.1\"]"));
    assert_eq!(field, "frontends[0].snat_addresses[1]");
    assert_eq!(message, "SNAT address 198.18.2.1 is listed twice");
    assert_eq!(fix, "list each address once");

    let (_, field, message, _) = only_problem(&snat("snat_addresses = [\"0.0.0.0\"]"));
    assert_eq!(field, "frontends[0].snat_addresses[0]");
    assert_eq!(message, "0.0.0.0 cannot be an SNAT address");

    let (_, field, message, _) = only_problem(&snat("snat_address = \"2001:2::1\""));
    assert_eq!(field, "frontends[0].snat_address");
    assert_eq!(
        message,
        "snat_address 2001:2::1 is not of the same family as address 198.18.100.1"
    );

    let nine: Vec<String> = (1..=9).map(|i| format!("\"198.18.2.{i}\"")).collect();
    let (_, field, message, fix) =
        only_problem(&snat(&format!("snat_addresses = [{}]", nine.join(", "))));
    assert_eq!(field, "frontends[0].snat_addresses");
    assert_eq!(message, "9 SNAT addresses; a frontend has at most 8");
    assert!(fix.starts_with("list at most 8"), "{fix}");

    let (_, field, message, _) = only_problem(&snat("snat_addresses = []"));
    assert_eq!(field, "frontends[0].snat_address");
    assert_eq!(message, "a tcp frontend needs an SNAT address for full NAT");
}

#[test]
fn snat_ports_errors_name_the_line_and_the_fix() {
    for (ports, message) in [
        (
            "\"30000-20000\"",
            "port range \"30000-20000\" is backwards (30000 is past 20000)",
        ),
        (
            "\"0-100\"",
            "\"0\" in \"0-100\" is not a port from 1 to 65535",
        ),
        (
            "\"1024-65536\"",
            "\"65536\" in \"1024-65536\" is not a port from 1 to 65535",
        ),
    ] {
        let text = GOOD.replace(
            "snat_address = \"198.18.2.1\"",
            &format!("snat_address = \"198.18.2.1\"\nsnat_ports = {ports}"),
        );
        let e = errors(&text);
        let (line, p) = &e.problems[0];
        assert_eq!(p.field, "frontends[0].snat_ports");
        assert_eq!(*line, Some(10), "{e}");
        assert!(p.message.contains(message), "{}", p.message);
        assert_eq!(
            p.fix, "write the first and last port, such as \"1024-65535\"",
            "{e}"
        );
    }
}

#[test]
fn ha_and_bgp_sections_are_checked_field_by_field() {
    let ha = r#"
[ha]
listen = "198.18.50.1:7946"
peer = "198.18.50.1:7946"
secret_file = "/etc/lb/ha.secret"
sync_interval = "1ms"

[ha.vrrp]
virtual_router_id = 0
advert_int = "105ms"

[bgp]
local_as = 65001
router_id = "198.18.60.2"
neighbors = []
"#;
    let e = errors(&format!("{GOOD}{ha}"));
    let fields: Vec<&str> = e.problems.iter().map(|(_, p)| p.field.as_str()).collect();
    for field in [
        "ha.peer",
        "ha.sync_interval",
        "ha.vrrp.interface",
        "ha.vrrp.virtual_router_id",
        "ha.vrrp.advert_int",
        "ha.vrrp.addresses",
        "bgp.neighbors",
    ] {
        assert!(fields.contains(&field), "{field} in {fields:?}");
    }
    // Each names its line in the file.
    assert!(e.problems.iter().all(|(line, _)| line.is_some()), "{e}");
}

#[test]
fn the_stateless_fallback_needs_dsr_and_maglev() {
    let e = errors(&GOOD.replace(
        "snat_address = \"198.18.2.1\"",
        "snat_address = \"198.18.2.1\"\ndsr_stateless_fallback = true",
    ));
    assert_eq!(e.problems[0].1.field, "frontends[0].dsr_stateless_fallback");
    assert!(e.problems[0].1.message.contains("forwarding = \"dsr\""));
}

#[test]
fn http3_binds_and_quic_limits_are_validated() {
    // Certificates are only checked to exist here.
    let pem = std::env::temp_dir().join(format!("lb-config-test-{}.pem", std::process::id()));
    std::fs::write(&pem, "").unwrap();
    let pem = pem.display().to_string();
    let frontend = |binds: &str, http: &str| {
        let binds = binds.replace("/etc/lb/site.pem", &pem);
        format!(
            r#"
{http}
[[frontends]]
name = "site"
mode = "http"
address = "198.18.100.3"
binds = [{binds}]
default_backend = "site"

[[backends]]
name = "site"
mode = "http"
balancing_method = "roundrobin"
port = 80
servers = {{ type = "addresses", addresses = [{{ address = "198.18.11.2" }}] }}
"#
        )
    };
    let good = frontend(
        r#"{ port = 443, ssl = true, ssl_certificate = "/etc/lb/site.pem", use_http3 = true }"#,
        "[http]\nhttp3_idle_timeout = \"1m\"\nhttp3_max_streams = 200\nhttp3_max_udp_payload = 1350",
    );
    let config = Config::parse("lb.toml", &good).expect("an HTTP/3 bind with limits");
    assert_eq!(config.http.http3_max_streams, 200);
    assert_eq!(config.http.http3_max_udp_payload, 1350);

    let bad = frontend(
        r#"{ port = 443, ssl = true, ssl_certificate = "/etc/lb/site.pem", use_http3 = true }"#,
        "[http]\nhttp3_idle_timeout = \"11m\"\nhttp3_max_streams = 0\nhttp3_max_udp_payload = 1199",
    );
    let e = errors(&bad);
    let fields: Vec<&str> = e.problems.iter().map(|(_, p)| p.field.as_str()).collect();
    for field in [
        "http.http3_idle_timeout",
        "http.http3_max_streams",
        "http.http3_max_udp_payload",
    ] {
        assert!(fields.contains(&field), "{field} not in {fields:?}");
    }
    let zero = frontend(
        r#"{ port = 443, ssl = true, ssl_certificate = "/etc/lb/site.pem", use_http3 = true }"#,
        "[http]\nhttp3_idle_timeout = \"0s\"",
    );
    assert!(
        errors(&zero)
            .to_string()
            .contains("http.http3_idle_timeout")
    );

    // HTTP/3 takes the bind's port over UDP too: a udp bind of the same port collides.
    let twice = format!(
        "{}\n[[frontends]]\nname = \"dns\"\nmode = \"tcp\"\naddress = \"198.18.100.3\"\n\
         binds = [{{ port = 443, protocol = \"udp\" }}]\ndefault_backend = \"dns\"\n\
         interfaces = [\"eth0\"]\nsnat_address = \"198.18.2.1\"\n\n\
         [[backends]]\nname = \"dns\"\nmode = \"tcp\"\nbalancing_method = \"maglev\"\nport = 53\n\
         servers = {{ type = \"addresses\", addresses = [{{ address = \"198.18.11.3\" }}] }}\n",
        frontend(
            r#"{ port = 443, ssl = true, ssl_certificate = "/etc/lb/site.pem", use_http3 = true }"#,
            ""
        )
    );
    let e = errors(&twice);
    assert!(
        e.problems
            .iter()
            .any(|(_, p)| p.message.contains("bound twice")),
        "{e}"
    );
}

#[test]
fn upstream_pool_limits_are_validated() {
    let with = |http: &str| format!("[http]\n{http}\n");
    let config = Config::parse(
        "lb.toml",
        &with("pool_idle_per_server = 0\npool_idle_timeout = \"1m\""),
    )
    .expect("no pooling, and a minute's idle timeout");
    assert_eq!(config.http.pool_idle_per_server, 0);
    assert_eq!(
        config.http.pool_idle_timeout,
        std::time::Duration::from_secs(60)
    );
    let e = errors(&with(
        "pool_idle_per_server = 70000\npool_idle_timeout = \"2h\"",
    ));
    let fields: Vec<&str> = e.problems.iter().map(|(_, p)| p.field.as_str()).collect();
    for field in ["http.pool_idle_per_server", "http.pool_idle_timeout"] {
        assert!(fields.contains(&field), "{field} not in {fields:?}");
    }
    assert!(
        errors(&with("pool_idle_timeout = \"0s\""))
            .to_string()
            .contains("http.pool_idle_timeout")
    );
}
