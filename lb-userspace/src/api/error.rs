//! The API's errors: `{"error": {"code", "message", "field"}}` with a status, for bodies
//! that do not parse (the field at fault named) and changes the config's rules refuse.

use axum::{
    Json,
    body::Bytes,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use utoipa::ToSchema;

use crate::config::Config;

/// `{"error": {"code", "message", "field"}}` with its status.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    code: &'static str,
    message: String,
    pub field: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    /// The field of the request body (or path) at fault, when there is one.
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    pub fn field(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    pub fn not_found(what: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} does not exist"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.into(),
                message: self.message,
                field: self.field,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"lb\""),
            );
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// Parse a JSON body, naming the field at fault.
pub fn parse_body<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed: Result<T, _> = serde_path_to_error::deserialize(&mut de);
    let value = parsed.map_err(|e| {
        let inner = e.inner();
        let path = e.path().to_string();
        let message = inner.to_string();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "malformed_json",
                format!("the body is not valid JSON: {message}"),
            );
        }
        // serde names a missing field in its message, not in the path (which ends at the
        // struct); an unknown field's path already ends at its key.
        let named = message
            .split('`')
            .nth(1)
            .filter(|_| message.starts_with("missing field"));
        let field = match (path.as_str(), named) {
            (".", Some(n)) => n.to_string(),
            (p, Some(n)) => format!("{p}.{n}"),
            (p, None) => p.to_string(),
        };
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            format!("{field}: {message}"),
        )
        .field(field)
    })?;
    de.end().map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("trailing data: {e}"),
        )
    })?;
    Ok(value)
}

/// Validate `config` with the file's rules; problems of entity `prefix` (such as
/// `backends[3]`) are named relative to the request body.
pub fn validate(config: &Config, prefix: &str) -> ApiResult<()> {
    let mut problems = config.validate();
    problems.extend(config.check_files());
    let Some(first) = problems.first() else {
        return Ok(());
    };
    let relative = |field: &str| {
        field
            .strip_prefix(prefix)
            .map(|f| f.trim_start_matches('.').to_string())
            .unwrap_or_else(|| field.to_string())
    };
    let message = problems
        .iter()
        .map(|p| format!("{}: {} (fix: {})", relative(&p.field), p.message, p.fix))
        .collect::<Vec<_>>()
        .join("; ");
    Err(
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_config", message)
            .field(relative(&first.field)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Backend;

    #[test]
    fn body_errors_name_the_field() {
        let err = |body: &str| parse_body::<Backend>(&Bytes::from(body.to_string())).unwrap_err();
        let e = err(
            r#"{"name": "a", "balancing_method": "first", "port": 1, "servers": {"type": "addresses", "addresses": []}}"#,
        );
        assert_eq!(
            (e.status, e.field.as_deref()),
            (StatusCode::UNPROCESSABLE_ENTITY, Some("mode"))
        );
        let e = err(
            r#"{"name": "a", "mode": "tcp", "balancing_method": "first", "port": 1, "servers": {"type": "addresses", "addresses": []}, "options": {"tls": "yes"}}"#,
        );
        assert_eq!(e.field.as_deref(), Some("options.tls"));
        let e = err(
            r#"{"name": "a", "mode": "tcp", "balancing_method": "first", "port": 1, "servers": {"type": "addresses", "addresses": []}, "options": {"colour": 1}}"#,
        );
        assert_eq!(e.field.as_deref(), Some("options.colour"));
        let e = err("{");
        assert_eq!((e.status, e.field), (StatusCode::BAD_REQUEST, None));
    }
}
