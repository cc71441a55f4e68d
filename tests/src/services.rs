//! Real servers from Debian's packages (PostgreSQL, MariaDB, Redis, an openssl TLS server)
//! started inside a test namespace, and a tiny HTTP server whose answer the test controls.
//! `cargo xtask setup` installs the packages.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU16, Ordering},
    },
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::netns::{NetNs, sh};

/// A scratch directory removed on drop.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new(tag: &str) -> Result<ScratchDir> {
        let dir = std::env::temp_dir().join(format!("lb-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Wait until something accepts TCP connections on `target`, from inside `ns`.
pub fn wait_listening(ns: &NetNs, target: SocketAddr, timeout: Duration) -> Result<()> {
    let what = format!(
        "something to accept TCP connections on {target} in {}",
        ns.name
    );
    ns.run(move || {
        crate::wait_until(&what, timeout, || {
            TcpStream::connect_timeout(&target, Duration::from_millis(200))?;
            Ok(Some(()))
        })
    })?
    .join()
    .map_err(|_| anyhow::anyhow!("probe thread panicked"))?
}

fn chown(path: &Path, user: &str) -> Result<()> {
    sh(&[
        "chown",
        "-R",
        &format!("{user}:{user}"),
        path.to_str().unwrap(),
    ])
    .map(|_| ())
}

/// The newest installed PostgreSQL's binary directory.
fn postgres_bin() -> Result<PathBuf> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (run `cargo xtask setup`)")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").exists())
        .collect();
    versions.sort();
    versions.pop().context("no PostgreSQL server binary found")
}

/// PostgreSQL on `addr:port` in `ns`, running as the `postgres` user with trust auth.
pub fn start_postgres(ns: &NetNs, addr: IpAddr, port: u16) -> Result<(u32, ScratchDir)> {
    let dir = ScratchDir::new("pg")?;
    let data = dir.0.join("data");
    chown(&dir.0, "postgres")?;
    let bin = postgres_bin()?;
    let as_postgres = [
        "setpriv",
        "--reuid=postgres",
        "--regid=postgres",
        "--init-groups",
    ];
    let mut initdb = as_postgres.to_vec();
    let initdb_bin = bin.join("initdb");
    initdb.extend([
        initdb_bin.to_str().unwrap(),
        "-D",
        data.to_str().unwrap(),
        "-A",
        "trust",
        "-U",
        "postgres",
    ]);
    sh(&initdb).context("initdb")?;
    // Clients arrive from lb's SNAT address, over TCP.
    let mut hba = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("pg_hba.conf"))?;
    hba.write_all(b"host all all 0.0.0.0/0 trust\nhost all all ::/0 trust\n")?;
    let mut run = as_postgres.to_vec();
    let postgres_bin = bin.join("postgres");
    let (listen, port_s, socket_dir) = (
        format!("listen_addresses={addr}"),
        port.to_string(),
        dir.0.to_str().unwrap().to_string(),
    );
    run.extend([
        postgres_bin.to_str().unwrap(),
        "-D",
        data.to_str().unwrap(),
        "-c",
        &listen,
        "-p",
        &port_s,
        "-k",
        &socket_dir,
    ]);
    let pid = ns.spawn(&run, Stdio::null(), Stdio::null())?;
    wait_listening(ns, (addr, port).into(), Duration::from_secs(30)).context("PostgreSQL")?;
    Ok((pid, dir))
}

