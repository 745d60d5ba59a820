//! The stores: the searchable list, one store's page with its actions, and the new-store
//! form. Every action runs the admin API's own handler with the operator as the actor.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Json};
use maud::{html, Markup};
use serde::Deserialize;

use super::layout::{badge, error_page, notice, page, when};
use super::{html_response, urlencode};
use crate::api::tenants::{CreateTenant, Redeploy, Scale};
use crate::api::{domains as api_domains, tenants as api_tenants};
use crate::api::{Actor, ApiError, ApiJson, ApiState};
use crate::model::{Tenant, TenantStatus};
use crate::store::operators::Session;
use crate::store::{DomainFilter, TenantFilter};

/// Stores per page of the list.
const PAGE: usize = 50;

/// The stores list's traffic columns cover this much.
const RECENT_MS: i64 = 300_000;

#[derive(Debug, Default, Deserialize)]
pub(super) struct ListQuery {
    done: Option<String>,
    q: Option<String>,
    status: Option<String>,
    after: Option<String>,
}

const STATUSES: [TenantStatus; 7] = [
    TenantStatus::Active,
    TenantStatus::Paused,
    TenantStatus::Sleeping,
    TenantStatus::Waking,
    TenantStatus::Provisioning,
    TenantStatus::Suspended,
    TenantStatus::Failed,
];

/// `/stores`: search by slug, name or hostname, filter by status, a page at a time.
pub(super) async fn list(
    State(s): State<ApiState>,
    Extension(who): Extension<Session>,
    Query(q): Query<ListQuery>,
) -> Response {
    let status = q
        .status
        .as_deref()
        .filter(|s| !s.is_empty())
        .and_then(TenantStatus::parse);
    let search = q.q.as_deref().map(str::trim).filter(|s| !s.is_empty());
    let found = s
        .store
        .list_tenants(&TenantFilter {
            status,
            hostname: None,
            search: search.map(str::to_owned),
            after: q.after.clone(),
            limit: PAGE,
        })
        .await;
    let found = match found {
        Ok(p) => p,
        Err(e) => return error_page(&e.into()),
    };
    let ids: Vec<String> = found.items.iter().map(|t| t.id.clone()).collect();
    let window_end = super::chart::settled_end(crate::now_ms(), super::chart::STORE_BIN_MS);
    let traffic = s
        .store
        .traffic_of(&ids, window_end - RECENT_MS)
        .await
        .unwrap_or_default();
    let next_link = found.next.as_ref().map(|n| {
        format!(
            "/stores?q={}&status={}&after={}",
            urlencode(search.unwrap_or("")),
            status.map_or("", |s| s.as_str()),
            urlencode(n)
        )
    });
    let body = html! {
        div.heading {
            h1 { "Stores" }
            a.button.primary href="/stores/new" { "New store" }
        }
        (notice(q.done.as_deref()))
        form.filters method="get" action="/stores" role="search" {
            label for="q" { "Search" }
            input #q type="search" name="q" value=(search.unwrap_or("")) placeholder="slug, name or hostname";
            label for="status" { "Status" }
            select #status name="status" {
                option value="" { "any" }
                @for st in STATUSES {
                    option value=(st.as_str()) selected[status == Some(st)] { (st.as_str()) }
                }
            }
            button type="submit" { "Filter" }
        }
        @if found.items.is_empty() {
            p.empty { "No store matches." }
        } @else {
            table.list {
                thead { tr {
                    th { "Store" } th { "Status" } th { "Hostnames" } th { "Blueprint" }
                    th { "Generation" } th.num title="Average over the last 5 minutes" { "Req/s" }
                    th.num title="5xx answers in the last 5 minutes" { "5xx" }
                    th title="From the last 5 minutes of traffic: errors when over 5% of answers were 5xx" { "Health" }
                    th { "Updated" }
                } }
                tbody {
                    @for t in &found.items {
                        tr {
                            td { a href={"/stores/" (t.id)} { strong { (t.name) } } br; span.muted { (t.slug) } }
                            td { (badge(t.status.as_str())) }
                            td.hosts { @for h in &t.hostnames { span { (h) } } }
                            td { (t.blueprint.as_deref().unwrap_or("—"))
                                 @if let Some(th) = &t.theme { span.muted { " · " (th) } } }
                            td { (t.generation.map_or("—".to_owned(), |g| g.to_string())) }
                            @let c = traffic.get(&t.id).copied().unwrap_or_default();
                            td.num { (format!("{:.2}", c.requests() as f64 / (RECENT_MS as f64 / 1000.0))) }
                            td.num.bad-text[c.errors() > 0] { (c.errors()) }
                            td { (health(t, &c)) }
                            td { (when(&t.updated_at)) }
                        }
                    }
                }
            }
        }
        @if let Some(n) = next_link {
            p.pager { a href=(n) { "Next page →" } }
        }
    };
    html_response(StatusCode::OK, page("Stores", "Stores", &who, body))
}

