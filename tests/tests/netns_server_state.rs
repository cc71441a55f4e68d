//! Runtime server state through the CLI against a running daemon, with real traffic:
//! `lb server drain|maint|ready|set-weight`. A drained server gets no new flows and its flows
//! end at the drain's timeout; maint and ready change the state; every change is saved to
//! the config file, whose comments stay.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    process::Command,
    time::{Duration, Instant},
};

use lb_tests::{
    require_root,
    topology::{SERVER_PORT, Topology, VIP, VIP_TCP_PORT, lb_binary},
    traffic::{LongConn, connect_by, drive_tcp},
    wait_until,
};

const API: &str = "http://198.18.0.1:8081";
const TOKEN: &str = "operator";

/// The demo's topology with named servers and comments an edit must keep.
fn config_text(tokens: &std::path::Path) -> String {
    format!(
        r#"# Edge node 7: the demo frontend.
[[frontends]]
name = "demo"
mode = "tcp"
address = "198.18.100.1"
binds = [{{ port = 80 }}]
default_backend = "demo-servers"
interfaces = ["eth-c", "s1", "s2", "s3"]
snat_address = "198.18.2.1"

# Three web servers; web3 is the new one.
[[backends]]
name = "demo-servers"
mode = "tcp"
balancing_method = "roundrobin"
port = 8080
servers = {{ type = "addresses", addresses = [
  {{ name = "web1", address = "198.18.11.2", weight = 1 }},  # rack A
  {{ name = "web2", address = "198.18.12.2", weight = 1 }},  # rack B
  {{ name = "web3", address = "198.18.13.2", weight = 1 }},
] }}

[dataplane]
gc_interval = "200ms"

[api]
listen = "198.18.0.1:8081"
token_file = "{}"
"#,
        tokens.display()
    )
}

/// `lb server ...` (or any lb command) in the client namespace: (exit ok, stdout, stderr).
fn lb(topo: &Topology, args: &[&str]) -> (bool, String, String) {
    let bin = lb_binary().unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &topo.client.name])
        .arg(bin)
        .args(args)
        .args(["--api", API, "--token", TOKEN])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The backend's servers as `lb servers -o json` shows them, by name.
fn servers(topo: &Topology) -> serde_json::Value {
    let (ok, out, err) = lb(topo, &["servers", "demo-servers", "-o", "json"]);
    assert!(ok, "lb servers: {err}");
    serde_json::from_str(&out).unwrap()
}

fn server<'a>(list: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    list["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no server {name} in {list}"))
}

fn assert_comments_kept(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    for comment in [
        "# Edge node 7: the demo frontend.",
        "# Three web servers; web3 is the new one.",
        "# rack A",
        "# rack B",
    ] {
        assert!(text.contains(comment), "{comment:?} lost:\n{text}");
    }
    text
}

