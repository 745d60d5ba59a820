//! `/v1/tenants`: create, list, read, rename, delete, upstreams, suspend and resume.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ApiJson, ErrorBody};
use super::{ApiState, ACTOR};
use crate::model::{Page, Tenant, TenantStatus};
use crate::store::{NewTenant, TenantFilter};

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
    /// Backends as `ip:port` (IPv6 as `[::1]:80`).
    #[schema(min_items = 1, max_items = 64)]
    pub upstreams: Vec<String>,
}

/// Body of `PATCH /v1/tenants/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchTenant {
    /// New display name.
    #[schema(min_length = 1, max_length = 200)]
    pub name: Option<String>,
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
    /// `active`, `suspended` or `deleted` (default: all but deleted).
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

/// Create a tenant.
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", request_body = CreateTenant,
    responses((status = 415, body = ErrorBody), (status = 413, body = ErrorBody), (status = 201, body = Tenant), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn create_tenant(
    State(s): State<ApiState>,
    ApiJson(body): ApiJson<CreateTenant>,
) -> Result<impl IntoResponse, ApiError> {
    let platform_hostname = s.rules.slug(&body.slug)?;
    let name = s.rules.name(&body.name)?;
    let upstreams = s.rules.upstreams(&body.upstreams)?;
    let tenant = s
        .store
        .create_tenant(
            ACTOR,
            &NewTenant {
                slug: body.slug,
                name,
                platform_hostname,
                upstreams,
            },
        )
        .await?;
    let location = format!("/v1/tenants/{}", tenant.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(tenant),
    ))
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
            status: q.status,
            hostname,
            after: q.after,
            limit,
        })
        .await?;
    Ok(Json(page))
}

/// One tenant.
#[utoipa::path(get, path = "/v1/tenants/{id}", tag = "tenants", params(("id" = String, Path)),
    responses((status = 503, body = ErrorBody), (status = 200, body = Tenant), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_tenant(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Tenant>, ApiError> {
    Ok(Json(s.store.get_tenant(&id).await?))
}

/// Change a tenant's display name.
#[utoipa::path(patch, path = "/v1/tenants/{id}", tag = "tenants", params(("id" = String, Path)), request_body = PatchTenant,
    responses((status = 503, body = ErrorBody), (status = 415, body = ErrorBody), (status = 413, body = ErrorBody), (status = 400, body = ErrorBody), (status = 200, body = Tenant), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn patch_tenant(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PatchTenant>,
) -> Result<Json<Tenant>, ApiError> {
    let Some(name) = body.name else {
        return Ok(Json(s.store.get_tenant(&id).await?));
    };
    let name = s.rules.name(&name)?;
    Ok(Json(s.store.rename_tenant(ACTOR, &id, &name).await?))
}

/// Delete a tenant: it stops routing on every proxy and its hostnames are released.
#[utoipa::path(delete, path = "/v1/tenants/{id}", tag = "tenants", params(("id" = String, Path)),
    responses((status = 503, body = ErrorBody), (status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_tenant(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.store.delete_tenant(ACTOR, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replace a tenant's upstreams.
#[utoipa::path(put, path = "/v1/tenants/{id}/upstreams", tag = "tenants", params(("id" = String, Path)), request_body = PutUpstreams,
    responses((status = 503, body = ErrorBody), (status = 415, body = ErrorBody), (status = 413, body = ErrorBody), (status = 400, body = ErrorBody), (status = 200, body = Tenant), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn put_upstreams(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PutUpstreams>,
) -> Result<Json<Tenant>, ApiError> {
    let upstreams = s.rules.upstreams(&body.upstreams)?;
    Ok(Json(s.store.set_upstreams(ACTOR, &id, &upstreams).await?))
}

/// Suspend a tenant: its hostnames answer the proxy's 503 page.
#[utoipa::path(post, path = "/v1/tenants/{id}/suspend", tag = "tenants", params(("id" = String, Path)),
    responses((status = 503, body = ErrorBody), (status = 200, body = Tenant), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn suspend_tenant(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Tenant>, ApiError> {
    Ok(Json(
        s.store
            .set_status(ACTOR, &id, TenantStatus::Suspended)
            .await?,
    ))
}

/// Resume a suspended tenant.
#[utoipa::path(post, path = "/v1/tenants/{id}/resume", tag = "tenants", params(("id" = String, Path)),
    responses((status = 503, body = ErrorBody), (status = 200, body = Tenant), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn resume_tenant(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Tenant>, ApiError> {
    Ok(Json(
        s.store.set_status(ACTOR, &id, TenantStatus::Active).await?,
    ))
}