/// A store's health at a glance: not served (its status says why), errors when more than
/// 5% of its recent answers were 5xx, ok when it answered, idle when it had no traffic.
fn health(t: &Tenant, c: &tenantgate_config::traffic::TrafficCounts) -> Markup {
    if matches!(
        t.status,
        TenantStatus::Paused | TenantStatus::Sleeping | TenantStatus::Waking
    ) {
        return html! { span.muted { "asleep" } };
    }
    if t.status != TenantStatus::Active {
        return html! { span.muted { "—" } };
    }
    if c.is_empty() {
        return html! { span.muted { "idle" } };
    }
    let word = if c.errors() * 20 > c.requests() {
        "errors"
    } else {
        "ok"
    };
    badge(word)
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct NewQuery {
    error: Option<String>,
}

/// `/stores/new`: slug (checked as it is typed), name, blueprint and its theme.
pub(super) async fn new_form(
    State(s): State<ApiState>,
    Extension(who): Extension<Session>,
    Query(q): Query<NewQuery>,
) -> Response {
    let error = q.error;
    new_page(
        &s,
        &who,
        &NewStore::default(),
        error.as_deref(),
        StatusCode::OK,
    )
}

/// What the new-store form sends.
#[derive(Debug, Default, Deserialize)]
pub(super) struct NewStore {
    #[serde(default)]
    slug: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    blueprint: String,
    #[serde(default)]
    theme: String,
}

fn new_page(
    s: &ApiState,
    who: &Session,
    form: &NewStore,
    error: Option<&str>,
    status: StatusCode,
) -> Response {
    let blueprints = s.lifecycle.blueprints();
    let body = html! {
        div.heading { h1 { "New store" } }
        @if let Some(e) = error {
            p.notice.bad role="alert" { (e) }
        }
        @if blueprints.is_empty() {
            p.notice.bad { "No blueprint is installed: stores can only be made from the API with upstreams." }
        }
        form.card.stack #new-store method="post" action="/stores/new" {
            input type="hidden" name="csrf" value=(who.csrf);
            div.field {
                label for="slug" { "Slug" }
                input #slug name="slug" value=(form.slug) required maxlength="63"
                    pattern="[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?" autocomplete="off"
                    aria-describedby="slug-help slug-status" data-check="/stores/slug-check";
                p.help #slug-help { "Lowercase letters, digits and inner hyphens; the store answers at " code { "<slug>." (s.rules.platform_domain) } "." }
                p.help #slug-status aria-live="polite" {}
            }
            div.field {
                label for="name" { "Name" }
                input #name name="name" value=(form.name) required maxlength="200";
            }
            div.field {
                label for="blueprint" { "Blueprint" }
                select #blueprint name="blueprint" required {
                    @for (name, b) in blueprints.iter() {
                        option value=(name) selected[form.blueprint == *name] title=(b.description) { (name) }
                    }
                }
            }
            div.field {
                label for="theme" { "Theme" }
                select #theme name="theme" {
                    @for (name, b) in blueprints.iter() {
                        optgroup label=(name) data-blueprint=(name) {
                            @for th in b.themes.keys() {
                                option value=(th) selected[form.theme == *th && form.blueprint == *name] {
                                    (th) @if *th == b.default_theme { " (default)" }
                                }
                            }
                        }
                    }
                }
            }
            button.primary type="submit" { "Create store" }
        }
    };
    html_response(status, page("New store", "New store", who, body))
}

