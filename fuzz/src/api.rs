//! The REST API (`api::router`) with saving and reloading: a series of arbitrary requests
//! against a running config, whose changes a tiny in-process daemon "applies" by saving
//! them into a scratch file with `config::persist`, loading the file back with
//! `Config::load` (which must give the very config saved) and installing it. Nothing
//! panics; no answer is a 5xx but 503 while the daemon is stopping; JSON answers are
//! JSON; and after the series the file loads as the running config.
//!
//! An input is requests separated by lines `---`, each a line `METHOD PATH [AUTH]` (AUTH:
//! `rw`, the default, `ro`, `none` or `bad`) and a body. A request line `STOP` makes the
//! daemon stop answering changes (503 from then on). A first line `@full` starts from
//! examples/full.toml instead of the API test's config (seed 004's lb 42).

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{
    Router,
    body::Body,
    http::{self, StatusCode, header},
};
use http_body_util::BodyExt as _;
use lb_userspace::{
    api::{Api, Change, Tokens, router, types::Live},
    config::{Config, persist},
};
use tokio::sync::mpsc;
use tower::ServiceExt as _;

use super::support::scratch_dir;

const FULL: &str = include_str!("../../examples/full.toml");
const DEMO: &str = include_str!("../../examples/demo.toml");
/// What the netns API test adds to the demo: lb 42 of seed 004, an inventory, an http
/// backend `my-backend` for seed 004's PUT.
const API_PART: &str = r#"
[[lbs]]
id = "42"
name = "edge"

[computers]
"23" = "198.18.11.2"
"24" = "198.18.12.2"

[[backends]]
name = "my-backend"
mode = "http"
balancing_method = "roundrobin"
port = 8080
servers = { type = "computer", computer_ids = ["23"] }
"#;
const RW: &str = "fuzz-rw-token";
const RO: &str = "fuzz-ro-token";
const MAX_REQUESTS: usize = 16;

/// One thread's API: its router, running config and daemon, reset for every input.
struct Harness {
    router: Router,
    current: Arc<RwLock<Config>>,
    daemon: Arc<Daemon>,
    path: PathBuf,
    runtime: tokio::runtime::Runtime,
}

/// What the daemon's task shares with the requests.
#[derive(Default)]
struct Daemon {
    stopping: AtomicBool,
    /// A broken property, found while saving (reported by the request that caused it).
    broken: Mutex<Option<String>>,
}

thread_local! {
    static HARNESS: Harness = Harness::new();
}

impl Harness {
    fn new() -> Harness {
        let dir = scratch_dir();
        let tokens = dir.join("tokens");
        std::fs::write(&tokens, format!("rw {RW}\nro {RO}\n")).expect("the token file");
        let tokens = Arc::new(Tokens::load(Some(&tokens)).expect("tokens"));
        let path = dir.join("lb.toml");
        let current = Arc::new(RwLock::new(Config::default()));
        let daemon = Arc::new(Daemon::default());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let (changes, applied) = mpsc::unbounded_channel();
        runtime.spawn(apply(
            applied,
            current.clone(),
            daemon.clone(),
            path.clone(),
        ));
        let api = Arc::new(Api::new(
            current.clone(),
            Arc::new(RwLock::new(Live::default())),
            changes,
        ));
        Harness {
            router: router(api, tokens),
            current,
            daemon,
            path,
            runtime,
        }
    }
}

/// The daemon's part: save, load back, install; while stopping, drop the change.
async fn apply(
    mut changes: mpsc::UnboundedReceiver<Change>,
    current: Arc<RwLock<Config>>,
    daemon: Arc<Daemon>,
    path: PathBuf,
) {
    while let Some(Change { config, reply }) = changes.recv().await {
        if daemon.stopping.load(Ordering::Relaxed) {
            drop(reply);
            continue;
        }
        if let Err(e) = persist(&path, &config) {
            let _ = reply.send(Err(format!("{e:#}")));
            continue;
        }
        let broken = match Config::load(&path) {
            Err(e) => Some(format!(
                "a saved API change does not load: {e}\n{}",
                read(&path)
            )),
            Ok(loaded) if loaded != config => Some(format!(
                "a saved API change loads as another config:\n{}\n{loaded:#?}\nnot\n{config:#?}",
                read(&path)
            )),
            Ok(_) => None,
        };
        if let Some(why) = broken {
            *daemon.broken.lock().expect("lock") = Some(why);
            let _ = reply.send(Err("broken".into()));
            continue;
        }
        *current.write().expect("config lock") = config;
        let _ = reply.send(Ok(()));
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (base, text) = match text.strip_prefix("@full\n") {
        Some(rest) => (FULL.to_string(), rest),
        None => (format!("{DEMO}{API_PART}"), text),
    };
    HARNESS.with(|h| {
        let config = Config::parse("lb.toml", &base).expect("the base config parses");
        std::fs::write(&h.path, &base).expect("writing the scratch config");
        *h.current.write().expect("config lock") = config;
        h.daemon.stopping.store(false, Ordering::Relaxed);
        *h.daemon.broken.lock().expect("lock") = None;
        h.runtime.block_on(requests(h, text));
        let running = h.current.read().expect("config lock").clone();
        let saved = Config::load(&h.path)
            .unwrap_or_else(|e| panic!("the saved file does not load: {e}\n{}", read(&h.path)));
        assert!(
            saved == running,
            "the file is not the running config:\n{}",
            read(&h.path)
        );
    });
}

async fn requests(h: &Harness, text: &str) {
    for chunk in text.split("\n---\n").take(MAX_REQUESTS) {
        let (line, body) = chunk.split_once('\n').unwrap_or((chunk, ""));
        let mut words = line.split(' ');
        let (Some(method), Some(path)) = (words.next(), words.next()) else {
            if line.trim() == "STOP" {
                h.daemon.stopping.store(true, Ordering::Relaxed);
            }
            continue;
        };
        let token = match words.next() {
            None | Some("rw") => Some(RW),
            Some("ro") => Some(RO),
            Some("bad") => Some("not-a-token"),
            Some(_) => None,
        };
        let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
            continue;
        };
        let mut request = http::Request::builder()
            .method(method.clone())
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(t) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let Ok(request) = request.body(Body::from(body.to_string())) else {
            continue; // not a URI
        };
        let response = h
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("the router never fails");
        if let Some(why) = h.daemon.broken.lock().expect("lock").take() {
            panic!("{method} {path}\nbody: {body}\n{why}");
        }
        let status = response.status();
        let json = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("the body")
            .to_bytes();
        let shown = String::from_utf8_lossy(&bytes);
        if super::support::tracing() {
            eprintln!("{method} {path} -> {status} {shown:.200}");
        }
        if status.is_server_error() {
            assert!(
                status == StatusCode::SERVICE_UNAVAILABLE
                    && h.daemon.stopping.load(Ordering::Relaxed),
                "{method} {path} answered {status}: {shown}\nbody: {body}"
            );
        }
        if json {
            let value: serde_json::Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {shown}"));
            if !status.is_success() {
                assert!(
                    value["error"]["code"].is_string() && value["error"]["message"].is_string(),
                    "{method} {path} answered {status} without an error document: {shown}"
                );
            }
        }
    }
}
