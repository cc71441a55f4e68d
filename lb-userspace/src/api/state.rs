//! What the API's handlers share: the running config as the daemon last installed it, the
//! live view of servers and frontends it publishes, and the channel for changes, one
//! writer at a time.

use std::sync::{Arc, RwLock};

use axum::http::StatusCode;
use tokio::sync::{mpsc, oneshot};

use super::{
    error::{ApiError, ApiResult, validate},
    types::Live,
};
use crate::config::Config;

/// A validated config for the daemon to apply and persist; the reply says how it went.
pub struct Change {
    pub config: Config,
    pub reply: oneshot::Sender<Result<(), String>>,
}

/// State the handlers share.
pub struct Api {
    /// The running config, as the daemon last installed it (reloads included).
    pub current: Arc<RwLock<Config>>,
    /// What the daemon last published of the data plane and the proxy.
    pub live: Arc<RwLock<Live>>,
    writer: tokio::sync::Mutex<()>,
    changes: mpsc::UnboundedSender<Change>,
}

impl Api {
    pub fn new(
        current: Arc<RwLock<Config>>,
        live: Arc<RwLock<Live>>,
        changes: mpsc::UnboundedSender<Change>,
    ) -> Api {
        Api {
            current,
            live,
            writer: tokio::sync::Mutex::new(()),
            changes,
        }
    }

    pub fn config(&self) -> Config {
        self.current.read().expect("config lock").clone()
    }

    /// Apply a change made to a copy of the running config, one writer at a time.
    pub async fn change<T>(
        &self,
        edit: impl FnOnce(&mut Config) -> ApiResult<(T, String)>,
    ) -> ApiResult<T> {
        let _writer = self.writer.lock().await;
        let mut config = self.config();
        let (value, prefix) = edit(&mut config)?;
        validate(&config, &prefix)?;
        let (reply, result) = oneshot::channel();
        self.changes.send(Change { config, reply }).map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "stopping",
                "the daemon is stopping",
            )
        })?;
        match result.await {
            Ok(Ok(())) => Ok(value),
            Ok(Err(e)) => Err(ApiError::new(
                StatusCode::CONFLICT,
                "apply_failed",
                format!("the change could not be applied, nothing was changed: {e}"),
            )),
            Err(_) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "stopping",
                "the daemon is stopping",
            )),
        }
    }
}
