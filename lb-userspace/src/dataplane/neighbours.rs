//! Keeps the neighbour (ARP/NDP) entries of every server's next hop resolved.
//!
//! `bpf_fib_lookup` only reads the neighbour table; it never triggers resolution. In NAT
//! mode the kernel resolves on the first packet XDP hands it, but in DSR mode it cannot (the
//! packet is addressed to the VIP), and idle entries age out in both. A *managed* entry
//! (`NTF_EXT_MANAGED`, Linux 5.16+) is one the kernel keeps resolved on its own.

use std::net::IpAddr;

use anyhow::{Context as _, Result};
use futures_util::TryStreamExt as _;
use rtnetlink::{
    RouteMessageBuilder,
    packet_route::{
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourState},
        route::{RouteAddress, RouteAttribute},
    },
};
use tracing::{debug, warn};

/// Mark the next hop towards each address as managed. Returns how many entries were set;
/// an address without a route is logged and skipped.
///
/// The daemon calls it on a blocking thread of its admin runtime, whose netlink runs on
/// that runtime; callers outside one (tests, tools) get a runtime for the call.
pub fn manage(addresses: &[IpAddr]) -> Result<usize> {
    match tokio::runtime::Handle::try_current() {
        Ok(admin) => admin.block_on(manage_async(addresses)),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(manage_async(addresses)),
    }
}

async fn manage_async(addresses: &[IpAddr]) -> Result<usize> {
    {
        let (connection, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
        tokio::spawn(connection);
        // Entries an operator pinned (permanent, noarp) are left as they are.
        let mut pinned = std::collections::HashSet::new();
        let mut dump = handle.neighbours().get().execute();
        while let Some(neighbour) = dump.try_next().await.context("listing neighbours")? {
            if matches!(
                neighbour.header.state,
                NeighbourState::Permanent | NeighbourState::Noarp
            ) {
                for attr in &neighbour.attributes {
                    match attr {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                            pinned.insert((neighbour.header.ifindex, IpAddr::V4(*a)));
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                            pinned.insert((neighbour.header.ifindex, IpAddr::V6(*a)));
                        }
                        _ => {}
                    }
                }
            }
        }
        let mut done = 0;
        for &addr in addresses {
            let prefix = if addr.is_ipv4() { 32 } else { 128 };
            let query = RouteMessageBuilder::<IpAddr>::new()
                .destination_prefix(addr, prefix)
                .context("route query")?
                .build();
            let route = match handle.route().get(query).execute().try_next().await {
                Ok(Some(route)) => route,
                other => {
                    warn!(%addr, result = ?other.err(), "no route to server; its neighbour is not managed");
                    continue;
                }
            };
            let mut oif = None;
            let mut next_hop = addr;
            for attr in &route.attributes {
                match attr {
                    RouteAttribute::Oif(index) => oif = Some(*index),
                    RouteAttribute::Gateway(RouteAddress::Inet(gw)) => next_hop = IpAddr::V4(*gw),
                    RouteAttribute::Gateway(RouteAddress::Inet6(gw)) => next_hop = IpAddr::V6(*gw),
                    _ => {}
                }
            }
            let Some(oif) = oif else { continue };
            if pinned.contains(&(oif, next_hop)) {
                continue;
            }
            let mut request = handle
                .neighbours()
                .add(oif, next_hop)
                .state(NeighbourState::None)
                .replace();
            request
                .message_mut()
                .attributes
                .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
            match request.execute().await {
                Ok(()) => {
                    debug!(%addr, %next_hop, oif, "neighbour managed");
                    done += 1;
                }
                Err(e) => {
                    warn!(%addr, %next_hop, error = %e, "could not mark the neighbour managed")
                }
            }
        }
        Ok(done)
    }
}

/// How the next hop towards a server stands, for `lb doctor`.
#[derive(Debug)]
pub struct NextHop {
    pub server: IpAddr,
    pub next_hop: IpAddr,
    pub oif: u32,
    /// The neighbour entry's state ("reachable", "stale", "failed", ...), None without one.
    pub state: Option<String>,
}

/// The route and neighbour entry towards each address (None: no route).
pub fn next_hops(addresses: &[IpAddr]) -> Result<Vec<(IpAddr, Option<NextHop>)>> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async {
            let (connection, handle, _) =
                rtnetlink::new_connection().context("opening rtnetlink")?;
            tokio::spawn(connection);
            let mut states = std::collections::HashMap::new();
            let mut dump = handle.neighbours().get().execute();
            while let Some(n) = dump.try_next().await.context("listing neighbours")? {
                for attr in &n.attributes {
                    let addr = match attr {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                            IpAddr::V4(*a)
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                            IpAddr::V6(*a)
                        }
                        _ => continue,
                    };
                    states.insert(
                        (n.header.ifindex, addr),
                        format!("{:?}", n.header.state).to_lowercase(),
                    );
                }
            }
            let mut out = Vec::new();
            for &addr in addresses {
                let prefix = if addr.is_ipv4() { 32 } else { 128 };
                let query = RouteMessageBuilder::<IpAddr>::new()
                    .destination_prefix(addr, prefix)
                    .context("route query")?
                    .build();
                let Ok(Some(route)) = handle.route().get(query).execute().try_next().await else {
                    out.push((addr, None));
                    continue;
                };
                let (mut oif, mut next_hop) = (0, addr);
                for attr in &route.attributes {
                    match attr {
                        RouteAttribute::Oif(index) => oif = *index,
                        RouteAttribute::Gateway(RouteAddress::Inet(gw)) => {
                            next_hop = IpAddr::V4(*gw)
                        }
                        RouteAttribute::Gateway(RouteAddress::Inet6(gw)) => {
                            next_hop = IpAddr::V6(*gw)
                        }
                        _ => {}
                    }
                }
                let state = states.get(&(oif, next_hop)).cloned();
                out.push((
                    addr,
                    Some(NextHop {
                        server: addr,
                        next_hop,
                        oif,
                        state,
                    }),
                ));
            }
            Ok(out)
        })
}
