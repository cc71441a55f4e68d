//! Make before break: a PUT that replaces every server of a health-checked backend (the new
//! ones start DOWN until their checks pass) answers no 503 under a steady request load; the
//! old server keeps taking requests until a new one is UP.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use lb_tests::{
    require_root,
    services::{ScratchDir, start_nginx},
    topology::{Topology, VIP, lb_binary, start_logged, wait_for_log},
    wait_until,
};

/// One request on a new connection: the status line and the body's first word (the
/// server's name), or the error.
fn get(target: SocketAddr) -> String {
    let run = || -> std::io::Result<String> {
        let mut conn = TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        conn.write_all(b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n")?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer)?;
        let status = answer.lines().next().unwrap_or("").to_string();
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
        Ok(format!(
            "{status} {}",
            body.split_whitespace().next().unwrap_or("")
        ))
    };
    run().unwrap_or_else(|e| format!("error {e}"))
}

#[test]
fn replacing_every_server_of_a_checked_backend_answers_no_503() {
    if !require_root("netns_make_before_break") {
        return;
    }
    let lb = lb_binary().unwrap();
    let topo = Topology::for_proxy(&format!("lbk{}", std::process::id()), 3, &lb).unwrap();
    let dir = ScratchDir::new("mbb").unwrap();
    let mut nginx = Vec::new();
    for i in 0..3 {
        let addr = [198, 18, 11 + i as u8, 2].into();
        nginx.push(
            start_nginx(&topo.servers[i], &format!("server{}", i + 1), addr, &dir.0).unwrap(),
        );
    }
    let tokens = dir.0.join("tokens");
    std::fs::write(&tokens, "rw mbb\n").unwrap();
    let check = r#"options = { health_check = { type = "tcp", interval = "300ms", timeout = "200ms", rise = 2 } }"#;
    let config = format!(
        r#"
[[frontends]]
name = "web"
mode = "http"
address = "{VIP}"
binds = [{{ port = 80 }}]
default_backend = "web"

[[backends]]
name = "web"
mode = "http"
balancing_method = "roundrobin"
port = 8080
servers = {{ type = "addresses", addresses = [{{ address = "198.18.13.2" }}] }}
{check}

[api]
listen = "127.0.0.1:8081"
token_file = "{}"
"#,
        tokens.display()
    );
    let path = dir.0.join("lb.toml");
    std::fs::write(&path, config).unwrap();
    let run = ["run", "--config", path.to_str().unwrap()];
    let (_pid, log) = start_logged(&topo.lb, &lb, &run).unwrap();
    wait_for_log(&log, "server UP", 1, Duration::from_secs(10)).unwrap();

    // A steady load from the client, bounded in count.
    let target: SocketAddr = (VIP, 80).into();
    let answers = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (answers, stop) = (answers.clone(), stop.clone());
        topo.client
            .run(move || {
                for _ in 0..5000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let answer = get(target);
                    answers.lock().unwrap().push(answer);
                }
            })
            .unwrap()
    };
    let answered = |n: usize| {
        let answers = answers.clone();
        move || Ok((answers.lock().unwrap().len() >= n).then_some(()))
    };
    wait_until(
        "20 answers before the change",
        Duration::from_secs(10),
        answered(20),
    )
    .unwrap();

    let body = r#"{"name": "web", "mode": "http", "balancing_method": "roundrobin", "port": 8080,
        "servers": {"type": "addresses", "addresses": [{"address": "198.18.11.2"}, {"address": "198.18.12.2"}]},
        "options": {"health_check": {"type": "tcp", "interval": "300ms", "timeout": "200ms", "rise": 2}}}"#;
    let put = topo
        .lb
        .exec(&[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "PUT",
            "http://127.0.0.1:8081/v1/lbs/1/backends/web",
            "-H",
            "Authorization: Bearer mbb",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
        ])
        .unwrap();
    assert_eq!(put, "200");
    let after_put = answers.lock().unwrap().len();
    // Both new servers come UP; then the load goes on a little longer.
    wait_for_log(&log, "server UP", 3, Duration::from_secs(10)).unwrap();
    let up_at = answers.lock().unwrap().len();
    wait_until(
        "20 more answers once the new servers are UP",
        Duration::from_secs(10),
        answered(up_at + 20),
    )
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();

    let answers = answers.lock().unwrap();
    let bad: Vec<&String> = answers
        .iter()
        .filter(|a| !a.starts_with("HTTP/1.1 200"))
        .collect();
    assert!(
        bad.is_empty(),
        "{} of {} answers were not 200, the first: {:?}",
        bad.len(),
        answers.len(),
        &bad[..bad.len().min(10)]
    );
    assert!(
        answers[after_put..].iter().any(|a| a.ends_with("server3")),
        "the old server answered while the new ones were checked"
    );
    assert!(
        answers[up_at..]
            .iter()
            .any(|a| a.ends_with("server1") || a.ends_with("server2")),
        "the new servers answer once UP"
    );
    assert!(
        answers[answers.len() - 5..]
            .iter()
            .all(|a| !a.ends_with("server3")),
        "the old server stops taking requests once a new one is UP: {:?}",
        &answers[answers.len() - 5..]
    );
    drop(nginx);
}