/// `POST /stores/new`: create through the API's handler, then follow it on its page.
pub(super) async fn create(
    State(s): State<ApiState>,
    Extension(who): Extension<Session>,
    axum::extract::Form(f): axum::extract::Form<NewStore>,
) -> Response {
    let body = CreateTenant {
        slug: f.slug.trim().to_owned(),
        name: f.name.trim().to_owned(),
        upstreams: None,
        blueprint: Some(f.blueprint.clone()),
        theme: Some(f.theme.clone()).filter(|t| !t.is_empty()),
        plan: None,
    };
    let created =
        api_tenants::create_tenant(State(s.clone()), Actor(who.operator.clone()), ApiJson(body))
            .await;
    match created {
        Ok(resp) => {
            let resp = resp.into_response();
            let id = resp
                .headers()
                .get(axum::http::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| l.strip_prefix("/v1/tenants/"))
                .map(str::to_owned);
            match id {
                Some(id) => Redirect::to(&format!("/stores/{id}")).into_response(),
                None => Redirect::to("/stores").into_response(),
            }
        }
        Err(e) => new_page(&s, &who, &f, Some(e.message()), e.status()),
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct SlugQuery {
    slug: String,
}

/// `/stores/slug-check?slug=`: whether a slug is allowed and free, for the form as it is
/// typed (`{"ok": bool, "message": "..."}`).
pub(super) async fn slug_check(State(s): State<ApiState>, Query(q): Query<SlugQuery>) -> Response {
    let answer = match s.rules.slug(&q.slug) {
        Err(e) => serde_json::json!({"ok": false, "message": ApiError::from(e).message()}),
        Ok(hostname) => {
            let taken = s
                .store
                .list_tenants(&TenantFilter {
                    hostname: Some(hostname.clone()),
                    limit: 1,
                    ..TenantFilter::default()
                })
                .await
                .map(|p| !p.items.is_empty());
            match taken {
                Ok(true) => {
                    serde_json::json!({"ok": false, "message": format!("{hostname} is taken")})
                }
                Ok(false) => {
                    serde_json::json!({"ok": true, "message": format!("{hostname} is free")})
                }
                Err(e) => serde_json::json!({"ok": false, "message": e.to_string()}),
            }
        }
    };
    Json(answer).into_response()
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct DetailQuery {
    done: Option<String>,
    error: Option<String>,
}

/// `/stores/{id}`: hostnames and domains with their DNS records, containers, the events
/// timeline (live), and the actions.
pub(super) async fn detail(
    State(s): State<ApiState>,
    Extension(who): Extension<Session>,
    Path(id): Path<String>,
    Query(q): Query<DetailQuery>,
) -> Response {
    let mut tenant = match s.store.get_tenant(&id).await {
        Ok(t) => t,
        Err(e) => return error_page(&e.into()),
    };
    s.lifecycle.show_sleep_policy(&mut tenant);
    let domains = s
        .store
        .list_domains(&DomainFilter {
            tenant_id: Some(id.clone()),
            limit: 100,
            ..DomainFilter::default()
        })
        .await
        .map(|(d, _)| d)
        .unwrap_or_default();
    let containers = match &tenant.blueprint {
        Some(_) if tenant.status != TenantStatus::Deleted => {
            Some(s.lifecycle.containers(&id).await)
        }
        _ => None,
    };
    let blueprint = tenant
        .blueprint
        .as_ref()
        .and_then(|b| s.lifecycle.blueprints().get(b).cloned());
    let live_url = format!("/stores/{id}/live");
    let traffic = super::chart::of(&s.store, Some(&id)).await;
    let body = html! {
        div.heading {
            div {
                h1 { (tenant.name) }
                p.muted { (tenant.slug) " · " code { (tenant.id) } }
            }
            div #store-status data-live=(live_url) data-status=(tenant.status.as_str()) { (badge(tenant.status.as_str())) }
        }
        (notice(q.done.as_deref()))
        @if let Some(e) = &q.error { p.notice.bad role="alert" { (e) } }
        p.notice.bad #store-reason hidden[tenant.status_reason.is_none()] role="status" {
            (tenant.status_reason.as_deref().unwrap_or(""))
        }
        p.notice.good #store-live hidden[!tenant.status.is_active()] {
            "Live: "
            @for h in &tenant.hostnames {
                a href=(s.dashboard.store_url(h)) data-hostname=(h) { (s.dashboard.store_url(h)) } " "
            }
        }
        div.grid {
            section.card {
                h2 { "Hostnames" }
                ul.plain { @for h in &tenant.hostnames { li { code { (h) } } } }
                h3 { "Custom domains" }
                @if domains.is_empty() { p.muted { "None attached." } }
                @for d in &domains {
                    @let d = d.to_api();
                    div.domain {
                        p { strong { (d.hostname) } " "
                            span data-domain-status=(d.id) { (badge(d.status.as_str())) }
                            " certificate "
                            span data-domain-ssl=(d.id) { (badge(d.ssl.status.as_str())) } }
                        @if d.status.as_str() == "pending_verification" {
                            p.small { "Publish this DNS record (or point the name at the platform and let it answer the HTTP token):" }
                            div.record {
                                code { (d.verification.txt_name) " TXT \"" (d.verification.txt_value) "\"" }
                                button.copy type="button" data-copy={(d.verification.txt_name) " TXT \"" (d.verification.txt_value) "\""} { "Copy" }
                            }
                        }
                        @for e in d.errors.iter().chain(&d.ssl.errors) { p.small.bad-text { (e) } }
                    }
                }
                form.inline method="post" action={"/stores/" (tenant.id) "/domain"} {
                    input type="hidden" name="csrf" value=(who.csrf);
                    label for="hostname" { "Attach a domain" }
                    input #hostname name="hostname" placeholder="www.merchant-shop.com" required;
                    button type="submit" { "Attach" }
                }
            }
            section.card {
                h2 { "Store" }
                dl {
                    dt { "Blueprint" } dd { (tenant.blueprint.as_deref().unwrap_or("— (upstreams given by hand)")) }
                    dt { "Theme" } dd { (tenant.theme.as_deref().unwrap_or("—")) }
                    dt { "Generation" } dd #store-generation { (tenant.generation.map_or("—".to_owned(), |g| g.to_string())) }
                    dt { "Plan" } dd { (tenant.plan.as_deref().unwrap_or("—")) }
                    @if tenant.blueprint.is_some() {
                        dt { "Sleeps" } dd #store-sleep { (sleep_words(&tenant)) }
                    }
                    dt { "Upstreams" } dd { @for u in &tenant.upstreams { code { (u) } " " } }
                    dt { "Created" } dd { (when(&tenant.created_at)) }
                }
                h3 { "Containers" }
                (containers_table(containers, tenant.events.as_deref().unwrap_or_default()))
            }
        }
        section.card {
            h2 { "Traffic, last hour" }
            div #store-traffic {
                @match &traffic {
                    Ok((charts, _)) => (charts),
                    Err(e) => p.notice.bad { "Traffic is not available: " (e) },
                }
            }
        }
        section.card {
            h2 { "Events" }
            ol.timeline #store-events {
                @for e in tenant.events.iter().flatten() {
                    li { (when(&e.at)) " " span { (e.message) } }
                }
            }
        }
        (actions(&who, &tenant, blueprint.as_ref()))
    };
    html_response(StatusCode::OK, page(&tenant.name, "Stores", &who, body))
}

