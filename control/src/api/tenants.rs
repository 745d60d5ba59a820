//! `/v1/tenants`: create (with upstreams, or provisioned from a blueprint), list, read,
//! rename, delete, upstreams, suspend, resume and redeploy.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ApiJson, ErrorBody};
use super::{Actor, ApiState};
use crate::model::{Page, Tenant, TenantStatus};
use crate::store::{NewTenant, TenantFilter};
use tenantgate_config::Limits;

/// Body of `POST /v1/tenants`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// 1-63 lowercase letters, digits, inner hyphens; the tenant gets `<slug>.<platform domain>`.
    #[schema(
        pattern = "^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$",
        min_length = 1,
        max_length = 63
    )]
    pub slug: String,
    /// Display name.
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// Backends as `ip:port` (IPv6 as `[::1]:80`). Give either `upstreams` or `blueprint`.
    #[schema(min_items = 1, max_items = 64)]
    pub upstreams: Option<Vec<String>>,
    /// Provision the tenant from this blueprint (database, containers, route): the answer
    /// is 202 with status `provisioning`, then the tenant becomes `active` or `failed`.
    #[schema(min_length = 1, max_length = 40)]
    pub blueprint: Option<String>,
    /// Theme of the blueprint (default: the blueprint's default theme).
    #[schema(min_length = 1, max_length = 40)]
    pub theme: Option<String>,
    /// Give the tenant this plan's limits (a key of the config's `[plans]`).
    #[schema(min_length = 1, max_length = 63)]
    pub plan: Option<String>,
}

/// Body of `POST /v1/tenants/{id}/scale`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    /// Component of the tenant's blueprint.
    #[schema(min_length = 1, max_length = 40)]
    pub component: String,
    /// Containers to run, 1-20.
    #[schema(minimum = 1, maximum = 20)]
    pub replicas: u32,
}

/// Body of `POST /v1/tenants/{id}/redeploy`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Redeploy {
    /// Switch to this theme (default: keep the current one).
    #[schema(min_length = 1, max_length = 40)]
    pub theme: Option<String>,
}

/// Body of `PATCH /v1/tenants/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchTenant {
    /// New display name.
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
    /// Switch to this plan (a key of the config's `[plans]`); `null`: no plan.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, min_length = 1, max_length = 63)]
    pub plan: Option<Option<String>>,
    /// Freeze the store's containers after this many seconds without traffic (1-2592000);
    /// `null`: never. Provisioned tenants only; absent: unchanged.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 2592000)]
    pub idle_pause_seconds: Option<Option<u64>>,
    /// Stop them after this many seconds without traffic (longer than the pause); `null`:
    /// never.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u64>, minimum = 1, maximum = 2592000)]
    pub idle_stop_seconds: Option<Option<u64>>,
}

/// A field that may be given as `null`: `Some(None)`, told apart from an absent one (`None`).
fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// The plan `name`, if the config has it.
fn known_plan(s: &ApiState, name: &str) -> Result<String, ApiError> {
    if s.store.plans().contains_key(name) {
        return Ok(name.to_owned());
    }
    let known: Vec<&str> = s.store.plans().keys().map(String::as_str).collect();
    Err(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "unknown_plan",
        if known.is_empty() {
            format!("plan {name:?} is not in the config (it defines no [plans])")
        } else {
            format!(
                "plan {name:?} is not in the config; known: {}",
                known.join(", ")
            )
        },
    ))
}

/// Body of `PUT /v1/tenants/{id}/upstreams`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutUpstreams {
    /// Backends as `ip:port`, replacing the current list.
    #[schema(min_items = 1, max_items = 64)]
    pub upstreams: Vec<String>,
}

/// Query of `GET /v1/tenants`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// `provisioning`, `active` (awake), `paused`, `sleeping`, `waking`, `suspended`,
    /// `failed` or `deleted` (default: all but deleted).
    pub status: Option<TenantStatus>,
    /// Only the tenant serving this hostname.
    #[param(min_length = 1, max_length = 253)]
    pub hostname: Option<String>,
    /// The previous page's `next`.
    pub after: Option<String>,
    /// Page size, 1-500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
}

