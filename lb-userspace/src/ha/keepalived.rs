//! `lb ha keepalived-config`: keepalived's config for this node of the pair.
//!
//! keepalived owns the floating addresses; lb decides whether this node may hold them:
//!
//! - **Readiness** (`track_file`, weight 0): lb writes "0" into `ha.track_file` while it
//!   serves and is synced, anything else ("1" at exit) puts the instance in FAULT at once.
//!   `init_file 1`: a node whose lb never wrote the file starts in FAULT.
//! - **A dead or stuck lb** (`vrrp_script lb_heartbeat`): lb rewrites the track file every
//!   second; the script fails when the file is older than [`HEARTBEAT_STALE_SECS`] (or
//!   missing), and one failure (`fall 1`) puts the instance in FAULT. A crashed, killed or
//!   SIGSTOPped lb stops refreshing the file, so its node gives the addresses up within
//!   about `HEARTBEAT_STALE_SECS + 1` seconds, whereas a track file left saying "0" by a
//!   dead lb would keep it master forever. `vrrp_track_process` was not chosen: it
//!   matches processes by name across the whole host (two nodes, or `lb peer`, on one host
//!   satisfy each other's), and it cannot tell a stuck daemon from a working one.
//! - Both nodes start as BACKUP; role "master" has priority 150, "backup" 100, and
//!   preemption is on, so the preferred node takes the addresses back once its lb says
//!   "0" again, after `preempt_delay` ([`PREEMPT_DELAY_SECS`]): time for the peer's sync
//!   session to reach a node whose links come back, whose lb then says "1" until the
//!   peer's bulk transfer is complete (no reclaim before sync).
//! - keepalived reports every state change on `ha.notify_fifo` (read by
//!   [`super::role::follow_notify_fifo`]).

use std::{collections::BTreeSet, fmt::Write as _, path::Path};

use anyhow::{Context as _, Result, bail};

use crate::config::{Config, HaConfig, HaRole};

/// The vrrp_instance's name, as keepalived reports it on the notify FIFO.
pub const INSTANCE: &str = "lb";
/// Priority of role "master".
pub const MASTER_PRIORITY: u8 = 150;
/// Priority of role "backup".
pub const BACKUP_PRIORITY: u8 = 100;
/// Seconds a node that sees a lower-priority master waits before it preempts.
pub const PREEMPT_DELAY_SECS: u32 = 2;
/// The heartbeat fails when the track file was last written longer ago than this.
pub const HEARTBEAT_STALE_SECS: u32 = 3;

/// keepalived's config for this node of the pair.
pub fn render(config: &Config) -> Result<String> {
    let ha = config.ha.as_ref().context(
        "the config has no [ha] section: keepalived's config is rendered from [ha] (role, listen, peer, notify_fifo, track_file, vrrp)",
    )?;
    render_ha(ha)
}

