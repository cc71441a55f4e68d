//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/`) through the fuzz targets'
//! own bodies (`fuzz/src/`, included here as modules), on stable and without libFuzzer:
//! `cargo xtask test` runs it as its fuzz replay step. Real fuzzing is `cargo xtask fuzz`.

#[path = "../../fuzz/src/api.rs"]
mod api;
#[path = "../../fuzz/src/checksum.rs"]
mod checksum;
#[path = "../../fuzz/src/config.rs"]
mod config;
#[path = "../../fuzz/src/flow.rs"]
mod flow;
#[path = "../../fuzz/src/h1.rs"]
mod h1;
#[path = "../../fuzz/src/h1_chunked.rs"]
mod h1_chunked;
#[path = "../../fuzz/src/maglev.rs"]
mod maglev;
#[path = "../../fuzz/src/proxy_header.rs"]
mod proxy_header;
#[path = "../../fuzz/src/support.rs"]
mod support;

use std::{panic::AssertUnwindSafe, path::Path};

/// Every file of `fuzz/corpus/<target>/` through `run`; fails naming each input that
/// panicked.
fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} has no inputs", dir.display());
    let failed: Vec<String> = files
        .iter()
        .filter_map(|file| {
            let data = std::fs::read(file).expect("a corpus file");
            std::panic::catch_unwind(AssertUnwindSafe(|| run(&data)))
                .err()
                .map(|_| file.display().to_string())
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} inputs of {target} failed (see the panics above): {failed:#?}",
        failed.len(),
        files.len()
    );
}

#[test]
fn fuzz_replay_api() {
    replay("api", api::run);
}

#[test]
fn fuzz_replay_checksum() {
    replay("checksum", checksum::run);
}

#[test]
fn fuzz_replay_config() {
    replay("config", config::run);
}

#[test]
fn fuzz_replay_flow() {
    replay("flow", flow::run);
}

#[test]
fn fuzz_replay_h1() {
    replay("h1", h1::run);
}

#[test]
fn fuzz_replay_h1_chunked() {
    replay("h1_chunked", h1_chunked::run);
}

#[test]
fn fuzz_replay_maglev() {
    replay("maglev", maglev::run);
}

#[test]
fn fuzz_replay_proxy_header() {
    replay("proxy_header", proxy_header::run);
}
