//! The overview, domains, certificates, audit log and fleet pages.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Extension;
use maud::html;
use serde::Deserialize;

use super::layout::{badge, error_page, notice, page, when};
use super::{html_response, urlencode};
use crate::api::certificates::UploadCertificate;
use crate::api::{certificates as api_certificates, Actor, ApiJson, ApiState};
use crate::model::{DomainStatus, TenantStatus};
use crate::store::operators::Session;
use crate::store::DomainFilter;

/// Certificates expiring within this many days are shown amber.
const EXPIRY_WARN_DAYS: i64 = 14;

fn now_s() -> i64 {
    crate::now_ms() / 1000
}

/// `/`: stores by status, certificates that expire soon, domains that need action, the
/// fleet and the newest events.
pub(super) async fn overview(
    State(s): State<ApiState>,
    Extension(who): Extension<Session>,
) -> Response {
    let counts = s.store.count_tenants().await;
    let expiring = s
        .store
        .expiring_certificates(now_s() + EXPIRY_WARN_DAYS * 86_400, 20)
        .await;
    let (counts, expiring) = match (counts, expiring) {
        (Ok(c), Ok(e)) => (c, e),
        (Err(e), _) | (_, Err(e)) => return error_page(&e.into()),
    };
    let attention: Vec<_> = s
        .store
        .domains_needing_action(20)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.to_api())
        .collect();
    let within = i64::try_from(crate::upkeep::LIVE_WITHIN.as_millis()).unwrap_or(i64::MAX);
    let nodes = s.store.nodes(within).await.unwrap_or_default();
    let events = s.store.audit_events(10).await.unwrap_or_default();
    let traffic = super::chart::of(&s.store, None).await;
    let total: i64 = counts.iter().map(|(_, n)| n).sum();
    let count = |st: TenantStatus| counts.iter().find(|(s, _)| *s == st).map_or(0, |(_, n)| *n);
    let now = now_s();
    let body = html! {
        div.heading { h1 { "Overview" } }
        section.tiles {
            a.tile href="/stores" { span.num { (total) } span.label { "stores" } }
            @for st in [TenantStatus::Active, TenantStatus::Paused, TenantStatus::Sleeping, TenantStatus::Provisioning, TenantStatus::Suspended, TenantStatus::Failed] {
                a class={"tile " (st.as_str())} href={"/stores?status=" (st.as_str())} {
                    span.num { (count(st)) } span.label { (st.as_str()) }
                }
            }
            a.tile href="/fleet" {
                span.num { (nodes.iter().filter(|n| n.live).count()) "/" (nodes.len()) }
                span.label { "nodes live" }
            }
        }
        section.card {
            div.heading {
                h2 { "Platform traffic, last hour" }
                @if let Ok((_, sum)) = &traffic {
                    p.muted.small #traffic-summary {
                        (format!("{:.1}", sum.rate)) " req/s · "
                        (format!("{:.2}", sum.errors * 100.0)) "% 5xx · p95 "
                        (sum.p95.map_or("—".to_owned(), |p| format!("{p} ms")))
                        " (last 5 min)"
                    }
                }
            }
            div #traffic data-traffic="/live/traffic" {
                @match &traffic {
                    Ok((charts, _)) => (charts),
                    Err(e) => p.notice.bad { "Traffic is not available: " (e) },
                }
            }
        }
        div.grid {
            section.card {
                h2 { "Certificates expiring" }
                @if expiring.is_empty() { p.muted { "None within " (EXPIRY_WARN_DAYS) " days." } }
                @else {
                    table.list.compact {
                        thead { tr { th { "Names" } th { "Expires" } th { "Source" } } }
                        tbody { @for c in &expiring {
                            @let expired = time_s(&c.not_after).is_some_and(|t| t < now);
                            tr class=(if expired { "row-bad" } else { "row-warn" }) {
                                td { (c.names.join(", ")) }
                                td { (when(&c.not_after)) " " (badge(if expired { "expired" } else { "renewing" })) }
                                td { (c.source) }
                            }
                        } }
                    }
                }
            }
            section.card {
                h2 { "Domains that need action" }
                @if attention.is_empty() { p.muted { "Every custom domain is active." } }
                @else {
                    table.list.compact {
                        thead { tr { th { "Domain" } th { "Status" } th { "Certificate" } th { "Since" } } }
                        tbody { @for d in &attention { tr {
                            td { a href={"/stores/" (d.tenant_id)} { (d.hostname) } }
                            td { (badge(d.status.as_str())) }
                            td { (badge(d.ssl.status.as_str())) }
                            td { (when(&d.updated_at)) }
                        } } }
                    }
                }
            }
        }
        section.card {
            h2 { "Newest events" }
            (audit_table(&events))
            p { a href="/audit" { "The whole audit log →" } }
        }
    };
    html_response(StatusCode::OK, page("Overview", "Overview", &who, body))
}

