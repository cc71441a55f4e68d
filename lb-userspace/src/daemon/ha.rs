//! The daemon's side of the HA pair: it starts the flow sync, follows the role keepalived
//! gives this node, and tells keepalived through the track file whether this node may
//! serve (running, and synced from the peer).

use std::{
    sync::{Arc, Mutex, atomic::Ordering::Relaxed},
    time::Duration,
};

use anyhow::{Context as _, Result};
use tracing::{info, warn};

use crate::{
    api::types::HaStatus,
    config::{Config, HaConfig},
    dataplane::Dataplane,
    ha::{
        role::{TrackFile, follow_notify_fifo},
        sync::{self, Shared},
        wire::Secret,
    },
};

/// How often the track file is rewritten: a daemon that stops rewriting it is stuck.
pub const TRACK_REFRESH: Duration = Duration::from_millis(500);

pub struct HaLink {
    pub shared: Arc<Shared>,
    track: Arc<TrackFile>,
    peer: String,
}

/// Start the sync (with map handles of its own), the role follower and the track file's
/// writer. Call within the admin runtime, after the first apply.
pub fn start(config: &Config, ha: &HaConfig, dataplane: &Arc<Mutex<Dataplane>>) -> Result<HaLink> {
    let secret = std::fs::read(&ha.secret_file)
        .with_context(|| format!("reading ha.secret_file {}", ha.secret_file.display()))?;
    let names = dataplane.lock().expect("dataplane lock").names();
    let shared = Shared::new(names);
    let tables = {
        let dataplane = dataplane.clone();
        move || dataplane.lock().expect("dataplane lock").flow_tables()
    };
    sync::start(
        sync::Settings {
            listen: ha.listen,
            peer: ha.peer,
            secret: Secret::new(&secret),
            interval: ha.sync_interval,
            timeouts: config.dataplane.timeouts(),
        },
        tables,
        shared.clone(),
    )?;
    info!(listen = %ha.listen, peer = %ha.peer, "ha: syncing flows with the peer");
    let mut roles = follow_notify_fifo(ha.notify_fifo.clone())?;
    {
        let shared = shared.clone();
        tokio::spawn(async move {
            while roles.changed().await.is_ok() {
                let role = *roles.borrow_and_update();
                shared.set_role(role);
            }
        });
    }
    let track = Arc::new(TrackFile::new(ha.track_file.clone()));
    track
        .write(false)
        .with_context(|| format!("writing ha.track_file {}", ha.track_file.display()))?;
    {
        let (shared, track) = (shared.clone(), track.clone());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(TRACK_REFRESH);
            let mut was = false;
            loop {
                ticks.tick().await;
                let synced = shared.synced();
                if synced != was {
                    info!(
                        synced,
                        "ha: track file says this node {}",
                        if synced { "may serve" } else { "waits" }
                    );
                    was = synced;
                }
                if let Err(e) = track.write(synced) {
                    warn!(error = %e, "ha: writing the track file failed");
                }
            }
        });
    }
    Ok(HaLink {
        shared,
        track,
        peer: ha.peer.to_string(),
    })
}

impl HaLink {
    /// At exit: keepalived moves the addresses to the peer at once.
    pub fn stop(&self) {
        if let Err(e) = self.track.write(false) {
            warn!(error = %e, "ha: writing the track file failed");
        }
    }

    pub fn status(&self) -> HaStatus {
        let s = &self.shared;
        let st = &s.stats;
        HaStatus {
            role: s.role().as_str().into(),
            peer_role: s.peer_role().as_str().into(),
            peer: self.peer.clone(),
            sending: st.sending.load(Relaxed),
            receiving: st.receiving.load(Relaxed),
            synced: s.synced(),
            lag_entries: st.lag_entries.load(Relaxed),
            lag_seconds: s.lag_seconds(),
            flows_sent: st.flows_sent.load(Relaxed),
            flows_received: st.flows_received.load(Relaxed),
            sticky_sent: st.sticky_sent.load(Relaxed),
            sticky_received: st.sticky_received.load(Relaxed),
            errors: st.errors.load(Relaxed),
            unmapped: st.unmapped.load(Relaxed),
            failovers: st.failovers.load(Relaxed),
            split_brains: st.split_brains.load(Relaxed),
            split_brain: s.split_brain(),
        }
    }
}
