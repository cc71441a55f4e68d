//! The REST API (`[api] listen`): the product's `/v1/lbs/...` surface over the same config
//! the file holds. A change is validated by `Config::validate` (the file's rules), handed to
//! the daemon, which applies it through the reload path and then persists the file
//! atomically; writers are serialised, and a change that fails to apply leaves the running
//! state and the file as they were.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, RwLock},
};

use anyhow::{Context as _, Result};
use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Request, State},
    http::{HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use subtle::ConstantTimeEq as _;
use tokio::sync::{mpsc, oneshot};
use utoipa::{OpenApi, ToSchema};

use crate::config::{Backend, Config, DEFAULT_LB, Frontend, LoadBalancer, PublicPort};

/// A validated config for the daemon to apply and persist; the reply says how it went.
pub struct Change {
    pub config: Config,
    pub reply: oneshot::Sender<Result<(), String>>,
}

/// A server of a backend as the API shows it: configured, and live from the data plane.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct ServerView {
    pub address: String,
    pub port: u16,
    pub weight: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_conn: Option<u32>,
    /// "up", "down" (failing its health check) or "unchecked" (no health check: up).
    pub health: String,
    /// Open flows (XDP) or connections (proxy) on this server now.
    pub active: u64,
}

/// What the daemon publishes for the API: backend name -> its servers.
pub type ServerViews = RwLock<BTreeMap<String, Vec<ServerView>>>;

/// State the handlers share.
pub struct Api {
    /// The running config, as the daemon last installed it (reloads included).
    pub current: Arc<RwLock<Config>>,
    pub servers: Arc<ServerViews>,
    writer: tokio::sync::Mutex<()>,
    changes: mpsc::UnboundedSender<Change>,
    tokens: Tokens,
}

/// Bearer tokens and whether each may change things.
pub struct Tokens(Vec<(Vec<u8>, bool)>);

impl Tokens {
    /// From `[api] token_file` (`rw TOKEN` / `ro TOKEN` lines) and LB_API_TOKEN /
    /// LB_API_READONLY_TOKEN.
    pub fn load(file: Option<&std::path::Path>) -> Result<Tokens> {
        let mut tokens = Vec::new();
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("api.token_file {}: cannot read it", path.display()))?;
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
                tokens.push((token.as_bytes().to_vec(), write));
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
    fn check(&self, presented: &[u8]) -> Option<bool> {
        let mut found: Option<bool> = None;
        for (token, write) in &self.0 {
            if bool::from(token.as_slice().ct_eq(presented)) {
                found = Some(found.unwrap_or(false) || *write);
            }
        }
        found
    }
}