/// Create a tenant: routed to the given upstreams at once (201), or provisioned from a
/// blueprint (202: `provisioning`, then `active` or `failed`; follow `GET /v1/tenants/{id}`).
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", request_body = CreateTenant,
    responses((status = 415, body = ErrorBody), (status = 413, body = ErrorBody), (status = 201, body = Tenant), (status = 202, body = Tenant), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn create_tenant(
    State(s): State<ApiState>,
    actor: Actor,
    ApiJson(body): ApiJson<CreateTenant>,
) -> Result<impl IntoResponse, ApiError> {
    let platform_hostname = s.rules.slug(&body.slug)?;
    let name = s.rules.name(&body.name)?;
    let (upstreams, blueprint) = match (&body.upstreams, &body.blueprint) {
        (Some(u), None) if body.theme.is_none() => (s.rules.upstreams(u)?, None),
        (None, Some(b)) => {
            let theme = s.lifecycle.admit(b, body.theme.as_deref()).await?;
            (Vec::new(), Some((b.clone(), theme)))
        }
        (Some(_), Some(_)) => return Err(invalid("give either upstreams or blueprint, not both")),
        (Some(_), None) => return Err(invalid("theme goes with blueprint")),
        (None, None) => return Err(invalid("give upstreams, or a blueprint to provision from")),
    };
    let plan = body
        .plan
        .as_deref()
        .map(|p| known_plan(&s, p))
        .transpose()?;
    let provision = blueprint.is_some();
    let tenant = s
        .store
        .create_tenant(
            actor.name(),
            &NewTenant {
                slug: body.slug,
                name,
                platform_hostname,
                upstreams,
                blueprint,
                plan,
            },
        )
        .await?;
    let location = format!("/v1/tenants/{}", tenant.id);
    let status = if provision {
        tokio::spawn(s.lifecycle.clone().provision(tenant.id.clone()));
        StatusCode::ACCEPTED
    } else {
        StatusCode::CREATED
    };
    Ok((status, [(header::LOCATION, location)], Json(tenant)))
}

fn invalid(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", message)
}

/// List tenants, ordered by id, a page at a time.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants", params(ListQuery),
    responses((status = 503, body = ErrorBody), (status = 200, body = Page<Tenant>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list_tenants(
    State(s): State<ApiState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<Tenant>>, ApiError> {
    let q = super::listing_query(query)?;
    let hostname = match q.hostname {
        Some(h) => Some(tenantgate_config::host::normalize(&h).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("hostname {h:?}: {e}"),
            )
        })?),
        None => None,
    };
    let limit = super::page_limit(q.limit)?;
    let page = s
        .store
        .list_tenants(&TenantFilter {
            search: None,
            status: q.status,
            hostname,
            after: q.after,
            limit,
        })
        .await?;
    let mut page = page;
    for t in &mut page.items {
        s.lifecycle.show_sleep_policy(t);
    }
    Ok(Json(page))
}

/// One tenant.
#[utoipa::path(get, path = "/v1/tenants/{id}", tag = "tenants", params(("id" = String, Path)),
    responses((status = 503, body = ErrorBody), (status = 200, body = Tenant), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_tenant(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Tenant>, ApiError> {
    let mut tenant = s.store.get_tenant(&id).await?;
    s.lifecycle.show_sleep_policy(&mut tenant);
    Ok(Json(tenant))
}

/// Change a tenant's display name, plan or idle periods (stores that sleep).
#[utoipa::path(patch, path = "/v1/tenants/{id}", tag = "tenants", params(("id" = String, Path)), request_body = PatchTenant,
    responses((status = 503, body = ErrorBody), (status = 415, body = ErrorBody), (status = 413, body = ErrorBody), (status = 400, body = ErrorBody), (status = 200, body = Tenant), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn patch_tenant(
    State(s): State<ApiState>,
    actor: Actor,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PatchTenant>,
) -> Result<Json<Tenant>, ApiError> {
    let name = body.name.map(|n| s.rules.name(&n)).transpose()?;
    let plan = match body.plan {
        Some(Some(p)) => Some(Some(known_plan(&s, &p)?)),
        other => other,
    };
    let sleep = match (body.idle_pause_seconds, body.idle_stop_seconds) {
        (None, None) => None,
        (pause, stop) => Some(sleep_policy(&s, &id, pause, stop).await?),
    };
    let mut tenant = if name.is_none() && plan.is_none() && sleep.is_none() {
        s.store.get_tenant(&id).await?
    } else {
        let plan = plan.as_ref().map(|p| p.as_deref());
        s.store
            .patch_tenant(actor.name(), &id, name.as_deref(), plan, sleep)
            .await?
    };
    s.lifecycle.show_sleep_policy(&mut tenant);
    Ok(Json(tenant))
}

/// The idle periods tenant `id` gets from a PATCH: the given ones over those in force now
/// (its own, else its blueprint's), checked. 422 for a hand-made tenant.
async fn sleep_policy(
    s: &ApiState,
    id: &str,
    pause: Option<Option<u64>>,
    stop: Option<Option<u64>>,
) -> Result<crate::store::sleep::SleepPolicy, ApiError> {
    let mut now = s.store.get_tenant(id).await?;
    if now.blueprint.is_none() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "not_provisioned",
            format!("tenant {id:?} was not provisioned from a blueprint: its upstreams are given by hand and never sleep"),
        ));
    }
    s.lifecycle.show_sleep_policy(&mut now);
    let policy = crate::store::sleep::SleepPolicy {
        idle_pause_seconds: pause.unwrap_or(now.idle_pause_seconds),
        idle_stop_seconds: stop.unwrap_or(now.idle_stop_seconds),
    };
    crate::blueprint::check_idle(policy.idle_pause_seconds, policy.idle_stop_seconds).map_err(
        |(key, why)| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_sleep_policy",
                format!("{key}: {why}"),
            )
        },
    )?;
    Ok(policy)
}

