//! `[ha]` and `[bgp]`: the master/backup pair (keepalived moves the floating addresses, lb
//! syncs the flows) and active/active scale-out behind ECMP (BIRD announces the VIPs).

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::values::{Cidr, HaRole, duration};

/// The pair: this node, its peer, and what keepalived moves between them.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HaConfig {
    /// This node's preference: "master" (priority 150) or "backup" (100).
    #[serde(default)]
    pub role: HaRole,
    /// Where this node listens for its peer's flow sync, for example "198.18.50.1:7946".
    /// Its address is also keepalived's unicast source.
    pub listen: SocketAddr,
    /// The peer's sync listener; its address is keepalived's unicast peer.
    pub peer: SocketAddr,
    /// A file holding the secret both nodes share (at least 16 bytes): sync messages are
    /// authenticated with HMAC-SHA256 under it, and keepalived does not see it.
    pub secret_file: PathBuf,
    /// How often changed flows are sent to the peer; a flow younger than this may be lost
    /// at a failover.
    #[serde(with = "duration", default = "default_sync_interval")]
    pub sync_interval: Duration,
    /// keepalived writes MASTER/BACKUP/FAULT changes here (`notify_fifo`).
    #[serde(default = "default_notify_fifo")]
    pub notify_fifo: PathBuf,
    /// lb writes its health here for keepalived (`track_file`): 0 when serving and synced,
    /// anything else holds the node in FAULT.
    #[serde(default = "default_track_file")]
    pub track_file: PathBuf,
    #[serde(default)]
    pub vrrp: VrrpConfig,
}

/// What `lb ha keepalived-config` writes for keepalived.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct VrrpConfig {
    /// The interface VRRP adverts go out of (the one holding `listen`'s address).
    pub interface: String,
    /// VRRP's virtual router id, 1 to 255, the same on both nodes.
    pub virtual_router_id: u8,
    /// Advert interval; failover after a hung master takes about 3 of them.
    #[serde(with = "duration")]
    pub advert_int: Duration,
    /// Floating addresses: the VIP (or the clients' next hop) and the servers' gateway.
    pub addresses: Vec<FloatingAddress>,
}

impl Default for VrrpConfig {
    fn default() -> Self {
        VrrpConfig {
            interface: String::new(),
            virtual_router_id: 51,
            advert_int: Duration::from_millis(100),
            addresses: Vec::new(),
        }
    }
}

/// One floating address and the interface that holds it on the master.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FloatingAddress {
    /// "198.18.0.10/24", or an address alone (a host prefix).
    pub address: Cidr,
    pub interface: String,
}

/// Active/active: BIRD announces every frontend's VIP to a router that spreads flows by
/// ECMP; `lb ha bird-config` writes its config.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BgpConfig {
    /// This node's AS number.
    pub local_as: u32,
    /// BGP router id (an IPv4 address of this node).
    pub router_id: std::net::Ipv4Addr,
    /// The router(s) to announce to.
    pub neighbors: Vec<BgpNeighbor>,
    /// Hold time; a hung node's VIPs are withdrawn after it.
    #[serde(with = "duration", default = "default_hold_time")]
    pub hold_time: Duration,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BgpNeighbor {
    pub address: IpAddr,
    pub remote_as: u32,
}

fn default_sync_interval() -> Duration {
    Duration::from_millis(200)
}

fn default_notify_fifo() -> PathBuf {
    "/run/lb/keepalived.fifo".into()
}

fn default_track_file() -> PathBuf {
    "/run/lb/track".into()
}

fn default_hold_time() -> Duration {
    Duration::from_secs(3)
}
