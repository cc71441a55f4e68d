//! The REST API (`[api] listen`): the product's `/v1/lbs/...` surface over the same config
//! the file holds. A change is validated by `Config::validate` (the file's rules), handed to
//! the daemon, which applies it through the reload path and then persists the file
//! atomically; writers are serialised, and a change that fails to apply leaves the running
//! state and the file as they were.
//!
//! `handlers` holds the routes, `state` what they share, `auth` the tokens, `error` the
//! error documents and `types` the documents the CLI shares.

mod auth;
mod error;
mod handlers;
mod state;
pub mod types;

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context as _, Result};

pub use auth::{Tokens, token_file};
pub use handlers::{ApiDoc, router};
pub use state::{Api, Change};

/// Serve the API on the admin runtime (call within it).
pub fn serve(listen: SocketAddr, api: Arc<Api>, tokens: Tokens) -> Result<()> {
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("api: cannot listen on {listen} ([api] listen)"))?;
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let app = router(api, Arc::new(tokens));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(())
}
