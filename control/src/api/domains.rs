//! Custom domains: attach to a tenant, list, read, refresh, block, detach.

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ApiJson, ErrorBody};
use super::{Actor, ApiState};
use crate::model::{Domain, DomainStatus, Page};
use crate::store::DomainFilter;

/// Body of `POST /v1/tenants/{id}/domains`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachDomain {
    /// The merchant's hostname, e.g. `www.shop.com` (Unicode names as A-labels or not).
    #[schema(min_length = 1, max_length = 253)]
    pub hostname: String,
}

/// Query of the domain listings.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DomainQuery {
    /// Only domains with this status (default: all but deleted).
    pub status: Option<DomainStatus>,
    /// The previous page's `next`.
    pub after: Option<String>,
    /// Page size, 1-500 (default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
}

async fn list(
    s: &ApiState,
    tenant_id: Option<String>,
    query: Result<Query<DomainQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<Domain>>, ApiError> {
    let q = super::listing_query(query)?;
    let limit = super::page_limit(q.limit)?;
    let (items, next) = s
        .domains
        .list(&DomainFilter {
            tenant_id,
            status: q.status,
            after: q.after,
            limit,
        })
        .await?;
    Ok(Json(Page {
        items: items.iter().map(|d| d.to_api()).collect(),
        next,
    }))
}

/// Attach a custom domain to a tenant. It is routed once ownership is proven (TXT record or
/// HTTP token, see `verification`), then gets a certificate.
#[utoipa::path(post, path = "/v1/tenants/{id}/domains", tag = "domains", params(("id" = String, Path)), request_body = AttachDomain,
    responses((status = 201, body = Domain), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn attach_domain(
    State(s): State<ApiState>,
    actor: Actor,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<AttachDomain>,
) -> Result<impl IntoResponse, ApiError> {
    let hostname = s.rules.custom_domain(&body.hostname)?;
    let d = s.domains.attach(actor.name(), &id, &hostname).await?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/domains/{}", d.id))],
        Json(d.to_api()),
    ))
}

/// A tenant's custom domains.
#[utoipa::path(get, path = "/v1/tenants/{id}/domains", tag = "domains", params(("id" = String, Path), DomainQuery),
    responses((status = 200, body = Page<Domain>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn list_tenant_domains(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    query: Result<Query<DomainQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<Domain>>, ApiError> {
    list(&s, Some(id), query).await
}

/// All custom domains, ordered by id, a page at a time.
#[utoipa::path(get, path = "/v1/domains", tag = "domains", params(DomainQuery),
    responses((status = 200, body = Page<Domain>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn list_domains(
    State(s): State<ApiState>,
    query: Result<Query<DomainQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<Domain>>, ApiError> {
    list(&s, None, query).await
}

/// One custom domain.
#[utoipa::path(get, path = "/v1/domains/{id}", tag = "domains", params(("id" = String, Path)),
    responses((status = 200, body = Domain), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn get_domain(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<Domain>, ApiError> {
    Ok(Json(s.domains.get(&id).await?.to_api()))
}

/// Detach a custom domain: its route, challenges and certificate leave every proxy at once,
/// and its token no longer counts (attaching again gives a new one).
#[utoipa::path(delete, path = "/v1/domains/{id}", tag = "domains", params(("id" = String, Path)),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn delete_domain(
    State(s): State<ApiState>,
    actor: Actor,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.domains.delete(actor.name(), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Re-check now: ownership, where the domain points, and a failed or queued certificate.
/// Answers at once; the result shows in the domain's status.
#[utoipa::path(post, path = "/v1/domains/{id}/refresh", tag = "domains", params(("id" = String, Path)),
    responses((status = 202, body = Domain), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn refresh_domain(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok((
        StatusCode::ACCEPTED,
        Json(s.domains.refresh(&id).await?.to_api()),
    ))
}

/// Block a domain (operator): not routed, not verified, no certificate.
#[utoipa::path(post, path = "/v1/domains/{id}/block", tag = "domains", params(("id" = String, Path)),
    responses((status = 200, body = Domain), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn block_domain(
    State(s): State<ApiState>,
    actor: Actor,
    Path(id): Path<String>,
) -> Result<Json<Domain>, ApiError> {
    Ok(Json(
        s.domains.block(actor.name(), &id, true).await?.to_api(),
    ))
}

/// Unblock a domain: active again if it was verified, else back to verification.
#[utoipa::path(post, path = "/v1/domains/{id}/unblock", tag = "domains", params(("id" = String, Path)),
    responses((status = 200, body = Domain), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn unblock_domain(
    State(s): State<ApiState>,
    actor: Actor,
    Path(id): Path<String>,
) -> Result<Json<Domain>, ApiError> {
    Ok(Json(
        s.domains.block(actor.name(), &id, false).await?.to_api(),
    ))
}
