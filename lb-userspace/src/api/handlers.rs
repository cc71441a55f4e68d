//! The `/v1` routes and their handlers: load balancers, frontends, backends, servers,
//! status and public ports, over a copy of the running config.

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::{StatusCode, header},
    middleware,
    routing::get,
};
use serde::{Serialize, de::DeserializeOwned};
use utoipa::OpenApi;

use super::{
    auth::{BearerAuth, Tokens, authorize},
    error::{ApiError, ApiResult, ErrorBody, parse_body},
    state::Api,
    types::*,
};
use crate::config::{
    AdminState, Backend, Config, DEFAULT_LB, Frontend, LoadBalancer, PublicPort, Servers,
};

type Shared = State<Arc<Api>>;

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
        .live
        .read()
        .expect("live lock")
        .servers
        .get(&name)
        .cloned()
        .unwrap_or_default();
    Ok(Json(ServerList { servers }))
}

/// The backend and server index `server` (a name or an address) names, for a change.
fn find_server(
    config: &Config,
    lb: &str,
    backend: &str,
    server: &str,
) -> ApiResult<(usize, usize)> {
    require_lb(config, lb)?;
    let i = find::<Backend>(config, lb, backend).ok_or_else(|| {
        ApiError::not_found(&format!("backend {backend:?} in load balancer {lb:?}"))
            .field("backend_name")
    })?;
    match &config.backends[i].servers {
        Servers::Addresses { addresses } => addresses
            .iter()
            .position(|s| s.is(server))
            .map(|j| (i, j))
            .ok_or_else(|| {
                ApiError::not_found(&format!(
                    "server {server:?} (a name or an address) in backend {backend:?}"
                ))
                .field("server")
            }),
        Servers::Computer { .. } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "computer_servers",
            format!(
                "backend {backend:?} lists its servers by computer_ids, which have no settings of their own; list them as addresses to set one"
            ),
        )
        .field("servers")),
    }
}

/// One server's live status, found by name or address.
fn live_server(api: &Api, backend: &str, server: &str) -> Option<ServerStatus> {
    let address = server.parse::<std::net::IpAddr>().ok();
    api.live
        .read()
        .expect("live lock")
        .servers
        .get(backend)?
        .iter()
        .find(|s| {
            s.name.as_deref() == Some(server) || address.is_some_and(|a| s.address.parse() == Ok(a))
        })
        .cloned()
}

/// One server of a backend: its live state, weight and open flows.
#[utoipa::path(get, path = "/v1/lbs/{lb_id}/backends/{backend_name}/servers/{server}", params(("lb_id" = String, Path), ("backend_name" = String, Path), ("server" = String, Path, description = "Its name or address")), responses((status = 200, body = ServerStatus), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn get_server(
    State(api): Shared,
    Path((lb_id, backend, server)): Path<(String, String, String)>,
) -> ApiResult<Json<ServerStatus>> {
    let config = api.config();
    find_server(&config, &lb_id, &backend, &server)?;
    live_server(&api, &backend, &server)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(&format!("server {server:?}")).field("server"))
}

/// Change one server at runtime: its weight, or its state (ready, drain with an optional
/// timeout, maint). Saved to the config file with its comments; answers the server's new
/// live status.
#[utoipa::path(patch, path = "/v1/lbs/{lb_id}/backends/{backend_name}/servers/{server}", params(("lb_id" = String, Path), ("backend_name" = String, Path), ("server" = String, Path, description = "Its name or address")), request_body = ServerPatch, responses((status = 200, body = ServerStatus), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)), security(("bearer" = [])))]
async fn patch_server(
    State(api): Shared,
    Path((lb_id, backend, server)): Path<(String, String, String)>,
    body: Bytes,
) -> ApiResult<Json<ServerStatus>> {
    let patch: ServerPatch = parse_body(&body)?;
    if patch.weight.is_none() && patch.state.is_none() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "empty_patch",
            "nothing to change: give weight, state or both",
        ));
    }
    if patch.drain_timeout.is_some() && patch.state != Some(AdminState::Drain) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid",
            "drain_timeout goes with state \"drain\"",
        )
        .field("drain_timeout"));
    }
    api.change(|config| {
        let (i, j) = find_server(config, &lb_id, &backend, &server)?;
        let Servers::Addresses { addresses } = &mut config.backends[i].servers else {
            unreachable!("find_server answers only for addresses");
        };
        let s = &mut addresses[j];
        if let Some(weight) = patch.weight {
            s.weight = weight;
        }
        if let Some(state) = patch.state {
            s.state = (state != AdminState::Ready).then_some(state);
            s.drain_timeout = patch.drain_timeout;
            // The timeout's clock, saved so a restart does not start it again.
            s.drain_started = patch.drain_timeout.map(|_| std::time::SystemTime::now());
        }
        Ok(((), format!("backends[{i}].servers.addresses[{j}]")))
    })
    .await?;
    live_server(&api, &backend, &server)
        .map(Json)
        .ok_or_else(|| ApiError::not_found(&format!("server {server:?}")).field("server"))
}

/// The status of a load balancer: its frontends with open flows, totals and rates, its
/// backends' servers with configured and effective weight, health and open flows.
#[utoipa::path(get, path = "/v1/lbs/{lb_id}/status", params(("lb_id" = String, Path)), responses((status = 200, body = Status), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)), security(("bearer" = [])))]
async fn lb_status(State(api): Shared, Path(lb_id): Path<String>) -> ApiResult<Json<Status>> {
    let config = api.config();
    require_lb(&config, &lb_id)?;
    let live = api.live.read().expect("live lock").clone();
    let mut status = Status {
        lb: lb_id.clone(),
        conntrack_entries: live.conntrack_entries,
        conntrack_capacity: live.conntrack_capacity,
        ha: live.ha.clone(),
        xdp: live.xdp.clone(),
        ..Status::default()
    };
    for f in config
        .frontends
        .iter()
        .filter(|f| config.lb_of(&f.lb) == lb_id)
    {
        let mut shown = live.frontends.get(&f.name).cloned().unwrap_or_default();
        shown.name = f.name.clone();
        status.frontends.push(shown);
    }
    for b in config
        .backends
        .iter()
        .filter(|b| config.lb_of(&b.lb) == lb_id)
    {
        let servers = live.servers.get(&b.name).cloned().unwrap_or_default();
        status.backends.push(BackendStatus {
            backend: b.name.clone(),
            mode: b.mode.to_string(),
            servers_up: servers.iter().filter(|s| s.up).count(),
            servers: servers.len(),
        });
        status.servers.extend(servers);
    }
    Ok(Json(status))
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
        list_backends, create_backend, get_backend, put_backend, delete_backend, backend_servers, get_server, patch_server, lb_status,
        list_frontends, create_frontend, get_frontend, put_frontend, delete_frontend,
        create_public_port, delete_public_port,
    ),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

pub fn router(api: Arc<Api>, tokens: Arc<Tokens>) -> Router {
    let v1 = Router::new()
        .route("/v1/lbs", get(list_lbs).post(create_lb))
        .route("/v1/lbs/{lb_id}", get(get_lb).delete(delete_lb))
        .route("/v1/lbs/{lb_id}/status", get(lb_status))
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
            "/v1/lbs/{lb_id}/backends/{backend_name}/servers/{server}",
            get(get_server).patch(patch_server),
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
        .route_layer(middleware::from_fn_with_state(tokens, authorize))
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
