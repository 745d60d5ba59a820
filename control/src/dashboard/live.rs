//! The live parts, as Server-Sent Events: a store's status, generation, events timeline,
//! domains and traffic while it is provisioned, redeployed or changed; the platform's
//! traffic charts on the overview.
//!
//! The stream looks at the store every [`super::LIVE_POLL`] (traffic every
//! [`TRAFFIC_POLL`]) and sends an event only when what it shows changed, so an idle page
//! costs one small read per poll and no bytes. It
//! works the same on a fleet: whichever control node does the work writes the store, and
//! whichever serves the page reads it. The admin listener ends open streams when the node
//! stops or upgrades; the browser's `EventSource` reconnects by itself.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};

use super::layout::error_page;
use crate::api::ApiState;
use crate::model::Tenant;
use crate::store::DomainFilter;

/// How often traffic is looked at again (the proxies report every few seconds).
const TRAFFIC_POLL: Duration = Duration::from_secs(5);

/// What a store's live stream sends (`event: tenant`): its state, its domains' statuses and
/// its traffic charts (`traffic`: markup drawn by [`super::chart`], numbers only).
async fn view(s: &ApiState, t: &Tenant, traffic: &str) -> serde_json::Value {
    let domains = s
        .store
        .list_domains(&DomainFilter {
            tenant_id: Some(t.id.clone()),
            limit: 100,
            ..DomainFilter::default()
        })
        .await
        .map(|(d, _)| d)
        .unwrap_or_default();
    serde_json::json!({
        "traffic": traffic,
        "domains": domains.iter().map(|d| {
            let d = d.to_api();
            serde_json::json!({"id": d.id, "status": d.status.as_str(), "ssl": d.ssl.status.as_str()})
        }).collect::<Vec<_>>(),
        "status": t.status.as_str(),
        "status_reason": t.status_reason,
        "generation": t.generation,
        "live": t.status.is_active(),
        "urls": t.hostnames.iter().map(|h| s.dashboard.store_url(h)).collect::<Vec<_>>(),
        "events": t.events.iter().flatten().map(|e| serde_json::json!({"at": e.at, "message": e.message})).collect::<Vec<_>>(),
    })
}

/// The charts of tenant `id` (or the platform's), as markup text.
async fn charts(s: &ApiState, id: Option<&str>) -> String {
    match super::chart::of(&s.store, id).await {
        Ok((m, _)) => m.into_string(),
        Err(_) => String::new(),
    }
}

/// `/stores/{id}/live`.
pub(super) async fn store(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    // A store that does not exist is an error page, not an empty stream.
    if let Err(e) = s.store.get_tenant(&id).await {
        return error_page(&e.into());
    }
    let polls_per_traffic = (TRAFFIC_POLL.as_millis() / super::LIVE_POLL.as_millis()).max(1);
    let state = (s, id, None::<String>, 0u128, String::new());
    let events = stream::unfold(
        state,
        move |(s, id, last, mut polls, mut traffic)| async move {
            loop {
                if polls > 0 {
                    tokio::time::sleep(super::LIVE_POLL).await;
                }
                if polls % polls_per_traffic == 0 {
                    traffic = charts(&s, Some(&id)).await;
                }
                polls += 1;
                // The store did not answer: try again at the next poll.
                let Ok(t) = s.store.get_tenant(&id).await else {
                    continue;
                };
                let text = view(&s, &t, &traffic).await.to_string();
                if last.as_deref() != Some(text.as_str()) {
                    let event = Event::default().event("tenant").data(text.clone());
                    return Some((
                        Ok::<_, Infallible>(event),
                        (s, id, Some(text), polls, traffic),
                    ));
                }
            }
        },
    );
    sse(events)
}

/// `/live/traffic`: the platform's charts (`event: traffic`, markup text) as they change.
pub(super) async fn traffic(State(s): State<ApiState>) -> Response {
    let events = stream::unfold((s, None::<String>, true), |(s, last, first)| async move {
        let mut first = first;
        loop {
            if !first {
                tokio::time::sleep(TRAFFIC_POLL).await;
            }
            first = false;
            let (markup, summary) = match super::chart::of(&s.store, None).await {
                Ok(v) => v,
                Err(_) => continue,
            };
            let text = serde_json::json!({
                "charts": markup.into_string(),
                "summary": format!(
                    "{:.1} req/s · {:.2}% 5xx · p95 {} (last 5 min)",
                    summary.rate,
                    summary.errors * 100.0,
                    summary.p95.map_or("—".to_owned(), |p| format!("{p} ms"))
                ),
            })
            .to_string();
            if last.as_deref() != Some(text.as_str()) {
                let event = Event::default().event("traffic").data(text.clone());
                return Some((Ok::<_, Infallible>(event), (s, Some(text), false)));
            }
        }
    });
    sse(events)
}

fn sse(events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}