/// MariaDB on `addr:port` in `ns`, with a user `check_user` that may log in from anywhere
/// without a password (what a health-check user is).
pub fn start_mariadb(
    ns: &NetNs,
    addr: IpAddr,
    port: u16,
    check_user: &str,
) -> Result<(u32, ScratchDir)> {
    let dir = ScratchDir::new("mariadb")?;
    let data = dir.0.join("data");
    std::fs::create_dir_all(&data)?;
    let init = dir.0.join("init.sql");
    std::fs::write(
        &init,
        format!("CREATE USER IF NOT EXISTS '{check_user}'@'%';\n"),
    )?;
    chown(&dir.0, "mysql")?;
    sh(&[
        "mariadb-install-db",
        "--no-defaults",
        "--user=mysql",
        "--skip-test-db",
        "--auth-root-authentication-method=socket",
        &format!("--datadir={}", data.display()),
    ])
    .context("mariadb-install-db")?;
    let args = [
        "mariadbd".to_string(),
        "--no-defaults".into(),
        "--user=mysql".into(),
        format!("--datadir={}", data.display()),
        format!("--socket={}/mysqld.sock", dir.0.display()),
        format!("--pid-file={}/mysqld.pid", dir.0.display()),
        format!("--bind-address={addr}"),
        format!("--port={port}"),
        format!("--init-file={}", init.display()),
        "--skip-name-resolve".into(),
        "--innodb-buffer-pool-size=16M".into(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let pid = ns.spawn(&args, Stdio::null(), Stdio::null())?;
    wait_listening(ns, (addr, port).into(), Duration::from_secs(60)).context("MariaDB")?;
    Ok((pid, dir))
}

/// Redis on `addr:port` in `ns`, without persistence.
pub fn start_redis(ns: &NetNs, addr: IpAddr, port: u16) -> Result<u32> {
    let (addr_s, port_s) = (addr.to_string(), port.to_string());
    let pid = ns.spawn(
        &[
            "redis-server",
            "--bind",
            &addr_s,
            "--port",
            &port_s,
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ],
        Stdio::null(),
        Stdio::null(),
    )?;
    wait_listening(ns, (addr, port).into(), Duration::from_secs(15)).context("Redis")?;
    Ok(pid)
}

/// `openssl s_server` with a fresh self-signed certificate on `addr:port` in `ns`.
pub fn start_tls_server(ns: &NetNs, addr: IpAddr, port: u16) -> Result<(u32, ScratchDir)> {
    let dir = ScratchDir::new("tls")?;
    let (cert, key, _) = self_signed(&dir.0, "lb-test", addr)?;
    let accept = SocketAddr::from((addr, port)).to_string();
    let pid = ns.spawn(
        &[
            "openssl",
            "s_server",
            "-accept",
            &accept,
            "-cert",
            cert.to_str().unwrap(),
            "-key",
            key.to_str().unwrap(),
            "-www",
            "-quiet",
        ],
        Stdio::null(),
        Stdio::null(),
    )?;
    wait_listening(ns, (addr, port).into(), Duration::from_secs(15)).context("openssl")?;
    Ok((pid, dir))
}

/// An HTTP server answering each request with the next status of its script, then with
/// `status` once the script is used up, recording each answer it gave (in order).
pub struct ScriptedHttp {
    pub script: Arc<Mutex<std::collections::VecDeque<u16>>>,
    pub status: Arc<AtomicU16>,
    pub answers: Arc<Mutex<Vec<u16>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for ScriptedHttp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl ScriptedHttp {
    pub fn start(ns: &NetNs, port: u16, status: u16) -> Result<ScriptedHttp> {
        let server = ScriptedHttp {
            script: Arc::default(),
            status: Arc::new(AtomicU16::new(status)),
            answers: Arc::new(Mutex::new(Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (script, status, answers, stop) = (
            server.script.clone(),
            server.status.clone(),
            server.answers.clone(),
            server.stop.clone(),
        );
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        ns.run(move || {
            let listener = match TcpListener::bind(("::", port)) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let _ = listener.set_nonblocking(true);
            let _ = ready_tx.send(Ok(()));
            while !stop.load(Ordering::Relaxed) {
                let Ok((mut conn, _)) = listener.accept() else {
                    // Kept: the idle back-off of a nonblocking accept loop that must notice
                    // `stop`; it waits for nothing in particular.
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 2048];
                let mut read = 0;
                while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") && read < buf.len() {
                    match conn.read(&mut buf[read..]) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => read += n,
                    }
                }
                let scripted = script.lock().unwrap().pop_front();
                let code = scripted.unwrap_or_else(|| status.load(Ordering::SeqCst));
                let reply = format!(
                    "HTTP/1.1 {code} Scripted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                if conn.write_all(reply.as_bytes()).is_ok() {
                    answers.lock().unwrap().push(code);
                }
            }
        })?;
        ready_rx
            .recv()
            .context("HTTP server thread died")?
            .context("binding the scripted HTTP server")?;
        Ok(server)
    }

    pub fn answer_count(&self) -> usize {
        self.answers.lock().unwrap().len()
    }
}

/// A self-signed certificate and key (PEM, in one file as HAProxy's `crt` and lb's
/// `ssl_certificate` take them, and apart) valid for `ip`.
pub fn self_signed(dir: &Path, name: &str, ip: IpAddr) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let (cert, key, both) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
        dir.join(format!("{name}.pem")),
    );
    sh(&[
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-subj",
        &format!("/CN={name}"),
        "-addext",
        &format!("subjectAltName=IP:{ip}"),
        "-days",
        "1",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ])
    .context("making a self-signed certificate")?;
    let pem = std::fs::read_to_string(&cert)? + &std::fs::read_to_string(&key)?;
    std::fs::write(&both, pem)?;
    Ok((cert, key, both))
}

/// nginx in `ns` as an HTTP server named `name` on `addr`: port 8080 echoes what it was told
/// (X-Forwarded-*, Host, URI) and `/setcookie` sets a SERVERID cookie of its own; 8081
/// expects a PROXY header and echoes the address in it; 8443 is TLS with a self-signed
/// certificate; `/payload/1m` on 8080 is a 1 MiB file.
pub fn start_nginx(ns: &NetNs, name: &str, addr: IpAddr, dir: &Path) -> Result<u32> {
    let (cert, key, _) = self_signed(dir, name, addr)?;
    let a = match addr {
        IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    };
    let conf = dir.join(format!("{name}.conf"));
    // /payload/1m: a 1 MiB file for the bench's large responses.
    let payload = dir.join("payload");
    if !payload.join("1m").exists() {
        std::fs::create_dir_all(&payload)?;
        std::fs::write(payload.join("1m"), vec![b'x'; 1 << 20])?;
    }
    std::fs::write(
        &conf,
        format!(
            r#"
worker_processes 1;
daemon off;
pid {dir}/{name}.pid;
error_log stderr error;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {dir}/{name}-body;
  keepalive_requests 100000;
  server {{
    listen {a}:8080;
    location /setcookie {{
      add_header Set-Cookie "SERVERID=from-{name}";
      add_header Set-Cookie "other=1";
      return 200 "{name}\n";
    }}
    location /payload/ {{ root {dir}; }}
    # Gzipped on request: a body of unknown length, sent chunked.
    location /chunked/ {{ alias {dir}/payload/; gzip on; gzip_min_length 1; gzip_types *; }}
    location / {{
      return 200 "{name} xff=$http_x_forwarded_for port=$http_x_forwarded_port proto=$http_x_forwarded_proto host=$host uri=$request_uri\n";
    }}
  }}
  server {{
    listen {a}:8081 proxy_protocol;
    location / {{ return 200 "{name} pp=$proxy_protocol_addr:$proxy_protocol_port\n"; }}
  }}
  server {{
    listen {a}:8443 ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location / {{ return 200 "{name} tls\n"; }}
  }}
}}
"#,
            dir = dir.display(),
            cert = cert.display(),
            key = key.display(),
        ),
    )?;
    let pid = ns.spawn(
        &["nginx", "-c", conf.to_str().unwrap(), "-e", "stderr"],
        Stdio::null(),
        Stdio::inherit(),
    )?;
    for port in [8080, 8081, 8443] {
        wait_listening(ns, (addr, port).into(), Duration::from_secs(10)).context("nginx")?;
    }
    Ok(pid)
}
