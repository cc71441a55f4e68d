//! The API client of the CLI: one call with a Bearer token, answers as JSON values or as
//! the API's own types.

use std::io::Read as _;

use anyhow::{Context as _, Result, bail};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{api::types::Status, config::Config};

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
    /// The call, for an answer that is not the API's: "GET http://127.0.0.1:9100/v1/lbs".
    pub call: String,
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
            // Not lb's error document: most likely --api names another server (the
            // metrics port, a proxy) or another version of lb.
            _ => {
                write!(
                    f,
                    "{}: {} with no lb API error in the answer; is that lb's REST API? \
                     Check --api (or LB_API_URL): it is the daemon's [api] listen, for \
                     example http://127.0.0.1:8081",
                    self.call, self.status
                )?;
                match &self.body {
                    Value::Null => Ok(()),
                    Value::String(text) => {
                        let text: String = text.chars().take(200).collect();
                        write!(f, " (it answered: {:?})", text.trim())
                    }
                    other => write!(f, " (it answered: {other})"),
                }
            }
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
            ("PATCH", Some(b)) => self
                .agent
                .patch(&url)
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
        let mut response = sent.with_context(|| {
            format!(
                "cannot reach the API at {} (the daemon's [api] listen; --api or LB_API_URL)",
                self.base
            )
        })?;
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
                call: format!("{method} {url}"),
            }
            .into())
        }
    }

    /// The API of the daemon that runs `config`: its `[api] listen` address, and `token`,
    /// or else LB_API_TOKEN, or else the first token of its `[api] token_file`.
    pub fn for_config(config: &Config, token: Option<String>) -> Result<Client> {
        let listen = config.api.listen.context(
            "the config has no [api] listen; lb status reads the daemon through its API: set [api] listen = \"127.0.0.1:8081\" and a token_file, and reload",
        )?;
        let host = match listen.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
            ip if ip.is_unspecified() => "[::1]".to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let token = match token {
            Some(t) => Some(t),
            None => match &config.api.token_file {
                Some(path) => crate::api::token_file(path)?
                    .into_iter()
                    .next()
                    .map(|(t, _)| t),
                None => None,
            },
        };
        Client::new(&format!("http://{host}:{}", listen.port()), token)
    }

    /// A GET whose answer is one of the API's types.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let value = self.call("GET", path, None)?;
        serde_json::from_value(value)
            .with_context(|| format!("the API's answer to GET {path} is not what lb expects"))
    }

    /// `lb status`: a load balancer's frontends, backends and servers.
    pub fn status(&self, lb: &str) -> Result<Status> {
        self.get(&format!("/v1/lbs/{lb}/status"))
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
