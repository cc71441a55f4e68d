//! Health checks: when each server is probed (`schedule`), how (`probe`, one protocol per
//! check type), and what the results mean (`state`: rise/fall). The daemon owns the state
//! and applies its changes to the data plane and the proxy.

pub mod probe;
pub mod schedule;
pub mod state;

pub use schedule::{ProbeReport, Prober};
pub use state::{CheckStats, Health, ProbeResult};
