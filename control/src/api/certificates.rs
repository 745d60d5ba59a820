//! `/v1/certificates`: upload (PEM), list, delete.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use utoipa::ToSchema;

use super::error::{ApiError, ApiJson, ErrorBody};
use super::{Actor, ApiState};
use crate::model::CertificateInfo;
use crate::store::NewCertificate;

/// Body of `POST /v1/certificates`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadCertificate {
    /// PEM chain, leaf first.
    #[schema(min_length = 1)]
    pub chain_pem: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) matching the leaf.
    #[schema(min_length = 1)]
    pub key_pem: String,
}

/// Upload a certificate: the chain must parse, the key must match, the leaf must not be
/// expired; the names it serves come from its DNS subjectAltNames.
#[utoipa::path(post, path = "/v1/certificates", tag = "certificates", request_body = UploadCertificate,
    responses((status = 503, body = ErrorBody), (status = 415, body = ErrorBody), (status = 413, body = ErrorBody), (status = 201, body = CertificateInfo), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn create_certificate(
    State(s): State<ApiState>,
    actor: Actor,
    ApiJson(body): ApiJson<UploadCertificate>,
) -> Result<impl IntoResponse, ApiError> {
    let parsed = tenantgate_certs::parse_pem(body.chain_pem.as_bytes(), body.key_pem.as_bytes())
        .map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_certificate",
                e.to_string(),
            )
        })?;
    let sealed_key = s
        .sealing
        .seal(body.key_pem.as_bytes())
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let info = s
        .store
        .add_certificate(
            actor.name(),
            &NewCertificate::new(body.chain_pem, &parsed, sealed_key, "uploaded"),
        )
        .await?;
    let location = format!("/v1/certificates/{}", info.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(info),
    ))
}

/// Every stored certificate (never the keys).
#[utoipa::path(get, path = "/v1/certificates", tag = "certificates",
    responses((status = 503, body = ErrorBody), (status = 200, body = Vec<CertificateInfo>), (status = 401, body = ErrorBody)))]
pub async fn list_certificates(
    State(s): State<ApiState>,
) -> Result<Json<Vec<CertificateInfo>>, ApiError> {
    Ok(Json(s.store.list_certificates().await?))
}

/// Delete a certificate; every proxy stops serving it.
#[utoipa::path(delete, path = "/v1/certificates/{id}", tag = "certificates", params(("id" = String, Path)),
    responses((status = 503, body = ErrorBody), (status = 204), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_certificate(
    State(s): State<ApiState>,
    actor: Actor,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.store.delete_certificate(actor.name(), &id).await?;
    Ok(StatusCode::NO_CONTENT)
}
