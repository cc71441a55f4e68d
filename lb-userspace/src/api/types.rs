//! The API's documents, shared with the CLI: load balancers, lists, and the live status
//! of frontends and servers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::config::{Backend, Frontend, PublicPort};

/// A server of a backend as the API shows it: as configured, and live from the data plane
/// and the proxy.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct ServerStatus {
    pub backend: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub address: String,
    pub port: u16,
    /// "up", "down" (failing its health check), "drain" (set to drain, or weight 0: no new
    /// flows, its flows run on) or "maint" (maintenance: no new flows, not checked).
    #[serde(default)]
    pub state: String,
    /// The configured weight.
    pub weight: u32,
    /// The weight new flows see now: 0 while the server is DOWN, DRAIN or MAINT.
    pub effective_weight: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_conn: Option<u32>,
    /// "up", "down" (failing its health check) or "unchecked" (no health check: up).
    pub health: String,
    /// Whether it takes new flows by its health (`health` is not "down").
    pub up: bool,
    /// Open flows (XDP) or connections (proxy) on this server now.
    pub active: u64,
    /// Flows it was given since the data plane started.
    pub flows_total: u64,
    /// New flows per second over the last interval.
    pub new_flows_per_s: f64,
}

/// A frontend as `lb status` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct FrontendStatus {
    pub name: String,
    pub open_flows: u64,
    pub flows_total: u64,
    pub new_flows_per_s: f64,
    pub bytes_in_per_s: f64,
    pub bytes_out_per_s: f64,
}

/// A backend's servers in `lb status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct BackendStatus {
    pub backend: String,
    pub mode: String,
    pub servers_up: usize,
    pub servers: usize,
}

/// `GET /v1/lbs/{lb_id}/status`: what `lb status` prints.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct Status {
    pub lb: String,
    pub frontends: Vec<FrontendStatus>,
    pub backends: Vec<BackendStatus>,
    pub servers: Vec<ServerStatus>,
    pub conntrack_entries: u64,
    pub conntrack_capacity: u64,
    /// The HA pair, when `[ha]` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ha: Option<HaStatus>,
    /// Interface -> the XDP mode the kernel reports for it ("native", "generic").
    #[serde(default)]
    pub xdp: BTreeMap<String, String>,
}

/// This node of an HA pair in `lb status`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct HaStatus {
    /// What keepalived made this node: starting, backup, master or fault.
    pub role: String,
    /// The role the peer last reported; "starting" when it is not connected.
    pub peer_role: String,
    pub peer: String,
    /// Whether this node streams to the peer, and the peer to it.
    pub sending: bool,
    pub receiving: bool,
    /// Whether this node completed a bulk sync from the peer (or found none to reach):
    /// until then keepalived holds it in FAULT.
    pub synced: bool,
    /// Changed entries the last scan found (what the peer lacked when it began).
    pub lag_entries: u64,
    /// How far behind this node's tables the peer's may be.
    pub lag_seconds: f64,
    pub flows_sent: u64,
    pub flows_received: u64,
    pub sticky_sent: u64,
    pub sticky_received: u64,
    pub errors: u64,
    /// Entries that named a frontend, backend or server this node lacks (configs differ).
    pub unmapped: u64,
    pub failovers: u64,
    pub split_brains: u64,
    pub split_brain: bool,
}

/// What the daemon publishes for the API, on every change and every collection.
#[derive(Clone, Debug, Default)]
pub struct Live {
    /// Backend name -> its servers.
    pub servers: BTreeMap<String, Vec<ServerStatus>>,
    /// Frontend name -> its status.
    pub frontends: BTreeMap<String, FrontendStatus>,
    pub conntrack_entries: u64,
    pub conntrack_capacity: u64,
    pub ha: Option<HaStatus>,
    /// Interface -> the XDP mode the kernel reports ("native", "generic").
    pub xdp: BTreeMap<String, String>,
}

/// A load balancer as the API shows it.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct LbView {
    pub id: String,
    pub name: String,
    pub description: String,
    pub status: String,
    pub frontends: usize,
    pub backends: usize,
    pub public_ports: Vec<PublicPort>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewLb {
    /// Chosen by lb (the next free number) when absent.
    #[schema(min_length = 1)]
    pub id: Option<String>,
    pub name: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct LbList {
    pub lbs: Vec<LbView>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct BackendList {
    pub backends: Vec<Backend>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct FrontendList {
    pub frontends: Vec<Frontend>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct ServerList {
    pub servers: Vec<ServerStatus>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPublicPort {
    #[schema(minimum = 1, maximum = 65535)]
    pub port: u16,
    #[serde(default)]
    pub desc: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct PublicPortCreated {
    pub public_port: u16,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublicPortRef {
    #[schema(minimum = 1, maximum = 65535)]
    pub port: u16,
}

/// `PATCH /v1/lbs/{id}/backends/{name}/servers/{server}`: the runtime settings of one
/// server (`lb server set-weight|drain|maint|ready`), saved to the config file.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerPatch {
    /// The configured weight, 0..100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 100)]
    pub weight: Option<u32>,
    /// "ready", "drain" or "maint".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<crate::config::AdminState>,
    /// With state "drain": how long its flows may run on ("5m"); absent: until "ready".
    #[serde(
        default,
        with = "crate::config::values::duration::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>)]
    pub drain_timeout: Option<std::time::Duration>,
}
