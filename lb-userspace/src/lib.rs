//! The lb daemon: config, data-plane loading and map management.
pub mod config;
pub mod dataplane;