/// How often the reconciler brought container `name` back (it records each time in the
/// store's events: "container NAME was stopped: started again", "... was missing: created
/// again").
fn restarts(events: &[crate::model::TenantEvent], name: &str) -> usize {
    let prefix = format!("container {name} was ");
    events
        .iter()
        .filter(|e| e.message.starts_with(&prefix))
        .count()
}

fn containers_table(
    containers: Option<crate::Result<Vec<crate::runtime::Container>>>,
    events: &[crate::model::TenantEvent],
) -> Markup {
    html! {
        @match containers {
            None => p.muted { "None: this store's upstreams were given by hand." },
            Some(Err(e)) => p.notice.bad { "Cannot list containers: " (e) },
            Some(Ok(list)) if list.is_empty() => p.muted { "None running." },
            Some(Ok(list)) => table.list.compact {
                thead { tr { th { "Component" } th { "Generation" } th { "State" }
                    th.num title="Times the reconciler brought it back (from the events)" { "Restarts" } th { "Address" } } }
                tbody { @for c in &list { tr {
                    td { (c.component().unwrap_or("?")) }
                    td { (c.generation().map_or("?".to_owned(), |g| g.to_string())) }
                    td { (badge(if c.paused { "paused" } else if c.running { "running" } else { "stopped" }))
                         @if !c.status.is_empty() { br; span.small.muted { (c.status) } } }
                    td.num { (restarts(events, &c.name)) }
                    td { code { (c.address.map_or("—".to_owned(), |a| a.to_string())) } }
                } } }
            },
        }
    }
}

