//! The API's command-line client: `lb backends|frontends|servers|status` against a running
//! daemon's `/v1` with a Bearer token. Tables for people, `-o json` for scripts; API errors
//! are printed as the API gave them.

use std::io::Read as _;

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// Where the API is and who is calling.
pub struct Client {
    pub base: String,
    pub token: String,
    agent: ureq::Agent,
}

/// An answer that was not 2xx: the API's own error.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: u16,
    pub body: Value,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let e = &self.body["error"];
        match (e["code"].as_str(), e["message"].as_str()) {
            (Some(code), Some(message)) => {
                write!(f, "{} {code}: {message}", self.status)?;
                if let Some(field) = e["field"].as_str() {
                    write!(f, " (field: {field})")?;
                }
                Ok(())
            }
            _ => write!(f, "{} {}", self.status, self.body),
        }
    }
}

impl std::error::Error for ApiFailure {}

impl Client {
    pub fn new(base: &str, token: Option<String>) -> Result<Client> {
        let token = token.context(
            "no API token: pass --token or set LB_API_TOKEN (a line of the daemon's api.token_file)",
        )?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(30)))
            .build()
            .into();
        Ok(Client {
            base: base.trim_end_matches('/').to_string(),
            token,
            agent,
        })
    }

    /// One call; Ok(body) for 2xx, Err(ApiFailure) with the API's error otherwise.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let sent = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("Authorization", &auth)
                .call(),
            ("PUT", Some(b)) => self
                .agent
                .put(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(b),
            ("POST", Some(b)) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(b),
            _ => bail!("unsupported call {method} {path}"),
        };
        let mut response =
            sent.with_context(|| format!("cannot reach the API at {}", self.base))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if (200..300).contains(&status) {
            Ok(value)
        } else {
            Err(ApiFailure {
                status,
                body: value,
            }
            .into())
        }
    }

    /// The load balancer to work on: the one given, or the first the API lists.
    pub fn lb(&self, given: Option<String>) -> Result<String> {
        if let Some(id) = given {
            return Ok(id);
        }
        let lbs = self.call("GET", "/v1/lbs", None)?;
        lbs["lbs"][0]["id"]
            .as_str()
            .map(str::to_string)
            .context("the daemon has no load balancer; create one with POST /v1/lbs")
    }
}

/// Read a JSON document from a file, or stdin for "-".
pub fn read_document(path: &str) -> Result<String> {
    let mut text = String::new();
    if path == "-" {
        std::io::stdin().read_to_string(&mut text)?;
    } else {
        text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    }
    serde_json::from_str::<Value>(&text).with_context(|| format!("{path} is not JSON"))?;
    Ok(text)
}

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
                cell(&s["address"]),
                cell(&s["port"]),
                cell(&s["weight"]),
                cell(&s["max_conn"]),
                cell(&s["health"]).to_uppercase(),
                cell(&s["active"]),
            ]
        })
        .collect();
    table(
        &["ADDRESS", "PORT", "WEIGHT", "MAX_CONN", "HEALTH", "ACTIVE"],
        &rows,
    )
}

/// `lb status` through the API: every backend of the load balancer with its servers.
pub fn status(client: &Client, lb: &str) -> Result<Value> {
    let backends = client.call("GET", &format!("/v1/lbs/{lb}/backends"), None)?;
    let mut out = Vec::new();
    for b in backends["backends"].as_array().into_iter().flatten() {
        let name = cell(&b["name"]);
        let servers = client.call(
            "GET",
            &format!("/v1/lbs/{lb}/backends/{name}/servers"),
            None,
        )?;
        out.push(serde_json::json!({
            "backend": name,
            "mode": b["mode"],
            "servers": servers["servers"],
        }));
    }
    Ok(serde_json::json!({ "lb": lb, "backends": out }))
}

pub fn status_table(status: &Value) -> String {
    let mut out = String::new();
    for b in status["backends"].as_array().into_iter().flatten() {
        let servers = b["servers"].as_array().map_or(&[][..], Vec::as_slice);
        let up = servers.iter().filter(|s| s["health"] != "down").count();
        out += &format!(
            "backend {} ({}): {up}/{} servers up\n",
            cell(&b["backend"]),
            cell(&b["mode"]),
            servers.len()
        );
        for line in servers_table(&serde_json::json!({ "servers": servers })).lines() {
            out += &format!("  {line}\n");
        }
    }
    out
}
