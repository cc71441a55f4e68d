//! The lb daemon: config, the plan written to the maps, and the data plane.
pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dataplane;
pub mod health;
pub mod metrics;
pub mod neighbours;
pub mod plan;
pub mod probe;
pub mod proxy;
pub mod status;

/// The config of `cargo xtask run`'s demo topology (see `lb_tests::topology`): one VIP with a
/// TCP and a UDP bind, three servers weighted 1:1:2.
pub const DEFAULT_DEMO_CONFIG: &str = include_str!("../../examples/demo.toml");