fn actions(who: &Session, t: &Tenant, blueprint: Option<&crate::blueprint::Blueprint>) -> Markup {
    let base = format!("/stores/{}", t.id);
    html! {
        section.card.actions {
            h2 { "Actions" }
            @if t.status.is_active() {
                form.inline method="post" action={(base) "/suspend"} {
                    input type="hidden" name="csrf" value=(who.csrf);
                    button type="submit" { "Suspend" }
                    span.help { "Visitors get the 503 page; containers stop." }
                }
            }
            @if t.status == TenantStatus::Suspended {
                form.inline method="post" action={(base) "/resume"} {
                    input type="hidden" name="csrf" value=(who.csrf);
                    button type="submit" { "Resume" }
                }
            }
            @if let (Some(b), true) = (blueprint, t.status.is_active()) {
                form.inline method="post" action={(base) "/redeploy"} {
                    input type="hidden" name="csrf" value=(who.csrf);
                    label for="redeploy-theme" { "Redeploy with theme" }
                    select #redeploy-theme name="theme" {
                        @for th in b.themes.keys() {
                            option value=(th) selected[t.theme.as_deref() == Some(th.as_str())] { (th) }
                        }
                    }
                    button type="submit" { "Redeploy" }
                }
                form.inline method="post" action={(base) "/scale"} {
                    input type="hidden" name="csrf" value=(who.csrf);
                    label for="scale-component" { "Scale" }
                    select #scale-component name="component" {
                        @for c in &b.components { option value=(c.name) { (c.name) } }
                    }
                    label for="scale-replicas" { "to" }
                    input #scale-replicas type="number" name="replicas" min="1" max="20" value="1" required;
                    button type="submit" { "Scale" }
                }
                form.inline method="post" action={(base) "/sleep"} {
                    input type="hidden" name="csrf" value=(who.csrf);
                    label for="idle-pause" { "Freeze after" }
                    input #idle-pause type="number" name="idle_pause_seconds" min="1" max="2592000"
                        placeholder="never" value=[t.idle_pause_seconds];
                    label for="idle-stop" { "s idle, stop after" }
                    input #idle-stop type="number" name="idle_stop_seconds" min="1" max="2592000"
                        placeholder="never" value=[t.idle_stop_seconds];
                    span.help { "s idle (empty: never)" }
                    button type="submit" { "Save" }
                }
            }
            @if t.status != TenantStatus::Deleted {
                form.inline.danger method="post" action={(base) "/delete"} {
                    input type="hidden" name="csrf" value=(who.csrf);
                    label for="confirm" { "Type " code { (t.slug) } " to delete this store" }
                    input #confirm name="confirm" autocomplete="off" required data-must=(t.slug);
                    button.danger type="submit" { "Delete" }
                }
            }
        }
    }
}

/// The fields an action's form may send.
#[derive(Debug, Default, Deserialize)]
pub(super) struct ActionForm {
    theme: Option<String>,
    component: Option<String>,
    replicas: Option<String>,
    confirm: Option<String>,
    hostname: Option<String>,
    idle_pause_seconds: Option<String>,
    idle_stop_seconds: Option<String>,
}

/// A store's idle periods in words.
fn sleep_words(t: &Tenant) -> String {
    let whose = if t.sleep_override {
        "its own"
    } else {
        "the blueprint's"
    };
    match (t.idle_pause_seconds, t.idle_stop_seconds) {
        (None, None) => format!("never ({whose})"),
        (Some(p), None) => format!("frozen after {p} s idle ({whose})"),
        (None, Some(s)) => format!("stopped after {s} s idle ({whose})"),
        (Some(p), Some(s)) => {
            format!("frozen after {p} s idle, stopped after {s} s ({whose})")
        }
    }
}

/// A form's seconds: empty is never (`null`), anything else a whole number.
fn form_seconds(key: &str, v: Option<&str>) -> Result<Option<u64>, ApiError> {
    match v.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_sleep_policy",
                format!("{key}: {v:?} is not a whole number of seconds"),
            )
        }),
    }
}