#[test]
fn drain_maint_ready_and_set_weight_through_the_cli() {
    if !require_root("netns_server_state") {
        return;
    }
    let bin = lb_binary().unwrap();
    let id = std::process::id();
    let topo = Topology::new(&format!("lbss{id}"), 3).unwrap();
    topo.start_peers(&bin).unwrap();
    let _servers = topo.start_name_servers(SERVER_PORT).unwrap();
    let dir = std::env::temp_dir().join(format!("lbss{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let (config, tokens) = (dir.join("lb.toml"), dir.join("tokens"));
    std::fs::write(&tokens, format!("rw {TOKEN}\n")).unwrap();
    std::fs::write(&config, config_text(&tokens)).unwrap();
    let original_lines = std::fs::read_to_string(&config).unwrap().lines().count();
    topo.start_lb(&bin, &config).unwrap();
    let target: SocketAddr = (VIP, VIP_TCP_PORT).into();

    // Flows on every server before the drain.
    let conns = connect_by(
        &topo.client,
        target,
        12,
        Instant::now() + Duration::from_secs(10),
    )
    .unwrap();
    let (mut on_web1, mut others): (Vec<LongConn>, Vec<LongConn>) =
        conns.into_iter().partition(|c| c.server == "server1");
    assert!(!on_web1.is_empty() && !others.is_empty());

    // Drain web1 with a timeout: state DRAIN, effective weight 0, saved.
    let (ok, out, err) = lb(
        &topo,
        &["server", "drain", "demo-servers", "web1", "--timeout", "3s"],
    );
    assert!(ok, "lb server drain: {err}");
    assert!(out.contains("DRAIN"), "{out}");
    let list = servers(&topo);
    assert_eq!(server(&list, "web1")["state"], "drain");
    assert_eq!(server(&list, "web1")["effective_weight"], 0);
    assert_eq!(server(&list, "web1")["weight"], 1);
    let text = assert_comments_kept(&config);
    assert!(
        text.contains(r#"state = "drain""#)
            && text.contains(r#"drain_timeout = "3s""#)
            && text.contains("drain_started = \"20"),
        "{text}"
    );

    // New flows avoid web1; its own flows still answer.
    let tally = drive_tcp(&topo.client, target, 40, 1, 2).unwrap();
    assert_eq!(tally.failed, 0, "{:?}", tally.errors);
    assert!(
        !tally.per_server.contains_key("server1"),
        "a drained server got new flows: {}",
        tally.summary()
    );
    on_web1 = topo
        .client
        .run(move || {
            for c in on_web1.iter_mut() {
                assert_eq!(c.exchange().unwrap(), "server1");
            }
            on_web1
        })
        .unwrap()
        .join()
        .unwrap();

    // At the timeout, web1's flows are reset at their next packet; the others run on.
    topo.client
        .run(move || {
            wait_until(
                "web1's flows reset after the 3 s drain timeout",
                Duration::from_secs(15),
                || {
                    let ended = on_web1
                        .iter_mut()
                        .map(|c| c.exchange().is_err())
                        .filter(|&ended| ended)
                        .count();
                    Ok((ended == on_web1.len()).then_some(()))
                },
            )
        })
        .unwrap()
        .join()
        .unwrap()
        .unwrap();
    others = topo
        .client
        .run(move || {
            for c in others.iter_mut() {
                let server = c.server.clone();
                assert_eq!(
                    c.exchange().unwrap(),
                    server,
                    "a flow of another server moved"
                );
            }
            others
        })
        .unwrap()
        .join()
        .unwrap();
    drop(others);

    // Maintenance, named by address: MAINT, no new flows, not checked.
    let (ok, out, err) = lb(&topo, &["server", "maint", "demo-servers", "198.18.12.2"]);
    assert!(ok, "lb server maint: {err}");
    assert!(out.contains("MAINT"), "{out}");
    assert_eq!(server(&servers(&topo), "web2")["state"], "maint");
    let tally = drive_tcp(&topo.client, target, 20, 1, 2).unwrap();
    assert_eq!(
        tally.per_server.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from(["server3".to_string()]),
        "only web3 takes new flows: {}",
        tally.summary()
    );

    // Ready again; a new weight.
    for name in ["web1", "web2"] {
        let (ok, _, err) = lb(&topo, &["server", "ready", "demo-servers", name]);
        assert!(ok, "lb server ready {name}: {err}");
    }
    let (ok, _, err) = lb(
        &topo,
        &["server", "set-weight", "demo-servers", "web3", "2"],
    );
    assert!(ok, "lb server set-weight: {err}");
    let list = servers(&topo);
    for name in ["web1", "web2", "web3"] {
        assert_eq!(server(&list, name)["state"], "up", "{name}");
    }
    assert_eq!(server(&list, "web3")["weight"], 2);
    assert_eq!(server(&list, "web3")["effective_weight"], 2);
    let tally = drive_tcp(&topo.client, target, 40, 1, 2).unwrap();
    assert_eq!(tally.failed, 0);
    let share = |name: &str| tally.per_server.get(name).copied().unwrap_or(0);
    assert!(
        share("server1") > 0
            && share("server2") > 0
            && share("server3") > share("server1").max(share("server2")),
        "round robin over weights 1:1:2: {}",
        tally.summary()
    );
    let text = assert_comments_kept(&config);
    assert!(!text.contains("state ="), "ready leaves no state:\n{text}");
    assert!(
        text.contains(r#"{ name = "web3", address = "198.18.13.2", weight = 2 }"#),
        "{text}"
    );
    assert!(
        text.lines().count() <= original_lines + 1,
        "an edit rewrote the file:\n{text}"
    );

    // Bad input: a clear error, and nothing changes.
    let (ok, _, err) = lb(&topo, &["server", "drain", "demo-servers", "web9"]);
    assert!(!ok && err.contains("web9"), "{err}");
    let (ok, _, err) = lb(
        &topo,
        &["server", "set-weight", "demo-servers", "web1", "101"],
    );
    assert!(!ok && err.contains("weight"), "{err}");
    assert_eq!(server(&servers(&topo), "web1")["weight"], 1);

    let _ = std::fs::remove_dir_all(&dir);
}
