//! The bodies of lb's fuzz targets, one module each, every one a `run(data)` that panics on
//! a broken property. `fuzz_targets/` wraps them for libFuzzer (`cargo xtask fuzz`);
//! `lb-userspace/tests/fuzz_replay.rs` includes the same files and replays `fuzz/corpus/`
//! on stable (`cargo xtask test`). So these files name other crates and each other
//! (`super::support`, ...), never `crate::`.

pub mod api;
pub mod checksum;
pub mod config;
pub mod flow;
pub mod h1;
pub mod h1_chunked;
pub mod maglev;
pub mod proxy_header;
pub mod support;