/// `POST /stores/{id}/{action}`: suspend, resume, redeploy, scale, sleep, delete, domain.
pub(super) async fn act(
    State(s): State<ApiState>,
    Extension(who): Extension<Session>,
    Path((id, action)): Path<(String, String)>,
    axum::extract::Form(f): axum::extract::Form<ActionForm>,
) -> Response {
    tracing::info!(operator = %who.operator, tenant = %id, action = %action, "dashboard action");
    let actor = || Actor(who.operator.clone());
    let st = || State(s.clone());
    let path = || Path(id.clone());
    let done: Result<String, ApiError> = match action.as_str() {
        "suspend" => api_tenants::suspend_tenant(st(), actor(), path())
            .await
            .map(|_| "Suspended: visitors get the 503 page.".to_owned()),
        "resume" => api_tenants::resume_tenant(st(), actor(), path())
            .await
            .map(|_| "Resumed: the store is served again.".to_owned()),
        "redeploy" => {
            let theme = f.theme.filter(|t| !t.is_empty());
            api_tenants::redeploy_tenant(st(), actor(), path(), ApiJson(Redeploy { theme }))
                .await
                .map(|_| "Redeploy started: follow it in the events.".to_owned())
        }
        "scale" => {
            let replicas = f.replicas.as_deref().unwrap_or("").trim().parse::<u32>();
            match (f.component, replicas) {
                (Some(component), Ok(replicas)) => {
                    let msg = format!("Scaled {component} to {replicas}.");
                    api_tenants::scale_tenant(
                        st(),
                        actor(),
                        path(),
                        ApiJson(Scale {
                            component,
                            replicas,
                        }),
                    )
                    .await
                    .map(|_| msg)
                }
                _ => Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_body",
                    "scale needs a component and a number of replicas (1-20)",
                )),
            }
        }
        "sleep" => {
            let pause = form_seconds("idle_pause_seconds", f.idle_pause_seconds.as_deref());
            let stop = form_seconds("idle_stop_seconds", f.idle_stop_seconds.as_deref());
            match (pause, stop) {
                (Ok(pause), Ok(stop)) => api_tenants::patch_tenant(
                    st(),
                    actor(),
                    path(),
                    ApiJson(api_tenants::PatchTenant {
                        name: None,
                        plan: None,
                        idle_pause_seconds: Some(pause),
                        idle_stop_seconds: Some(stop),
                    }),
                )
                .await
                .map(|axum::Json(t)| format!("Sleep: {}.", sleep_words(&t))),
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        }
        "delete" => {
            let slug = match s.store.get_tenant(&id).await {
                Ok(t) => t.slug,
                Err(e) => return error_page(&e.into()),
            };
            if f.confirm.as_deref().map(str::trim) != Some(slug.as_str()) {
                Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "confirmation_mismatch",
                    format!(
                        "type the slug {slug:?} exactly to delete this store; nothing was deleted"
                    ),
                ))
            } else {
                match api_tenants::delete_tenant(st(), actor(), path()).await {
                    Ok(_) => {
                        let msg = format!("Store {slug} deleted.");
                        return Redirect::to(&format!("/stores?done={}", urlencode(&msg)))
                            .into_response();
                    }
                    Err(e) => Err(e),
                }
            }
        }
        "domain" => {
            let hostname = f.hostname.unwrap_or_default();
            api_domains::attach_domain(
                st(),
                actor(),
                path(),
                ApiJson(api_domains::AttachDomain {
                    hostname: hostname.trim().to_owned(),
                }),
            )
            .await
            .map(|_| {
                format!(
                    "{} attached: publish its TXT record to prove ownership.",
                    hostname.trim()
                )
            })
        }
        other => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no store action {other:?}"),
        )),
    };
    tracing::info!(operator = %who.operator, tenant = %id, action = %action, ok = done.is_ok(), "dashboard action done");
    let to = match done {
        Ok(msg) => format!("/stores/{id}?done={}", urlencode(&msg)),
        Err(e) => format!("/stores/{id}?error={}", urlencode(e.message())),
    };
    Redirect::to(&to).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_are_counted_from_the_reconcilers_events() {
        let e = |m: &str| crate::model::TenantEvent {
            at: String::new(),
            message: m.to_owned(),
        };
        let events = [
            e("container tg-x-web-g1-1 started"),
            e("container tg-x-web-g1-1 was stopped: started again"),
            e("container tg-x-web-g1-1 was missing: created again"),
            e("container tg-x-web-g1-10 was stopped: started again"),
        ];
        assert_eq!(restarts(&events, "tg-x-web-g1-1"), 2);
        assert_eq!(restarts(&events, "tg-x-web-g1-10"), 1);
        assert_eq!(restarts(&events, "tg-x-api-g1-1"), 0);
    }
}
