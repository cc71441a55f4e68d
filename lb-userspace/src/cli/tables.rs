//! Tables for people: aligned columns, one row per entity.

use serde_json::Value;

use crate::api::types::Status;

fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// A table with a header row and aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out += &line(row.clone());
    }
    out
}

pub fn backends_table(list: &Value) -> String {
    let rows: Vec<Vec<String>> = list["backends"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            let servers = &b["servers"];
            let count = servers["addresses"]
                .as_array()
                .or(servers["computer_ids"].as_array())
                .map_or(0, Vec::len);
            vec![
                cell(&b["name"]),
                cell(&b["mode"]),
                cell(&b["balancing_method"]),
                cell(&b["port"]),
                format!("{count} ({})", cell(&servers["type"])),
            ]
        })
        .collect();
    table(&["NAME", "MODE", "METHOD", "PORT", "SERVERS"], &rows)
}

pub fn frontends_table(list: &Value) -> String {
    let rows: Vec<Vec<String>> = list["frontends"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            let binds: Vec<String> = f["binds"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|b| {
                    let mut s = cell(&b["port"]);
                    if let Some(p) = b["protocol"].as_str().filter(|p| *p != "tcp") {
                        s += &format!("/{p}");
                    }
                    if b["ssl"] == Value::Bool(true) {
                        s += "/ssl";
                    }
                    s
                })
                .collect();
            vec![
                cell(&f["name"]),
                cell(&f["mode"]),
                cell(&f["address"]),
                binds.join(","),
                cell(&f["default_backend"]),
            ]
        })
        .collect();
    table(
        &["NAME", "MODE", "ADDRESS", "BINDS", "DEFAULT_BACKEND"],
        &rows,
    )
}

pub fn servers_table(list: &Value) -> String {
    let rows: Vec<Vec<String>> = list["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            vec![
                cell(&s["name"]),
                cell(&s["address"]),
                cell(&s["port"]),
                cell(&s["state"]).to_uppercase(),
                cell(&s["weight"]),
                cell(&s["effective_weight"]),
                cell(&s["max_conn"]),
                cell(&s["health"]).to_uppercase(),
                cell(&s["active"]),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "ADDRESS",
            "PORT",
            "STATE",
            "WEIGHT",
            "EFFECTIVE",
            "MAX_CONN",
            "HEALTH",
            "ACTIVE",
        ],
        &rows,
    )
}

/// `lb status`: frontends with open flows, totals and rates; each backend's servers with
/// configured and effective weight, health and open flows.
pub fn status_table(s: &Status) -> String {
    let frontends: Vec<Vec<String>> = s
        .frontends
        .iter()
        .map(|f| {
            vec![
                f.name.clone(),
                f.open_flows.to_string(),
                f.flows_total.to_string(),
                format!("{:.1}", f.new_flows_per_s),
                format!("{:.0}", f.bytes_in_per_s),
                format!("{:.0}", f.bytes_out_per_s),
            ]
        })
        .collect();
    let mut out = table(
        &["FRONTEND", "OPEN", "FLOWS", "NEW/S", "IN B/S", "OUT B/S"],
        &frontends,
    );
    for b in &s.backends {
        out += &format!(
            "\nbackend {} ({}): {}/{} servers up\n",
            b.backend, b.mode, b.servers_up, b.servers
        );
        let rows: Vec<Vec<String>> = s
            .servers
            .iter()
            .filter(|v| v.backend == b.backend)
            .map(|v| {
                vec![
                    v.name.clone().unwrap_or_else(|| "-".into()),
                    v.address.clone(),
                    v.port.to_string(),
                    v.state.to_uppercase(),
                    v.weight.to_string(),
                    v.effective_weight.to_string(),
                    v.health.to_uppercase(),
                    v.active.to_string(),
                    v.flows_total.to_string(),
                    format!("{:.1}", v.new_flows_per_s),
                ]
            })
            .collect();
        let servers = table(
            &[
                "NAME",
                "ADDRESS",
                "PORT",
                "STATE",
                "WEIGHT",
                "EFFECTIVE",
                "HEALTH",
                "OPEN",
                "FLOWS",
                "NEW/S",
            ],
            &rows,
        );
        for line in servers.lines() {
            out += &format!("  {line}\n");
        }
    }
    out += &format!(
        "\nconnection table: {} of {} flows\n",
        s.conntrack_entries, s.conntrack_capacity
    );
    if !s.xdp.is_empty() {
        let modes: Vec<String> = s.xdp.iter().map(|(i, m)| format!("{i} {m}")).collect();
        out += &format!("xdp: {}\n", modes.join(", "));
    }
    if let Some(ha) = &s.ha {
        out += &format!(
            "ha: {} (peer {} {}{}), {}; sync lag {} entries, {:.1} s; flows sent {}, received {}; sticky sent {}, received {}; errors {}, failovers {}, split brains {}{}\n",
            ha.role.to_uppercase(),
            ha.peer,
            ha.peer_role.to_uppercase(),
            match (ha.sending, ha.receiving) {
                (true, true) => ", syncing both ways",
                (true, false) => ", sending only",
                (false, true) => ", receiving only",
                (false, false) => ", not connected",
            },
            if ha.synced {
                "synced"
            } else {
                "waiting for the bulk sync (held in FAULT)"
            },
            ha.lag_entries,
            ha.lag_seconds,
            ha.flows_sent,
            ha.flows_received,
            ha.sticky_sent,
            ha.sticky_received,
            ha.errors,
            ha.failovers,
            ha.split_brains,
            if ha.split_brain {
                " (SPLIT BRAIN NOW)"
            } else {
                ""
            },
        );
    }
    out
}