fn render_ha(ha: &HaConfig) -> Result<String> {
    let fifo = quoted(&ha.notify_fifo, "ha.notify_fifo")?;
    let track = quoted(&ha.track_file, "ha.track_file")?;
    // Inside the script's single-quoted shell argument.
    if ha.track_file.to_string_lossy().contains('\'') {
        bail!("ha.track_file {:?} contains a single quote", ha.track_file);
    }
    let v = &ha.vrrp;
    for name in std::iter::once(&v.interface).chain(v.addresses.iter().map(|a| &a.interface)) {
        if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '"') {
            bail!("interface name {name:?} cannot go into keepalived's config");
        }
    }
    let priority = match ha.role {
        HaRole::Master => MASTER_PRIORITY,
        HaRole::Backup => BACKUP_PRIORITY,
    };
    let advert = v.advert_int.as_millis();
    let advert = format!("{}.{:02}", advert / 1000, advert % 1000 / 10);
    let role = match ha.role {
        HaRole::Master => "master",
        HaRole::Backup => "backup",
    };
    let mut out = String::new();
    let w = &mut out;
    writeln!(
        w,
        "# keepalived for lb (role {role}), written by `lb ha keepalived-config`: keepalived moves\n\
         # the floating addresses, lb says through the track file whether this node may hold them."
    )?;
    writeln!(w, "global_defs {{")?;
    writeln!(w, "    # lb reads MASTER/BACKUP/FAULT changes here.")?;
    writeln!(w, "    notify_fifo {fifo}")?;
    writeln!(w, "    vrrp_version 3")?;
    writeln!(w, "    script_user root")?;
    writeln!(w, "    enable_script_security")?;
    writeln!(w, "}}\n")?;
    writeln!(
        w,
        "# lb writes 0 while it serves and is synced; anything else is FAULT at once."
    )?;
    writeln!(w, "track_file lb_track {{")?;
    writeln!(w, "    file {track}")?;
    writeln!(w, "    weight 0")?;
    writeln!(w, "    init_file 1")?;
    writeln!(w, "}}\n")?;
    writeln!(
        w,
        "# lb rewrites the track file every second: a file older than {HEARTBEAT_STALE_SECS} s means lb is dead or stuck."
    )?;
    writeln!(w, "vrrp_script lb_heartbeat {{")?;
    writeln!(
        w,
        "    script \"/bin/sh -c 'find {} -mmin -{:.2} | grep -q .'\"",
        ha.track_file.display(),
        f64::from(HEARTBEAT_STALE_SECS) / 60.0
    )?;
    writeln!(w, "    interval 1")?;
    writeln!(w, "    timeout 1")?;
    writeln!(w, "    fall 1")?;
    writeln!(w, "    rise 1")?;
    writeln!(w, "}}\n")?;
    writeln!(w, "vrrp_instance {INSTANCE} {{")?;
    writeln!(
        w,
        "    # Both nodes start as BACKUP; the higher priority takes over once its lb is ready."
    )?;
    writeln!(w, "    state BACKUP")?;
    writeln!(w, "    interface {}", v.interface)?;
    writeln!(w, "    virtual_router_id {}", v.virtual_router_id)?;
    writeln!(w, "    priority {priority}")?;
    writeln!(w, "    advert_int {advert}")?;
    writeln!(
        w,
        "    # A returning node waits before it preempts: meanwhile the peer's sync session\n    # reaches it, and its lb holds it in FAULT until the peer's bulk transfer is in."
    )?;
    writeln!(w, "    preempt_delay {PREEMPT_DELAY_SECS}")?;
    writeln!(w, "    unicast_src_ip {}", ha.listen.ip())?;
    writeln!(w, "    unicast_peer {{")?;
    writeln!(w, "        {}", ha.peer.ip())?;
    writeln!(w, "    }}")?;
    let family = ha.listen.is_ipv4();
    let (same, other): (Vec<_>, Vec<_>) = v
        .addresses
        .iter()
        .partition(|a| a.address.net.is_ipv4() == family);
    writeln!(w, "    virtual_ipaddress {{")?;
    for a in &same {
        writeln!(w, "        {} dev {}", a.address, a.interface)?;
    }
    writeln!(w, "    }}")?;
    if !other.is_empty() {
        // VRRP runs over one address family; the other family's addresses move with it.
        writeln!(w, "    virtual_ipaddress_excluded {{")?;
        for a in &other {
            writeln!(w, "        {} dev {}", a.address, a.interface)?;
        }
        writeln!(w, "    }}")?;
    }
    let tracked: BTreeSet<&str> = v
        .addresses
        .iter()
        .map(|a| a.interface.as_str())
        .filter(|i| *i != v.interface)
        .collect();
    if !tracked.is_empty() {
        writeln!(
            w,
            "    # A floating address's link down is FAULT (the VRRP interface is tracked anyway)."
        )?;
        writeln!(w, "    track_interface {{")?;
        for i in tracked {
            writeln!(w, "        {i}")?;
        }
        writeln!(w, "    }}")?;
    }
    writeln!(w, "    track_file {{")?;
    writeln!(w, "        lb_track")?;
    writeln!(w, "    }}")?;
    writeln!(w, "    track_script {{")?;
    writeln!(w, "        lb_heartbeat")?;
    writeln!(w, "    }}")?;
    writeln!(w, "}}")?;
    Ok(out)
}