/// A tenant's own traffic limits (those it has beyond its plan's): what `PUT` set.
#[utoipa::path(get, path = "/v1/tenants/{id}/limits", tag = "tenants", params(("id" = String, Path)),
    responses((status = 503, body = ErrorBody), (status = 200, body = Limits), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_limits(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Limits>, ApiError> {
    Ok(Json(s.store.get_tenant(&id).await?.limits))
}

/// Replace a tenant's own traffic limits (every field optional; `{}` removes them). They win
/// over its plan's field by field, hold per proxy node, and apply on every proxy as soon as
/// the change reaches it, without a reload.
#[utoipa::path(put, path = "/v1/tenants/{id}/limits", tag = "tenants", params(("id" = String, Path)), request_body = Limits,
    responses((status = 503, body = ErrorBody), (status = 415, body = ErrorBody), (status = 413, body = ErrorBody), (status = 400, body = ErrorBody), (status = 200, body = Limits), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn put_limits(
    State(s): State<ApiState>,
    actor: Actor,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Limits>,
) -> Result<Json<Limits>, ApiError> {
    if let Some((field, reason)) = body.problems().into_iter().next() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_limits",
            format!("{field}: {reason}"),
        ));
    }
    Ok(Json(
        s.store.set_limits(actor.name(), &id, &body).await?.limits,
    ))
}

/// 409 for redeploying or scaling a tenant that has upstreams of its own.
fn not_provisioned(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "not_provisioned",
        format!("tenant {id:?} was not provisioned from a blueprint"),
    )
}

/// Whether tenant `id` runs from a blueprint (and so needs the container runtime).
async fn provisioned(s: &ApiState, id: &str) -> Result<bool, ApiError> {
    Ok(s.store.get_tenant(id).await?.blueprint.is_some())
}

