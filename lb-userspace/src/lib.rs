//! The lb daemon and its CLI. From the top down: `daemon` (the event loop) drives
//! `api`, `metrics`, `health`, `proxy` and `dataplane`, which all consume the typed
//! `config`; `ha` syncs flows with the peer of a pair and renders keepalived's and
//! BIRD's configs; `cli` talks to a running daemon through the API; `tls` is shared by the
//! health checks and the proxy; `logging` rate-limits what clients can make it write.
pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod ha;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod tls;

/// The config of `cargo xtask run`'s demo topology (see `lb_tests::topology`): one VIP with a
/// TCP and a UDP bind, three servers weighted 1:1:2.
pub const DEFAULT_DEMO_CONFIG: &str = include_str!("../../examples/demo.toml");