/// `path` as a keepalived quoted string.
fn quoted(path: &Path, field: &str) -> Result<String> {
    let text = path
        .to_str()
        .with_context(|| format!("{field} {path:?} is not UTF-8"))?;
    if text.is_empty() || text.contains(['"', '\n']) || !path.is_absolute() {
        bail!("{field} {path:?} must be an absolute path without quotes");
    }
    Ok(format!("\"{text}\""))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::{Cidr, FloatingAddress, VrrpConfig};

    fn ha(role: HaRole) -> HaConfig {
        HaConfig {
            role,
            listen: "198.18.50.1:7946".parse().unwrap(),
            peer: "198.18.50.2:7946".parse().unwrap(),
            secret_file: "/etc/lb/ha.secret".into(),
            sync_interval: Duration::from_millis(200),
            notify_fifo: "/run/lb/keepalived.fifo".into(),
            track_file: "/run/lb/track".into(),
            vrrp: VrrpConfig {
                interface: "eth-h".into(),
                virtual_router_id: 51,
                advert_int: Duration::from_millis(100),
                addresses: vec![
                    FloatingAddress {
                        address: Cidr::parse("198.18.0.10/24").unwrap(),
                        interface: "eth-c".into(),
                    },
                    FloatingAddress {
                        address: Cidr::parse("198.18.10.1/24").unwrap(),
                        interface: "eth-s".into(),
                    },
                ],
            },
        }
    }

    fn config(ha: HaConfig) -> Config {
        Config {
            ha: Some(ha),
            ..Config::default()
        }
    }

    #[test]
    fn without_ha_the_error_says_so() {
        let e = render(&Config::default()).unwrap_err();
        assert!(format!("{e}").contains("no [ha] section"), "{e}");
    }

    #[test]
    fn master_renders_vrrp3_unicast_tracking_and_the_floating_addresses() {
        let text = render(&config(ha(HaRole::Master))).unwrap();
        for line in [
            "notify_fifo \"/run/lb/keepalived.fifo\"",
            "vrrp_version 3",
            "script_user root",
            "enable_script_security",
            "track_file lb_track {",
            "file \"/run/lb/track\"",
            "weight 0",
            "init_file 1",
            "vrrp_script lb_heartbeat {",
            "script \"/bin/sh -c 'find /run/lb/track -mmin -0.05 | grep -q .'\"",
            "vrrp_instance lb {",
            "state BACKUP",
            "interface eth-h",
            "virtual_router_id 51",
            "priority 150",
            "advert_int 0.10",
            "unicast_src_ip 198.18.50.1",
            "198.18.50.2",
            "198.18.0.10/24 dev eth-c",
            "198.18.10.1/24 dev eth-s",
            "lb_track",
            "lb_heartbeat",
        ] {
            assert!(
                text.lines().any(|l| l.trim() == line),
                "missing {line:?} in\n{text}"
            );
        }
        for absent in ["nopreempt", "authentication", "state MASTER", "excluded"] {
            assert!(!text.contains(absent), "{absent:?} in\n{text}");
        }
        // Floating addresses' interfaces are tracked; the VRRP interface is anyway.
        let tracked = text.split("track_interface {").nth(1).unwrap();
        let tracked = tracked.split('}').next().unwrap();
        assert_eq!(
            tracked.split_whitespace().collect::<Vec<_>>(),
            ["eth-c", "eth-s"]
        );
        // Balanced braces: keepalived would otherwise read the rest of the file wrongly.
        assert_eq!(text.matches('{').count(), text.matches('}').count());
    }

    #[test]
    fn backup_has_the_lower_priority_and_intervals_keep_their_decimals() {
        let mut backup = ha(HaRole::Backup);
        backup.vrrp.advert_int = Duration::from_millis(1500);
        let text = render(&config(backup)).unwrap();
        assert!(text.contains("    priority 100\n"), "{text}");
        assert!(text.contains("    advert_int 1.50\n"), "{text}");
        let mut slow = ha(HaRole::Backup);
        slow.vrrp.advert_int = Duration::from_secs(1);
        assert!(render_ha(&slow).unwrap().contains("advert_int 1.00\n"));
    }

    #[test]
    fn the_other_familys_addresses_are_excluded_from_the_adverts() {
        let mut six = ha(HaRole::Master);
        six.vrrp.addresses.push(FloatingAddress {
            address: Cidr::parse("2001:2::10/64").unwrap(),
            interface: "eth-c".into(),
        });
        let text = render_ha(&six).unwrap();
        let excluded = text.split("virtual_ipaddress_excluded {").nth(1).unwrap();
        assert!(
            excluded
                .split('}')
                .next()
                .unwrap()
                .contains("2001:2::10/64 dev eth-c"),
            "{text}"
        );
    }

    #[test]
    fn paths_keepalived_cannot_quote_are_refused() {
        let mut bad = ha(HaRole::Master);
        bad.track_file = "relative/track".into();
        assert!(render_ha(&bad).is_err());
        let mut bad = ha(HaRole::Master);
        bad.notify_fifo = "/run/\"x\"".into();
        assert!(render_ha(&bad).is_err());
        let mut bad = ha(HaRole::Master);
        bad.track_file = "/run/it's".into();
        assert!(render_ha(&bad).is_err());
    }
}