/// `{"error": {"code", "message", "field"}}` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<String>,
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
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    fn field(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    fn not_found(what: &str) -> ApiError {
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

type ApiResult<T> = Result<T, ApiError>;

/// Parse a JSON body, naming the field at fault.
fn parse_body<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
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
        // serde names a missing or unknown field in its message, not in the path.
        let named = message.split('`').nth(1).filter(|_| {
            message.starts_with("missing field") || message.starts_with("unknown field")
        });
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
fn validate(config: &Config, prefix: &str) -> ApiResult<()> {
    let problems = config.validate();
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

impl Api {
    pub fn new(
        current: Arc<RwLock<Config>>,
        servers: Arc<ServerViews>,
        changes: mpsc::UnboundedSender<Change>,
        tokens: Tokens,
    ) -> Api {
        Api {
            current,
            servers,
            writer: tokio::sync::Mutex::new(()),
            changes,
            tokens,
        }
    }

    fn config(&self) -> Config {
        self.current.read().expect("config lock").clone()
    }

    /// Apply a change made to a copy of the running config, one writer at a time.
    async fn change<T>(
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

type Shared = State<Arc<Api>>;

/// A load balancer as the API shows it.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct LbView {
    pub id: String,
    pub name: String,
    pub description: String,
    pub status: String,
    pub frontends: usize,
    pub backends: usize,
    pub public_ports: Vec<PublicPort>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewLb {
    /// Chosen by lb (the next free number) when absent.
    #[schema(min_length = 1)]
    pub id: Option<String>,
    pub name: String,
    #[serde(default)]
    pub description: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct LbList {
    pub lbs: Vec<LbView>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct BackendList {
    pub backends: Vec<Backend>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct FrontendList {
    pub frontends: Vec<Frontend>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct ServerList {
    pub servers: Vec<ServerView>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewPublicPort {
    #[schema(minimum = 1, maximum = 65535)]
    pub port: u16,
    #[serde(default)]
    pub desc: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct PublicPortCreated {
    pub public_port: u16,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublicPortRef {
    #[schema(minimum = 1, maximum = 65535)]
    pub port: u16,
}

fn lb_view(config: &Config, lb: LoadBalancer) -> LbView {
    let count = |of: &Option<String>| config.lb_of(of) == lb.id;
    LbView {
        frontends: config.frontends.iter().filter(|f| count(&f.lb)).count(),
        backends: config.backends.iter().filter(|b| count(&b.lb)).count(),
        id: lb.id,
        name: lb.name,
        description: lb.description,
        status: "active".into(),
        public_ports: lb.public_ports,
    }
}

fn require_lb(config: &Config, id: &str) -> ApiResult<LoadBalancer> {
    config
        .lb(id)
        .ok_or_else(|| ApiError::not_found(&format!("load balancer {id:?}")).field("lb_id"))
}

/// `lbs` written out, so that entities without `lb` keep belonging to the default.
fn materialise_lbs(config: &mut Config) {
    if config.lbs.is_empty() {
        config
            .lbs
            .push(config.lb(DEFAULT_LB).expect("the default lb"));
    }
}

/// The `lb` field stored for an entity of load balancer `id`: none for the default one.
fn lb_field(config: &Config, id: &str) -> Option<String> {
    (config.lb_of(&None) != id).then(|| id.to_string())
}

/// An entity as the API shows it: without `lb`, which the path says.
fn shown<K: Kind>(entity: &K) -> K {
    let mut e = entity.clone();
    e.set_lb(None);
    e
}

/// Backends or frontends: where they live in the config and what they are called.
trait Kind: Clone + DeserializeOwned + Serialize {
    const PLURAL: &'static str;
    const SINGULAR: &'static str;
    fn lb(&self) -> &Option<String>;
    fn set_lb(&mut self, lb: Option<String>);
    fn name(&self) -> &str;
    fn list(config: &Config) -> &Vec<Self>;
    fn list_mut(config: &mut Config) -> &mut Vec<Self>;
    /// Called before `old` is removed or renamed to `new` (None: deleted).
    fn on_rename(config: &mut Config, lb: &str, old: &str, new: Option<&str>) -> ApiResult<()>;
}

impl Kind for Backend {
    fn lb(&self) -> &Option<String> {
        &self.lb
    }
    fn set_lb(&mut self, lb: Option<String>) {
        self.lb = lb;
    }
    fn name(&self) -> &str {
        &self.name
    }
    const PLURAL: &'static str = "backends";
    const SINGULAR: &'static str = "backend";
    fn list(config: &Config) -> &Vec<Self> {
        &config.backends
    }
    fn list_mut(config: &mut Config) -> &mut Vec<Self> {
        &mut config.backends
    }
    fn on_rename(config: &mut Config, lb: &str, old: &str, new: Option<&str>) -> ApiResult<()> {
        let users: Vec<String> = config
            .frontends
            .iter()
            .filter(|f| config.lb_of(&f.lb) == lb)
            .filter(|f| f.default_backend == old || f.backends.iter().any(|r| r.backend == old))
            .map(|f| f.name.clone())
            .collect();
        let Some(new) = new else {
            if users.is_empty() {
                return Ok(());
            }
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "in_use",
                format!(
                    "backend {old:?} is used by frontend(s) {}; point them at another backend or delete them first",
                    users.join(", ")
                ),
            ));
        };
        // A renamed backend keeps its frontends.
        let default_lb = config.lb_of(&None).to_string();
        for f in config.frontends.iter_mut() {
            if f.lb.as_deref().unwrap_or(&default_lb) != lb {
                continue;
            }
            if f.default_backend == old {
                f.default_backend = new.to_string();
            }
            for r in f.backends.iter_mut().filter(|r| r.backend == old) {
                r.backend = new.to_string();
            }
        }
        Ok(())
    }
}

impl Kind for Frontend {
    fn lb(&self) -> &Option<String> {
        &self.lb
    }
    fn set_lb(&mut self, lb: Option<String>) {
        self.lb = lb;
    }
    fn name(&self) -> &str {
        &self.name
    }
    const PLURAL: &'static str = "frontends";
    const SINGULAR: &'static str = "frontend";
    fn list(config: &Config) -> &Vec<Self> {
        &config.frontends
    }
    fn list_mut(config: &mut Config) -> &mut Vec<Self> {
        &mut config.frontends
    }
    fn on_rename(_: &mut Config, _: &str, _: &str, _: Option<&str>) -> ApiResult<()> {
        Ok(())
    }
}

fn find<K: Kind>(config: &Config, lb: &str, name: &str) -> Option<usize> {
    K::list(config)
        .iter()
        .position(|e| e.name() == name && config.lb_of(e.lb()) == lb)
}

fn get_entity<K: Kind>(api: &Api, lb: &str, name: &str) -> ApiResult<K> {
    let config = api.config();
    require_lb(&config, lb)?;
    let i = find::<K>(&config, lb, name).ok_or_else(|| {
        ApiError::not_found(&format!("{} {name:?} in load balancer {lb:?}", K::SINGULAR))
    })?;
    Ok(shown(&K::list(&config)[i]))
}

fn list_entities<K: Kind>(api: &Api, lb: &str) -> ApiResult<Vec<K>> {
    let config = api.config();
    require_lb(&config, lb)?;
    Ok(K::list(&config)
        .iter()
        .filter(|e| config.lb_of(e.lb()) == lb)
        .map(shown)
        .collect())
}

/// Names are unique in the daemon, not only per load balancer: the data plane, metrics and
/// health are keyed by name.
fn name_taken<K: Kind>(config: &Config, name: &str, except: Option<usize>) -> ApiResult<()> {
    match K::list(config).iter().position(|e| e.name() == name) {
        Some(i) if Some(i) != except => Err(ApiError::new(
            StatusCode::CONFLICT,
            "name_taken",
            format!(
                "a {} named {name:?} already exists (in load balancer {:?}); names are unique in an lb daemon",
                K::SINGULAR,
                config.lb_of(K::list(config)[i].lb())
            ),
        )
        .field("name")),
        _ => Ok(()),
    }
}

async fn create_entity<K: Kind>(
    api: &Api,
    lb: String,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<K>)> {
    let mut entity: K = parse_body(&body)?;
    let stored = api
        .change(|config| {
            require_lb(config, &lb)?;
            name_taken::<K>(config, entity.name(), None)?;
            entity.set_lb(lb_field(config, &lb));
            let list = K::list_mut(config);
            list.push(entity.clone());
            let prefix = format!("{}[{}]", K::PLURAL, list.len() - 1);
            Ok((shown(&entity), prefix))
        })
        .await?;
    Ok((StatusCode::CREATED, Json(stored)))
}

async fn replace_entity<K: Kind>(
    api: &Api,
    lb: String,
    name: String,
    body: Bytes,
) -> ApiResult<Json<K>> {
    let mut entity: K = parse_body(&body)?;
    let stored = api
        .change(|config| {
            require_lb(config, &lb)?;
            let i = find::<K>(config, &lb, &name).ok_or_else(|| {
                ApiError::not_found(&format!("{} {name:?} in load balancer {lb:?}", K::SINGULAR))
                    .field(format!("{}_name", K::SINGULAR))
            })?;
            name_taken::<K>(config, entity.name(), Some(i))?;
            if entity.name() != name {
                K::on_rename(config, &lb, &name, Some(entity.name()))?;
            }
            entity.set_lb(lb_field(config, &lb));
            K::list_mut(config)[i] = entity.clone();
            Ok((shown(&entity), format!("{}[{i}]", K::PLURAL)))
        })
        .await?;
    Ok(Json(stored))
}

async fn delete_entity<K: Kind>(api: &Api, lb: String, name: String) -> ApiResult<StatusCode> {
    api.change(|config| {
        require_lb(config, &lb)?;
        let i = find::<K>(config, &lb, &name).ok_or_else(|| {
            ApiError::not_found(&format!("{} {name:?} in load balancer {lb:?}", K::SINGULAR))
        })?;
        K::on_rename(config, &lb, &name, None)?;
        K::list_mut(config).remove(i);
        Ok(((), String::new()))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List the load balancers.
#[utoipa::path(get, path = "/v1/lbs", responses((status = 200, body = LbList), (status = 401, body = ErrorBody)), security(("bearer" = [])))]
async fn list_lbs(State(api): Shared) -> Json<LbList> {
    let config = api.config();
    let ids: Vec<String> = if config.lbs.is_empty() {
        vec![DEFAULT_LB.into()]
    } else {
        config.lbs.iter().map(|l| l.id.clone()).collect()
    };
    let lbs = ids
        .iter()
        .filter_map(|id| config.lb(id))
        .map(|lb| lb_view(&config, lb))
        .collect();
    Json(LbList { lbs })
}

/// Create a load balancer.
#[utoipa::path(post, path = "/v1/lbs", request_body = NewLb, responses((status = 201, body = LbView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
async fn create_lb(State(api): Shared, body: Bytes) -> ApiResult<(StatusCode, Json<LbView>)> {
    let new: NewLb = parse_body(&body)?;
    let lb = api
        .change(|config| {
            materialise_lbs(config);
            let id = match new.id {
                Some(id) if id.trim().is_empty() => {
                    return Err(ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "invalid_field",
                        "id must not be empty",
                    )
                    .field("id"));
                }
                Some(id) => id,
                None => (1..)
                    .map(|n: u64| n.to_string())
                    .find(|id| config.lb(id).is_none())
                    .expect("a free id"),
            };
            if config.lb(&id).is_some() {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "id_taken",
                    format!("load balancer {id:?} exists"),
                )
                .field("id"));
            }
            let lb = LoadBalancer {
                id,
                name: new.name,
                description: new.description,
                public_ports: Vec::new(),
            };
            config.lbs.push(lb.clone());
            let prefix = format!("lbs[{}]", config.lbs.len() - 1);
            Ok((lb, prefix))
        })
        .await?;
    let config = api.config();
    Ok((StatusCode::CREATED, Json(lb_view(&config, lb))))
}

/// Get a load balancer.
#[utoipa::path(get, path = "/v1/lbs/{lb_id}", params(("lb_id" = String, Path)), responses((status = 200, body = LbView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn get_lb(State(api): Shared, Path(lb_id): Path<String>) -> ApiResult<Json<LbView>> {
    let config = api.config();
    let lb = require_lb(&config, &lb_id)?;
    Ok(Json(lb_view(&config, lb)))
}

/// Delete an empty load balancer.
#[utoipa::path(delete, path = "/v1/lbs/{lb_id}", params(("lb_id" = String, Path)), responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
async fn delete_lb(State(api): Shared, Path(lb_id): Path<String>) -> ApiResult<StatusCode> {
    api.change(|config| {
        let lb = require_lb(config, &lb_id)?;
        let view = lb_view(config, lb);
        if view.frontends + view.backends > 0 {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_empty",
                format!(
                    "load balancer {lb_id:?} still has {} frontend(s) and {} backend(s); delete them first",
                    view.frontends, view.backends
                ),
            ));
        }
        materialise_lbs(config);
        config.lbs.retain(|l| l.id != lb_id);
        Ok(((), String::new()))
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List a load balancer's backends.
#[utoipa::path(get, path = "/v1/lbs/{lb_id}/backends", params(("lb_id" = String, Path)), responses((status = 200, body = BackendList), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn list_backends(
    State(api): Shared,
    Path(lb_id): Path<String>,
) -> ApiResult<Json<BackendList>> {
    Ok(Json(BackendList {
        backends: list_entities(&api, &lb_id)?,
    }))
}

/// Create a backend.
#[utoipa::path(post, path = "/v1/lbs/{lb_id}/backends", params(("lb_id" = String, Path)), request_body = Backend, responses((status = 201, body = Backend), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
async fn create_backend(
    State(api): Shared,
    Path(lb_id): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Backend>)> {
    create_entity(&api, lb_id, body).await
}

/// Get a backend.
#[utoipa::path(get, path = "/v1/lbs/{lb_id}/backends/{backend_name}", params(("lb_id" = String, Path), ("backend_name" = String, Path)), responses((status = 200, body = Backend), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn get_backend(
    State(api): Shared,
    Path((lb_id, name)): Path<(String, String)>,
) -> ApiResult<Json<Backend>> {
    Ok(Json(get_entity(&api, &lb_id, &name)?))
}

/// Replace a backend; the response echoes what is stored.
#[utoipa::path(put, path = "/v1/lbs/{lb_id}/backends/{backend_name}", params(("lb_id" = String, Path), ("backend_name" = String, Path)), request_body = Backend, responses((status = 200, body = Backend), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
async fn put_backend(
    State(api): Shared,
    Path((lb_id, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Backend>> {
    replace_entity(&api, lb_id, name, body).await
}

/// Delete a backend no frontend uses.
#[utoipa::path(delete, path = "/v1/lbs/{lb_id}/backends/{backend_name}", params(("lb_id" = String, Path), ("backend_name" = String, Path)), responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
async fn delete_backend(
    State(api): Shared,
    Path((lb_id, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    delete_entity::<Backend>(&api, lb_id, name).await
}

/// A backend's servers with their live health, weight and open flows.
#[utoipa::path(get, path = "/v1/lbs/{lb_id}/backends/{backend_name}/servers", params(("lb_id" = String, Path), ("backend_name" = String, Path)), responses((status = 200, body = ServerList), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn backend_servers(
    State(api): Shared,
    Path((lb_id, name)): Path<(String, String)>,
) -> ApiResult<Json<ServerList>> {
    get_entity::<Backend>(&api, &lb_id, &name)?;
    let servers = api
        .servers
        .read()
        .expect("servers lock")
        .get(&name)
        .cloned()
        .unwrap_or_default();
    Ok(Json(ServerList { servers }))
}

/// List a load balancer's frontends.
#[utoipa::path(get, path = "/v1/lbs/{lb_id}/frontends", params(("lb_id" = String, Path)), responses((status = 200, body = FrontendList), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn list_frontends(
    State(api): Shared,
    Path(lb_id): Path<String>,
) -> ApiResult<Json<FrontendList>> {
    Ok(Json(FrontendList {
        frontends: list_entities(&api, &lb_id)?,
    }))
}

/// Create a frontend.
#[utoipa::path(post, path = "/v1/lbs/{lb_id}/frontends", params(("lb_id" = String, Path)), request_body = Frontend, responses((status = 201, body = Frontend), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
async fn create_frontend(
    State(api): Shared,
    Path(lb_id): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Frontend>)> {
    create_entity(&api, lb_id, body).await
}

/// Get a frontend.
#[utoipa::path(get, path = "/v1/lbs/{lb_id}/frontends/{frontend_name}", params(("lb_id" = String, Path), ("frontend_name" = String, Path)), responses((status = 200, body = Frontend), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn get_frontend(
    State(api): Shared,
    Path((lb_id, name)): Path<(String, String)>,
) -> ApiResult<Json<Frontend>> {
    Ok(Json(get_entity(&api, &lb_id, &name)?))
}

/// Replace a frontend.
#[utoipa::path(put, path = "/v1/lbs/{lb_id}/frontends/{frontend_name}", params(("lb_id" = String, Path), ("frontend_name" = String, Path)), request_body = Frontend, responses((status = 200, body = Frontend), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
async fn put_frontend(
    State(api): Shared,
    Path((lb_id, name)): Path<(String, String)>,
    body: Bytes,
) -> ApiResult<Json<Frontend>> {
    replace_entity(&api, lb_id, name, body).await
}

/// Delete a frontend.
#[utoipa::path(delete, path = "/v1/lbs/{lb_id}/frontends/{frontend_name}", params(("lb_id" = String, Path), ("frontend_name" = String, Path)), responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)), security(("bearer" = [])))]
async fn delete_frontend(
    State(api): Shared,
    Path((lb_id, name)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    delete_entity::<Frontend>(&api, lb_id, name).await
}

/// Publish a port: lb hands out the public port (from 32001 up).
#[utoipa::path(post, path = "/v1/lbs/{lb_id}/public_ports", params(("lb_id" = String, Path)), request_body = NewPublicPort, responses((status = 201, body = PublicPortCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
async fn create_public_port(
    State(api): Shared,
    Path(lb_id): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<PublicPortCreated>)> {
    let new: NewPublicPort = parse_body(&body)?;
    if new.port == 0 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            "port must be 1..=65535",
        )
        .field("port"));
    }
    let public_port = api
        .change(|config| {
            require_lb(config, &lb_id)?;
            materialise_lbs(config);
            let lb = config
                .lbs
                .iter()
                .position(|l| l.id == lb_id)
                .expect("checked");
            if config.lbs[lb]
                .public_ports
                .iter()
                .any(|p| p.port == new.port)
            {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "port_taken",
                    format!("port {} is already published", new.port),
                )
                .field("port"));
            }
            let used: Vec<u16> = config
                .lbs
                .iter()
                .flat_map(|l| l.public_ports.iter().map(|p| p.public_port))
                .collect();
            let public_port = (32001..=u16::MAX)
                .find(|p| !used.contains(p))
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::CONFLICT,
                        "exhausted",
                        "every public port is in use",
                    )
                })?;
            config.lbs[lb].public_ports.push(PublicPort {
                port: new.port,
                desc: new.desc,
                public_port,
            });
            Ok((public_port, String::new()))
        })
        .await?;
    Ok((StatusCode::CREATED, Json(PublicPortCreated { public_port })))
}

/// Withdraw a published port; answers `null`.
#[utoipa::path(delete, path = "/v1/lbs/{lb_id}/public_ports", params(("lb_id" = String, Path)), request_body = PublicPortRef, responses((status = 200, description = "null"), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
async fn delete_public_port(
    State(api): Shared,
    Path(lb_id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<()>> {
    let gone: PublicPortRef = parse_body(&body)?;
    api.change(|config| {
        require_lb(config, &lb_id)?;
        materialise_lbs(config);
        let lb = config
            .lbs
            .iter_mut()
            .find(|l| l.id == lb_id)
            .expect("checked");
        let before = lb.public_ports.len();
        lb.public_ports.retain(|p| p.port != gone.port);
        if lb.public_ports.len() == before {
            return Err(
                ApiError::not_found(&format!("published port {}", gone.port)).field("port"),
            );
        }
        Ok(((), String::new()))
    })
    .await?;
    Ok(Json(()))
}

#[derive(OpenApi)]
#[openapi(
    info(title = "lb API", description = "The load balancer's REST API (the OpenScaler object model)."),
    paths(
        list_lbs, create_lb, get_lb, delete_lb,
        list_backends, create_backend, get_backend, put_backend, delete_backend, backend_servers,
        list_frontends, create_frontend, get_frontend, put_frontend, delete_frontend,
        create_public_port, delete_public_port,
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

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

/// Bearer auth: 401 without a known token, 403 when a read-only token tries a change.
async fn authorize(State(api): Shared, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(write) = presented.and_then(|t| api.tokens.check(t.as_bytes())) else {
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

pub fn router(api: Arc<Api>) -> Router {
    let v1 = Router::new()
        .route("/v1/lbs", get(list_lbs).post(create_lb))
        .route("/v1/lbs/{lb_id}", get(get_lb).delete(delete_lb))
        .route(
            "/v1/lbs/{lb_id}/backends",
            get(list_backends).post(create_backend),
        )
        .route(
            "/v1/lbs/{lb_id}/backends/{backend_name}",
            get(get_backend).put(put_backend).delete(delete_backend),
        )
        .route(
            "/v1/lbs/{lb_id}/backends/{backend_name}/servers",
            get(backend_servers),
        )
        .route(
            "/v1/lbs/{lb_id}/frontends",
            get(list_frontends).post(create_frontend),
        )
        .route(
            "/v1/lbs/{lb_id}/frontends/{frontend_name}",
            get(get_frontend).put(put_frontend).delete(delete_frontend),
        )
        .route(
            "/v1/lbs/{lb_id}/public_ports",
            axum::routing::post(create_public_port).delete(delete_public_port),
        )
        .route_layer(middleware::from_fn_with_state(api.clone(), authorize))
        .with_state(api);
    let doc = ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document renders");
    v1.route(
        "/v1/openapi.json",
        get(move || async move { ([(header::CONTENT_TYPE, "application/json")], doc) }),
    )
    .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
}

/// Serve the API on its own thread.
pub fn serve(listen: SocketAddr, api: Arc<Api>) -> Result<()> {
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("api: cannot listen on {listen} ([api] listen)"))?;
    listener.set_nonblocking(true)?;
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("api runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("api listener");
                let _ = axum::serve(listener, router(api)).await;
            });
        })?;
    Ok(())
}

/// Write `config` to `path` atomically: a temporary file beside it, fsync, rename, fsync
/// of the directory. A crash leaves the old file or the new one, never a mix.
pub fn persist(path: &std::path::Path, config: &Config) -> Result<()> {
    use std::io::Write as _;
    let text = toml::to_string(config).context("rendering the config as TOML")?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("lb.toml")
    ));
    let mut file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(b"# Written by lb's REST API; edit it or use the API.\n")?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_persisted_config_reads_back_the_same() {
        let text = include_str!("../../examples/full.toml");
        let config = Config::parse("full.toml", text).unwrap();
        let dir = std::env::temp_dir().join(format!("lb-persist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lb.toml");
        persist(&path, &config).unwrap();
        let again = Config::load(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(again, config);
    }

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
        let e = err("{");
        assert_eq!((e.status, e.field), (StatusCode::BAD_REQUEST, None));
    }
}