/// Delete a tenant: it stops routing on every proxy and its hostnames are released; a
/// provisioned tenant's containers and network are removed, and its schema and role per
/// `[provisioning] retention`.
#[utoipa::path(delete, path = "/v1/tenants/{id}", tag = "tenants", params(("id" = String, Path)),
    responses((status = 503, body = ErrorBody), (status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_tenant(
    State(s): State<ApiState>,
    actor: Actor,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if provisioned(&s, &id).await? {
        s.lifecycle.ready().await?;
        s.lifecycle.delete(actor.name(), &id).await?;
    } else {
        s.store.delete_tenant(actor.name(), &id).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Replace a tenant's upstreams.
#[utoipa::path(put, path = "/v1/tenants/{id}/upstreams", tag = "tenants", params(("id" = String, Path)), request_body = PutUpstreams,
    responses((status = 503, body = ErrorBody), (status = 415, body = ErrorBody), (status = 413, body = ErrorBody), (status = 400, body = ErrorBody), (status = 200, body = Tenant), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn put_upstreams(
    State(s): State<ApiState>,
    actor: Actor,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PutUpstreams>,
) -> Result<Json<Tenant>, ApiError> {
    let upstreams = s.rules.upstreams(&body.upstreams)?;
    Ok(Json(
        s.store.set_upstreams(actor.name(), &id, &upstreams).await?,
    ))
}

/// Suspend a tenant: its hostnames answer the proxy's 503 page (at once, on every proxy)
/// and a provisioned tenant's containers are stopped.
#[utoipa::path(post, path = "/v1/tenants/{id}/suspend", tag = "tenants", params(("id" = String, Path)),
    responses((status = 503, body = ErrorBody), (status = 200, body = Tenant), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn suspend_tenant(
    State(s): State<ApiState>,
    actor: Actor,
    Path(id): Path<String>,
) -> Result<Json<Tenant>, ApiError> {
    if provisioned(&s, &id).await? {
        s.lifecycle.ready().await?;
        return Ok(Json(s.lifecycle.suspend(actor.name(), &id).await?));
    }
    Ok(Json(
        s.store
            .set_status(actor.name(), &id, TenantStatus::Suspended)
            .await?,
    ))
}

/// Resume a suspended tenant; a provisioned tenant's containers are started and healthy
/// before its hostnames route to them again.
#[utoipa::path(post, path = "/v1/tenants/{id}/resume", tag = "tenants", params(("id" = String, Path)),
    responses((status = 503, body = ErrorBody), (status = 200, body = Tenant), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn resume_tenant(
    State(s): State<ApiState>,
    actor: Actor,
    Path(id): Path<String>,
) -> Result<Json<Tenant>, ApiError> {
    if provisioned(&s, &id).await? {
        s.lifecycle.ready().await?;
        return Ok(Json(s.lifecycle.resume(actor.name(), &id).await?));
    }
    Ok(Json(
        s.store
            .set_status(actor.name(), &id, TenantStatus::Active)
            .await?,
    ))
}

/// Redeploy a provisioned tenant blue/green (picking up blueprint changes, optionally a new
/// theme): the new generation starts beside the current one and, once healthy, takes over
/// the route in one step; the old one is drained and removed. 202; progress in the events.
#[utoipa::path(post, path = "/v1/tenants/{id}/redeploy", tag = "tenants", params(("id" = String, Path)), request_body = Redeploy,
    responses((status = 503, body = ErrorBody), (status = 415, body = ErrorBody), (status = 413, body = ErrorBody), (status = 400, body = ErrorBody), (status = 202, body = Tenant), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn redeploy_tenant(
    State(s): State<ApiState>,
    actor: Actor,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Redeploy>,
) -> Result<(StatusCode, Json<Tenant>), ApiError> {
    let tenant = s.store.get_tenant(&id).await?;
    let Some(blueprint) = &tenant.blueprint else {
        return Err(not_provisioned(&id));
    };
    if !tenant.status.is_active() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "tenant {id:?} is {}: only active tenants are redeployed",
                tenant.status.as_str()
            ),
        ));
    }
    let theme = match &body.theme {
        Some(t) => Some(s.lifecycle.admit(blueprint, Some(t)).await?),
        None => {
            s.lifecycle.ready().await?;
            None
        }
    };
    s.store
        .record(
            actor.name(),
            "tenant.redeploy",
            &id,
            serde_json::json!({"theme": theme}),
        )
        .await?;
    tokio::spawn(s.lifecycle.clone().redeploy(id, theme));
    Ok((StatusCode::ACCEPTED, Json(tenant)))
}

/// Run this many containers of one component of a provisioned tenant. Answers once they
/// run and are routed: new ones are healthy before they take traffic, removed ones leave the
/// route before they stop.
#[utoipa::path(post, path = "/v1/tenants/{id}/scale", tag = "tenants", params(("id" = String, Path)), request_body = Scale,
    responses((status = 503, body = ErrorBody), (status = 415, body = ErrorBody), (status = 413, body = ErrorBody), (status = 400, body = ErrorBody), (status = 200, body = Tenant), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn scale_tenant(
    State(s): State<ApiState>,
    actor: Actor,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<Scale>,
) -> Result<Json<Tenant>, ApiError> {
    if !provisioned(&s, &id).await? {
        return Err(not_provisioned(&id));
    }
    s.lifecycle
        .scale(actor.name(), &id, &body.component, body.replicas)
        .await?;
    Ok(Json(s.store.get_tenant(&id).await?))
}
