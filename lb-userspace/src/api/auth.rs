//! Bearer tokens: read-write and read-only, compared in constant time.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use axum::{
    extract::{Request, State},
    http::{Method, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use subtle::ConstantTimeEq as _;

use super::error::ApiError;

/// The tokens of a token file (`rw TOKEN` / `ro TOKEN` lines, `#` comments), each with
/// whether it may change things.
pub fn token_file(path: &std::path::Path) -> Result<Vec<(String, bool)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("api.token_file {}: cannot read it", path.display()))?;
    let mut tokens = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (write, token) = match line.split_once(char::is_whitespace) {
            Some(("rw", t)) => (true, t.trim()),
            Some(("ro", t)) => (false, t.trim()),
            _ => anyhow::bail!(
                "{}:{}: expected `rw TOKEN` or `ro TOKEN` (the token itself is not shown)",
                path.display(),
                n + 1
            ),
        };
        tokens.push((token.to_string(), write));
    }
    Ok(tokens)
}

/// Bearer tokens and whether each may change things.
pub struct Tokens(Vec<(Vec<u8>, bool)>);

impl Tokens {
    /// From `[api] token_file` (`rw TOKEN` / `ro TOKEN` lines) and LB_API_TOKEN /
    /// LB_API_READONLY_TOKEN.
    pub fn load(file: Option<&std::path::Path>) -> Result<Tokens> {
        let mut tokens = Vec::new();
        if let Some(path) = file {
            for (token, write) in token_file(path)? {
                tokens.push((token.into_bytes(), write));
            }
        }
        for (var, write) in [("LB_API_TOKEN", true), ("LB_API_READONLY_TOKEN", false)] {
            if let Ok(t) = std::env::var(var)
                && !t.trim().is_empty()
            {
                tokens.push((t.trim().as_bytes().to_vec(), write));
            }
        }
        anyhow::ensure!(
            !tokens.is_empty(),
            "[api] listen is set but there is no token: set api.token_file or LB_API_TOKEN"
        );
        Ok(Tokens(tokens))
    }

    /// Some(may write) for a known token. Every token is compared, each in constant time.
    pub fn check(&self, presented: &[u8]) -> Option<bool> {
        let mut found: Option<bool> = None;
        for (token, write) in &self.0 {
            if bool::from(token.as_slice().ct_eq(presented)) {
                found = Some(found.unwrap_or(false) || *write);
            }
        }
        found
    }
}

/// Bearer auth: 401 without a known token, 403 when a read-only token tries a change.
pub async fn authorize(
    State(tokens): State<Arc<Tokens>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(write) = presented.and_then(|t| tokens.check(t.as_bytes())) else {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid `Authorization: Bearer <token>` header is required",
        )
        .into_response();
    };
    let reads = matches!(*request.method(), Method::GET | Method::HEAD);
    if !write && !reads {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "read_only",
            "this token may only read; use a read-write (`rw`) token to change things",
        )
        .into_response();
    }
    next.run(request).await
}

/// The OpenAPI document's security scheme.
pub struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_matched_whole_and_by_kind() {
        let tokens = Tokens(vec![
            (b"write-me".to_vec(), true),
            (b"read-me".to_vec(), false),
        ]);
        assert_eq!(tokens.check(b"write-me"), Some(true));
        assert_eq!(tokens.check(b"read-me"), Some(false));
        assert_eq!(tokens.check(b"read-m"), None);
        assert_eq!(tokens.check(b""), None);
    }
}
