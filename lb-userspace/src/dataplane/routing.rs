//! Routing changes invalidate XDP's egress cache. XDP caches each destination's FIB answer
//! per CPU, tagged with the routing generation in `LB_EGRESS_GEN`; every netlink link,
//! neighbour, route or nexthop event bumps the generation, so the next packet to each
//! destination asks the FIB again. (A cached answer also expires after `EGRESS_TTL_NS`, in
//! case an event is missed.)

use std::os::fd::AsFd as _;

use anyhow::{Context as _, Result, anyhow};
use aya::maps::{Array, MapData};
use futures_util::{FutureExt as _, StreamExt as _};
use lb_common::maps::MAP_EGRESS_GENERATION;
use rtnetlink::MulticastGroup;
use tracing::{debug, warn};

use super::Dataplane;

/// The routing generation, through a map descriptor of its own.
pub struct EgressGeneration {
    map: Array<MapData, u32>,
}

impl EgressGeneration {
    pub fn current(&self) -> Result<u32> {
        Ok(self.map.get(&0, 0)?)
    }

    /// Move to a new generation: every cached egress is asked again. Returns it.
    pub fn bump(&mut self) -> Result<u32> {
        let next = self.map.get(&0, 0)?.wrapping_add(1);
        self.map.set(0, next, 0)?;
        Ok(next)
    }
}

impl Dataplane {
    /// A handle on the routing generation, for a task of its own.
    pub fn egress_generation(&self) -> Result<EgressGeneration> {
        let aya::maps::Map::Array(data) = self.map_ref(MAP_EGRESS_GENERATION)? else {
            return Err(anyhow!("map {MAP_EGRESS_GENERATION} is not an array"));
        };
        let fd = data.fd().as_fd().try_clone_to_owned()?;
        let data = MapData::from_fd(fd).context("reopening the routing generation")?;
        Ok(EgressGeneration {
            map: Array::try_from(aya::maps::Map::Array(data))?,
        })
    }
}

/// Bump the generation after every burst of routing events, until the netlink socket
/// closes. Runs on the admin runtime.
pub async fn follow_routing_changes(mut generation: EgressGeneration) -> Result<()> {
    let (connection, _, mut events) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Neigh,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
        MulticastGroup::Nexthop,
    ])
    .context("subscribing to routing changes")?;
    tokio::spawn(connection);
    // Whatever changed before the subscription: start from a fresh generation.
    generation.bump()?;
    while events.next().await.is_some() {
        // One bump per burst (a link going down brings many route and neighbour events).
        while let Some(Some(_)) = events.next().now_or_never() {}
        match generation.bump() {
            Ok(n) => debug!(generation = n, "routing changed: egress cache invalidated"),
            Err(e) => warn!("cannot invalidate the egress cache: {e:#}"),
        }
    }
    Ok(())
}
