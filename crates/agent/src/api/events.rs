//! Events: the audit log and a deployment's progress, stored and live (server-sent events).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use client::wire::EventView;
use futures_util::Stream;
use serde::Deserialize;

use crate::api::error::{ApiError, ApiResult};
use crate::engine::Engine;
use crate::store::Event;

#[derive(Debug, Deserialize)]
pub struct AfterQuery {
    #[serde(default)]
    pub after: i64,
    #[serde(default = "default_limit")]
    pub limit: usize,
}

fn default_limit() -> usize {
    200
}

pub async fn deployment_events(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    Query(query): Query<AfterQuery>,
) -> ApiResult<Vec<EventView>> {
    let events = engine
        .store
        .events_for_deployment(&id, query.after)
        .map_err(ApiError::internal)?;
    Ok(Json(events.iter().map(Event::view).collect()))
}

/// Server-sent events of one deployment, from the start, until it finishes.
pub async fn deployment_stream(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    engine
        .store
        .deployment(&id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("no deployment `{id}`")))?;
    let stream = event_stream(engine, Some(id), 0);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

pub async fn events(
    State(engine): State<Arc<Engine>>,
    Query(query): Query<AfterQuery>,
) -> ApiResult<Vec<EventView>> {
    let events = engine
        .store
        .events_after(query.after, query.limit.min(10_000))
        .map_err(ApiError::internal)?;
    Ok(Json(events.iter().map(Event::view).collect()))
}

/// Server-sent events of the whole audit log, from `after` on, until the client leaves.
pub async fn events_stream(
    State(engine): State<Arc<Engine>>,
    Query(query): Query<AfterQuery>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    Sse::new(event_stream(engine, None, query.after)).keep_alive(KeepAlive::default())
}

/// Stored events first, then live ones; a deployment's stream ends with its `deployment.finished`.
fn event_stream(
    engine: Arc<Engine>,
    deployment: Option<String>,
    after: i64,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    struct Cursor {
        engine: Arc<Engine>,
        deployment: Option<String>,
        after: i64,
        live: tokio::sync::broadcast::Receiver<EventView>,
        queue: std::collections::VecDeque<EventView>,
        backlog_read: bool,
        finished: bool,
    }
    // Subscribe before reading the backlog so that nothing falls between the two.
    let cursor = Cursor {
        live: engine.events.subscribe(),
        engine,
        deployment,
        after,
        queue: std::collections::VecDeque::new(),
        backlog_read: false,
        finished: false,
    };
    futures_util::stream::unfold(cursor, |mut cursor| async move {
        loop {
            if cursor.finished {
                return None;
            }
            if let Some(event) = cursor.queue.pop_front() {
                if event.id <= cursor.after {
                    continue;
                }
                cursor.after = event.id;
                cursor.finished = cursor.deployment.is_some()
                    && matches!(
                        event.deployment_event(),
                        Some(client::wire::DeploymentEvent::Finished { .. })
                    );
                let data = serde_json::to_string(&event).unwrap_or_default();
                let sse = SseEvent::default()
                    .event("event")
                    .id(event.id.to_string())
                    .data(data);
                return Some((Ok(sse), cursor));
            }
            if !cursor.backlog_read {
                cursor.backlog_read = true;
                let stored = match &cursor.deployment {
                    Some(id) => cursor.engine.store.events_for_deployment(id, cursor.after),
                    None => cursor.engine.store.events_after(cursor.after, 10_000),
                };
                cursor
                    .queue
                    .extend(stored.unwrap_or_default().iter().map(Event::view));
                continue;
            }
            match tokio::time::timeout(Duration::from_secs(30), cursor.live.recv()).await {
                Ok(Ok(event)) => {
                    let wanted = match &cursor.deployment {
                        Some(id) => event.deployment_id.as_deref() == Some(id.as_str()),
                        None => true,
                    };
                    if wanted {
                        cursor.queue.push_back(event);
                    }
                }
                // Fell behind the live channel: read the store again from the cursor.
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                    cursor.backlog_read = false
                }
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return None,
                Err(_) => {}
            }
        }
    })
}
