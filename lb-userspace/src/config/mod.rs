//! The config: one typed model (`model`, with the value types of `values`), loaded in one
//! place (`load`: read, parse, validate, check files), its rules (`validate`), errors that
//! name file:line, field and fix (`error`, `locate`), warnings about the host (`host`), and saving API changes into the
//! operator's file (`persist`). The planner, health checks, the proxy and the API all
//! consume the same `Config`.

mod error;
mod ha;
mod host;
mod load;
mod locate;
mod model;
mod persist;
mod toml_merge;
mod validate;
pub mod values;

pub use error::{ConfigError, Problem};
pub use ha::{BgpConfig, BgpNeighbor, FloatingAddress, HaConfig, VrrpConfig};
pub use host::Ephemeral;
pub use model::*;
pub use persist::persist;
pub use values::{
    AccessLog, AclCriterion, AdminState, CheckKind, Cidr, ExpectedCodes, Forwarding, HaRole,
    InitState, Method, Mode, OnDown, Port, PortRange, Protocol, ProxyVersion, RouteCond,
    StickyKind, UnderscoreHeaders, XdpAttach,
};

#[cfg(test)]
mod tests;
