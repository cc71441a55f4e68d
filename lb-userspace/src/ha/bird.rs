//! `lb ha bird-config`: BIRD 2 announces every frontend's VIP as a host route to the `[bgp]`
//! neighbors, so a router spreads flows over the nodes by ECMP.

use std::{collections::BTreeSet, fmt::Write, net::IpAddr};

use anyhow::{Result, bail};

use crate::config::Config;

/// BIRD's config for this node.
pub fn render(config: &Config) -> Result<String> {
    let Some(bgp) = &config.bgp else {
        bail!(
            "the config has no [bgp] section: lb ha bird-config needs local_as, router_id and neighbors"
        );
    };
    if bgp.neighbors.is_empty() {
        bail!("[bgp] has no neighbors to announce the VIPs to");
    }
    // A VIP with several binds or frontends is announced once.
    let vips: BTreeSet<IpAddr> = config.frontends.iter().map(|f| f.address).collect();
    let v4: Vec<_> = vips.iter().filter(|a| a.is_ipv4()).collect();
    let v6: Vec<_> = vips.iter().filter(|a| a.is_ipv6()).collect();
    let hold = bgp.hold_time.as_secs().max(3);

    let mut out = String::new();
    writeln!(
        out,
        "# Written by `lb ha bird-config`; regenerate rather than edit."
    )?;
    writeln!(out, "router id {};\n", bgp.router_id)?;
    writeln!(out, "protocol device {{\n}}\n")?;
    if !v4.is_empty() {
        writeln!(out, "protocol static lb_vips4 {{\n  ipv4;")?;
        for a in &v4 {
            writeln!(out, "  route {a}/32 blackhole;")?;
        }
        writeln!(out, "}}\n")?;
    }
    if !v6.is_empty() {
        writeln!(out, "protocol static lb_vips6 {{\n  ipv6;")?;
        for a in &v6 {
            writeln!(out, "  route {a}/128 blackhole;")?;
        }
        writeln!(out, "}}\n")?;
    }
    for (i, n) in bgp.neighbors.iter().enumerate() {
        writeln!(out, "protocol bgp lb_peer{} {{", i + 1)?;
        writeln!(out, "  local as {};", bgp.local_as)?;
        writeln!(out, "  neighbor {} as {};", n.address, n.remote_as)?;
        writeln!(out, "  hold time {hold};")?;
        // Export only the VIPs' host routes (source static), import nothing: lb routes by
        // the kernel's own table.
        for (family, any) in [("ipv4", !v4.is_empty()), ("ipv6", !v6.is_empty())] {
            if any {
                writeln!(
                    out,
                    "  {family} {{\n    import none;\n    export where source = RTS_STATIC;\n  }};"
                )?;
            }
        }
        writeln!(out, "}}\n")?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[[frontends]]
name = "web"
mode = "tcp"
address = "198.18.0.10"
binds = [{ port = 80 }]
default_backend = "app"
interfaces = ["eth0"]
forwarding = "dsr"

[[frontends]]
name = "web6"
mode = "tcp"
address = "2001:2::10"
binds = [{ port = 80 }]
default_backend = "app6"
interfaces = ["eth0"]
forwarding = "dsr"

[[backends]]
name = "app"
mode = "tcp"
balancing_method = "maglev"
port = "80"
servers = { type = "addresses", addresses = [{ address = "198.18.11.2", weight = 1 }] }

[[backends]]
name = "app6"
mode = "tcp"
balancing_method = "maglev"
port = "80"
servers = { type = "addresses", addresses = [{ address = "2001:2:0:11::2" }] }
"#;

    const BGP: &str = r#"
[bgp]
local_as = 65001
router_id = "198.18.1.2"
neighbors = [{ address = "198.18.1.1", remote_as = 65000 }, { address = "2001:2::1", remote_as = 65000 }]
hold_time = "6s"
"#;

    fn config(text: &str) -> Config {
        Config::parse("lb.toml", text).expect("valid config")
    }

    #[test]
    fn announces_each_vip_once_as_a_host_route_to_each_neighbor() {
        let out = render(&config(&format!("{BASE}{BGP}"))).unwrap();
        assert!(out.contains("router id 198.18.1.2;"), "{out}");
        assert!(out.contains("protocol device"), "{out}");
        assert_eq!(
            out.matches("route 198.18.0.10/32 blackhole;").count(),
            1,
            "{out}"
        );
        assert_eq!(
            out.matches("route 2001:2::10/128 blackhole;").count(),
            1,
            "{out}"
        );
        // Each family in its own static protocol and channel.
        let v4 = out.find("protocol static lb_vips4 {\n  ipv4;").unwrap();
        let v6 = out.find("protocol static lb_vips6 {\n  ipv6;").unwrap();
        assert!(v4 < v6);
        assert_eq!(out.matches("protocol bgp ").count(), 2, "{out}");
        assert!(out.contains("neighbor 198.18.1.1 as 65000;"), "{out}");
        assert!(out.contains("neighbor 2001:2::1 as 65000;"), "{out}");
        assert_eq!(out.matches("local as 65001;").count(), 2, "{out}");
        assert_eq!(out.matches("hold time 6;").count(), 2, "{out}");
        assert_eq!(out.matches("import none;").count(), 4, "{out}");
        assert_eq!(
            out.matches("export where source = RTS_STATIC;").count(),
            4,
            "{out}"
        );
    }

    #[test]
    fn an_ipv4_only_config_has_no_ipv6_channels() {
        let v4_only = BASE
            .replace("2001:2::10", "198.18.0.11")
            .replace("2001:2:0:11::2", "198.18.11.3");
        let out = render(&config(&format!("{v4_only}{BGP}"))).unwrap();
        assert!(!out.contains("ipv6"), "{out}");
        assert!(out.contains("route 198.18.0.11/32 blackhole;"), "{out}");
    }

    #[test]
    fn without_bgp_it_says_what_is_missing() {
        let err = render(&config(BASE)).unwrap_err().to_string();
        assert!(err.contains("[bgp]"), "{err}");
    }
}
