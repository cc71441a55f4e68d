//! Attaching XDP in the mode the config asks for, and reading back the mode the kernel
//! reports (`ip -d link` shows the same): a takeover or a fallback is reported as it is.

use anyhow::{Context as _, Result, bail};
use aya::programs::XdpMode;
use futures_util::TryStreamExt as _;
use rtnetlink::packet_route::link::{LinkAttribute, LinkXdp, XdpAttached};

use crate::config::XdpAttach;

/// The modes to try for `wanted`, in order.
pub fn attempts(wanted: XdpAttach) -> &'static [XdpMode] {
    match wanted {
        XdpAttach::Auto => &[XdpMode::Driver, XdpMode::Skb],
        XdpAttach::Native => &[XdpMode::Driver],
        XdpAttach::Generic => &[XdpMode::Skb],
    }
}

/// The XDP mode the kernel reports for `iface`: "native", "generic", "offload", "multiple",
/// or "none".
pub fn attached(iface: &str) -> Result<&'static str> {
    match tokio::runtime::Handle::try_current() {
        Ok(admin) => admin.block_on(attached_async(iface)),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(attached_async(iface)),
    }
}

async fn attached_async(iface: &str) -> Result<&'static str> {
    let (connection, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
    tokio::spawn(connection);
    let mut links = handle.link().get().match_name(iface.to_string()).execute();
    let Some(link) = links
        .try_next()
        .await
        .with_context(|| format!("reading link {iface}"))?
    else {
        bail!("no interface {iface}");
    };
    for attr in &link.attributes {
        if let LinkAttribute::Xdp(xdp) = attr {
            for x in xdp {
                if let LinkXdp::Attached(mode) = x {
                    return Ok(match mode {
                        XdpAttached::None => "none",
                        XdpAttached::Driver => "native",
                        XdpAttached::SocketBuffer => "generic",
                        XdpAttached::Hardware => "offload",
                        XdpAttached::Multiple => "multiple",
                        _ => "unknown",
                    });
                }
            }
        }
    }
    Ok("none")
}