/// Unix seconds of an RFC 3339 time.
fn time_s(rfc3339: &str) -> Option<i64> {
    time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(time::OffsetDateTime::unix_timestamp)
}

fn audit_table(events: &[crate::model::AuditEvent]) -> maud::Markup {
    html! {
        @if events.is_empty() { p.muted { "Nothing yet." } }
        @else {
            table.list.compact {
                thead { tr { th { "When" } th { "Who" } th { "What" } th { "Object" } } }
                tbody { @for e in events { tr {
                    td { (when(&e.at)) }
                    td { a href={"/audit?actor=" (urlencode(&e.actor))} { (e.actor) } }
                    td { code { (e.action) } }
                    td { a href={"/audit?target=" (urlencode(&e.target))} { (e.target) } }
                } } }
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct DomainsQuery {
    status: Option<String>,
    after: Option<String>,
}

/// `/domains`: every custom domain with its status, certificate and reason.
pub(super) async fn domains(
    State(s): State<ApiState>,
    Extension(who): Extension<Session>,
    Query(q): Query<DomainsQuery>,
) -> Response {
    let status = q.status.as_deref().and_then(DomainStatus::parse);
    let (list, next) = match s
        .store
        .list_domains(&DomainFilter {
            status,
            after: q.after.clone(),
            limit: 100,
            ..DomainFilter::default()
        })
        .await
    {
        Ok(r) => r,
        Err(e) => return error_page(&e.into()),
    };
    let body = html! {
        div.heading { h1 { "Domains" } }
        form.filters method="get" action="/domains" {
            label for="status" { "Status" }
            select #status name="status" {
                option value="" { "any" }
                @for st in DomainStatus::ALL {
                    option value=(st.as_str()) selected[status == Some(st)] { (st.as_str()) }
                }
            }
            button type="submit" { "Filter" }
        }
        @if list.is_empty() { p.empty { "No custom domain." } }
        @else {
            table.list {
                thead { tr { th { "Domain" } th { "Status" } th { "Certificate" } th { "Expires" } th { "Reason" } th { "Updated" } } }
                tbody { @for d in &list {
                    @let d = d.to_api();
                    tr {
                        td { a href={"/stores/" (d.tenant_id)} { (d.hostname) } }
                        td { (badge(d.status.as_str())) }
                        td { (badge(d.ssl.status.as_str())) }
                        td { @if let Some(na) = &d.ssl.not_after { (when(na)) } @else { "—" } }
                        td.small { (d.errors.iter().chain(&d.ssl.errors).cloned().collect::<Vec<_>>().join("; ")) }
                        td { (when(&d.updated_at)) }
                    }
                } }
            }
        }
        @if let Some(n) = next {
            p.pager { a href={"/domains?status=" (status.map_or("", |s| s.as_str())) "&after=" (urlencode(&n))} { "Next page →" } }
        }
    };
    html_response(StatusCode::OK, page("Domains", "Domains", &who, body))
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct NoticeQuery {
    done: Option<String>,
    error: Option<String>,
}

/// `/certificates`: the inventory and the PEM upload form.
pub(super) async fn certificates(
    State(s): State<ApiState>,
    Extension(who): Extension<Session>,
    Query(q): Query<NoticeQuery>,
) -> Response {
    let list = match s.store.list_certificates().await {
        Ok(l) => l,
        Err(e) => return error_page(&e.into()),
    };
    let now = now_s();
    let body = html! {
        div.heading { h1 { "Certificates" } }
        (notice(q.done.as_deref()))
        @if let Some(e) = &q.error { p.notice.bad role="alert" { (e) } }
        @if list.is_empty() { p.empty { "No stored certificate." } }
        @else {
            table.list {
                thead { tr { th { "Names" } th { "Issuer" } th { "Expires" } th { "Source" } th {} } }
                tbody { @for c in &list {
                    @let left = time_s(&c.not_after).map(|t| t - now);
                    @let tone = match left { Some(l) if l < 0 => "row-bad", Some(l) if l < EXPIRY_WARN_DAYS * 86_400 => "row-warn", _ => "" };
                    tr class=(tone) {
                        td { (c.names.join(", ")) }
                        td.small { (c.issuer) }
                        td { (when(&c.not_after)) }
                        td { (c.source) }
                        td { @if c.source == "uploaded" {
                            form.inline method="post" action={"/certificates/" (c.id) "/delete"} {
                                input type="hidden" name="csrf" value=(who.csrf);
                                button.danger.small type="submit" aria-label={"Delete the certificate for " (c.names.join(", "))} { "Delete" }
                            }
                        } }
                    }
                } }
            }
        }
        section.card {
            h2 { "Upload a certificate" }
            form.stack method="post" action="/certificates" {
                input type="hidden" name="csrf" value=(who.csrf);
                div.field {
                    label for="chain_pem" { "Certificate chain (PEM, leaf first)" }
                    textarea #chain_pem name="chain_pem" rows="6" required placeholder="-----BEGIN CERTIFICATE-----" {}
                }
                div.field {
                    label for="key_pem" { "Private key (PEM)" }
                    textarea #key_pem name="key_pem" rows="6" required placeholder="-----BEGIN PRIVATE KEY-----" {}
                }
                button.primary type="submit" { "Upload" }
            }
        }
    };
    html_response(
        StatusCode::OK,
        page("Certificates", "Certificates", &who, body),
    )
}

#[derive(Debug, Deserialize)]
pub(super) struct UploadForm {
    chain_pem: String,
    key_pem: String,
}

/// `POST /certificates`: the API's upload, with the operator as the actor.
pub(super) async fn upload_certificate(
    State(s): State<ApiState>,
    Extension(who): Extension<Session>,
    axum::extract::Form(f): axum::extract::Form<UploadForm>,
) -> Response {
    let r = api_certificates::create_certificate(
        State(s),
        Actor(who.operator.clone()),
        ApiJson(UploadCertificate {
            chain_pem: f.chain_pem,
            key_pem: f.key_pem,
        }),
    )
    .await;
    match r {
        Ok(_) => {
            Redirect::to("/certificates?done=Certificate%20stored%20and%20served.").into_response()
        }
        Err(e) => {
            Redirect::to(&format!("/certificates?error={}", urlencode(e.message()))).into_response()
        }
    }
}

/// `POST /certificates/{id}/delete`.
pub(super) async fn delete_certificate(
    State(s): State<ApiState>,
    Extension(who): Extension<Session>,
    Path(id): Path<String>,
) -> Response {
    match api_certificates::delete_certificate(State(s), Actor(who.operator.clone()), Path(id))
        .await
    {
        Ok(_) => Redirect::to("/certificates?done=Certificate%20deleted.").into_response(),
        Err(e) => {
            Redirect::to(&format!("/certificates?error={}", urlencode(e.message()))).into_response()
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct AuditQuery {
    actor: Option<String>,
    target: Option<String>,
}

/// `/audit`: the newest 200 events, by operator and object.
pub(super) async fn audit(
    State(s): State<ApiState>,
    Extension(who): Extension<Session>,
    Query(q): Query<AuditQuery>,
) -> Response {
    let actor = q.actor.as_deref().map(str::trim).filter(|a| !a.is_empty());
    let target = q.target.as_deref().map(str::trim).filter(|a| !a.is_empty());
    let events = match s.store.audit_by(actor, target, 200).await {
        Ok(e) => e,
        Err(e) => return error_page(&e.into()),
    };
    let operators = s.store.operators().await.unwrap_or_default();
    let body = html! {
        div.heading { h1 { "Audit log" } }
        form.filters method="get" action="/audit" {
            label for="actor" { "Who" }
            input #actor name="actor" value=(actor.unwrap_or("")) list="operators" placeholder="operator or system";
            datalist #operators { @for o in &operators { option value=(o.name) {} } }
            label for="target" { "Object" }
            input #target name="target" value=(target.unwrap_or("")) placeholder="t_…, d_…, c_…";
            button type="submit" { "Filter" }
        }
        (audit_table(&events))
    };
    html_response(StatusCode::OK, page("Audit log", "Audit log", &who, body))
}

/// `/fleet`: every node as it last reported, and how far its routes lag the store.
pub(super) async fn fleet(
    State(s): State<ApiState>,
    Extension(who): Extension<Session>,
) -> Response {
    let within = i64::try_from(crate::upkeep::LIVE_WITHIN.as_millis()).unwrap_or(i64::MAX);
    let (nodes, version) = match (s.store.nodes(within).await, s.store.ping().await) {
        (Ok(n), Ok(v)) => (n, v),
        (Err(e), _) | (_, Err(e)) => return error_page(&e.into()),
    };
    let body = html! {
        div.heading { h1 { "Fleet" } p.muted { "Store version " (version) } }
        @if nodes.is_empty() { p.empty { "No node has reported yet." } }
        @else {
            table.list {
                thead { tr { th { "Node" } th { "Role" } th { "State" } th { "Version" } th { "Routes at" } th { "Behind" } th { "Started" } th { "Heartbeat" } } }
                tbody { @for n in &nodes {
                    @let serves = n.role != "control";
                    tr {
                        td { strong { (n.name) } br; code.small { (n.id) } }
                        td { (n.role) }
                        td { (badge(if n.live { "live" } else { "down" })) }
                        td { (n.version) }
                        td { @if serves { (n.route_version) } @else { "—" } }
                        td { @if serves { (version.saturating_sub(n.route_version)) } @else { "—" } }
                        td { (when(&n.started_at)) }
                        td { (when(&n.heartbeat_at)) }
                    }
                } }
            }
        }
    };
    html_response(StatusCode::OK, page("Fleet", "Fleet", &who, body))
}
