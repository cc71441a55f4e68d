//! `lb status` is one view of the daemon, read through its API: with `--api` and with
//! `--config` it shows the same servers, with the configured weight and the effective one
//! apart, for a server drained to weight 0 and for one that fails its health check.

use std::time::Duration;

use lb_tests::{
    require_root,
    services::ScratchDir,
    topology::{SERVER_PORT, Topology, lb_binary, nat_frontend_toml},
    wait_until,
};
use serde_json::Value;

#[test]
fn status_through_the_api_and_through_the_config_agree() {
    if !require_root("netns_status") {
        return;
    }
    let lb = lb_binary().unwrap();
    let topo = Topology::new(&format!("lbs{}", std::process::id()), 3).unwrap();
    topo.start_peers(&lb).unwrap();
    let _servers = topo.start_name_servers(SERVER_PORT).unwrap();
    let dir = ScratchDir::new("status").unwrap();
    let tokens = dir.0.join("tokens");
    std::fs::write(&tokens, "ro status-reader\n").unwrap();
    // 198.18.13.99 is on server3's link but nobody has it: its checks time out.
    let config = format!(
        r#"{frontend}
[[backends]]
name = "web"
mode = "tcp"
balancing_method = "maglev"
port = {SERVER_PORT}
servers = {{ type = "addresses", addresses = [
  {{ address = "198.18.11.2", weight = 3 }},
  {{ address = "198.18.12.2", weight = 0 }},
  {{ address = "198.18.13.99", weight = 2 }},
] }}
options = {{ health_check = {{ type = "tcp", interval = "200ms", timeout = "100ms", rise = 1, fall = 1 }} }}

[api]
listen = "127.0.0.1:8081"
token_file = "{tokens}"
"#,
        frontend = nat_frontend_toml("web", 80, 3),
        tokens = tokens.display()
    );
    let path = dir.0.join("lb.toml");
    std::fs::write(&path, config).unwrap();
    topo.start_lb(&lb, &path).unwrap();

    let lb_path = lb.to_str().unwrap();
    let status = |how: &[&str]| -> anyhow::Result<Value> {
        let mut args = vec![lb_path, "status", "-o", "json"];
        args.extend_from_slice(how);
        Ok(serde_json::from_str(&topo.lb.exec(&args)?)?)
    };
    let by_api = ["--api", "http://127.0.0.1:8081", "--token", "status-reader"];
    let by_config = ["--config", path.to_str().unwrap()];
    let health = |s: &Value, address: &str| {
        s["servers"]
            .as_array()
            .and_then(|l| l.iter().find(|v| v["address"] == address))
            .map(|v| v["health"].clone())
    };
    let api = wait_until(
        "the checks to take 198.18.11.2 and 198.18.12.2 up and leave 198.18.13.99 down",
        Duration::from_secs(10),
        || {
            let s = status(&by_api)?;
            let settled = health(&s, "198.18.11.2") == Some("up".into())
                && health(&s, "198.18.12.2") == Some("up".into())
                && health(&s, "198.18.13.99") == Some("down".into());
            Ok(settled.then_some(s))
        },
    )
    .unwrap();
    let config = status(&by_config).unwrap();
    for part in ["lb", "backends", "servers"] {
        assert_eq!(api[part], config[part], "{part}: {api} vs {config}");
    }

    let server = |address: &str| {
        api["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["address"] == address)
            .unwrap()
            .clone()
    };
    let drained = server("198.18.12.2");
    assert_eq!(
        (
            &drained["weight"],
            &drained["effective_weight"],
            &drained["up"]
        ),
        (&Value::from(0), &Value::from(0), &Value::from(true)),
        "{drained}"
    );
    let down = server("198.18.13.99");
    assert_eq!(
        (&down["weight"], &down["effective_weight"], &down["up"]),
        (&Value::from(2), &Value::from(0), &Value::from(false)),
        "{down}"
    );
    let up = server("198.18.11.2");
    assert_eq!(
        (&up["weight"], &up["effective_weight"]),
        (&Value::from(3), &Value::from(3)),
        "{up}"
    );
    assert_eq!(api["backends"][0]["servers_up"], 2, "{api}");

    // The table says the same, both ways.
    let table = |how: &[&str]| {
        let mut args = vec![lb_path, "status"];
        args.extend_from_slice(how);
        topo.lb.exec(&args).unwrap()
    };
    let shown = table(&by_config);
    assert!(
        shown.contains("backend web (tcp): 2/3 servers up"),
        "{shown}"
    );
    assert_eq!(
        shown
            .lines()
            .filter(|l| l.contains("198.18."))
            .collect::<Vec<_>>(),
        table(&by_api)
            .lines()
            .filter(|l| l.contains("198.18."))
            .collect::<Vec<_>>()
    );
}
