//! The live parts, as Server-Sent Events: a store's status, generation and events timeline
//! while it is provisioned, redeployed or changed.
//!
//! The stream looks at the store every [`super::LIVE_POLL`] and sends an event only when
//! what it shows changed, so an idle page costs one small read per poll and no bytes. It
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
use crate::model::{Tenant, TenantStatus};

/// What a store's live stream sends (`event: tenant`).
fn view(s: &ApiState, t: &Tenant) -> serde_json::Value {
    serde_json::json!({
        "status": t.status.as_str(),
        "status_reason": t.status_reason,
        "generation": t.generation,
        "live": t.status == TenantStatus::Active,
        "urls": t.hostnames.iter().map(|h| s.dashboard.store_url(h)).collect::<Vec<_>>(),
        "events": t.events.iter().flatten().map(|e| serde_json::json!({"at": e.at, "message": e.message})).collect::<Vec<_>>(),
    })
}

/// `/stores/{id}/live`.
pub(super) async fn store(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    // A store that does not exist is an error page, not an empty stream.
    let first = match s.store.get_tenant(&id).await {
        Ok(t) => view(&s, &t),
        Err(e) => return error_page(&e.into()),
    };
    let state = (s, id, None::<String>, Some(first));
    let events = stream::unfold(state, |(s, id, last, mut pending)| async move {
        loop {
            let current = match pending.take() {
                Some(v) => v,
                None => {
                    tokio::time::sleep(super::LIVE_POLL).await;
                    match s.store.get_tenant(&id).await {
                        Ok(t) => view(&s, &t),
                        // The store did not answer: try again at the next poll.
                        Err(_) => continue,
                    }
                }
            };
            let text = current.to_string();
            if last.as_deref() != Some(text.as_str()) {
                let event = Event::default().event("tenant").data(text.clone());
                return Some((Ok::<_, Infallible>(event), (s, id, Some(text), None)));
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
