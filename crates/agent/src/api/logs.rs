//! The app's output, every secret value scrubbed: the last lines, or followed.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use client::wire::LogLineView;
use futures_util::Stream;
use serde::Deserialize;

use crate::api::error::{ApiError, ApiResult};
use crate::engine::Engine;
use crate::secrets::Scrubber;

#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    #[serde(default = "default_lines")]
    pub n: usize,
}

fn default_lines() -> usize {
    100
}

pub async fn logs(
    State(engine): State<Arc<Engine>>,
    Path((app, env)): Path<(String, String)>,
    Query(query): Query<LogsQuery>,
) -> ApiResult<Vec<LogLineView>> {
    let key = (app.clone(), env.clone());
    let runtime = engine.runtime(&key);
    // No secret value leaves through this route, even if the app printed one: every version of
    // every secret (a rollback brings old ones back), and nothing at all if they cannot be opened.
    let scrubber = Scrubber::for_environment(&engine.store, &engine.master_key, &app, &env)
        .map_err(ApiError::internal)?;
    let n = query.n.min(10_000);
    let engine_for_read = engine.clone();
    let ids: Vec<String> = runtime.instances.keys().cloned().collect();
    let lines = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for id in ids {
            if let Ok(found) = engine_for_read.drivers.logs(&id, n) {
                lines.extend(found.into_iter().map(|line| LogLineView {
                    instance_id: line.instance_id,
                    line: scrubber.scrub(&line.line).into_owned(),
                }));
            }
        }
        lines
    })
    .await
    .map_err(ApiError::internal)?;
    Ok(Json(lines))
}

/// Server-sent events of the app's output: each new line of every instance of (app, env), with
/// every secret value scrubbed, until the client leaves.
pub async fn logs_stream(
    State(engine): State<Arc<Engine>>,
    Path((app, env)): Path<(String, String)>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    struct Follow {
        engine: Arc<Engine>,
        key: (String, String),
        cursors: std::collections::BTreeMap<String, driver::LogCursor>,
        queue: std::collections::VecDeque<LogLineView>,
    }
    let follow = Follow {
        engine,
        key: (app, env),
        cursors: std::collections::BTreeMap::new(),
        queue: std::collections::VecDeque::new(),
    };
    let stream = futures_util::stream::unfold(follow, |mut follow| async move {
        loop {
            if let Some(line) = follow.queue.pop_front() {
                let data = serde_json::to_string(&line).unwrap_or_default();
                return Some((Ok(SseEvent::default().event("log").data(data)), follow));
            }
            // Opened again for each batch, so a secret set meanwhile is hidden too; when the
            // secrets cannot be opened, the stream ends rather than show output unscrubbed.
            let Ok(scrubber) = Scrubber::for_environment(
                &follow.engine.store,
                &follow.engine.master_key,
                &follow.key.0,
                &follow.key.1,
            ) else {
                return None;
            };
            let ids: Vec<String> = follow
                .engine
                .runtime(&follow.key)
                .instances
                .keys()
                .cloned()
                .collect();
            for id in ids {
                let cursor = follow.cursors.get(&id).cloned();
                if let Ok((lines, next)) = follow.engine.drivers.logs_after(&id, cursor) {
                    follow.cursors.insert(id.clone(), next);
                    follow
                        .queue
                        .extend(lines.into_iter().map(|line| LogLineView {
                            instance_id: line.instance_id,
                            line: scrubber.scrub(&line.line).into_owned(),
                        }));
                }
            }
            if follow.queue.is_empty() {
                if follow.engine.shutdown.is_cancelled() {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
