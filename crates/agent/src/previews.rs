//! Preview environments' lifetimes: what a deploy with `--from --ttl` may create (`admit`), and the
//! periodic pass that destroys the previews past their expiry through the one destroy path
//! (`environments::destroy`, records kept).
//!
//! It does not layer manifests (`manifest::parse_preview` does) nor open secrets (a preview's
//! release records its base's secrets by reference, `secrets::SecretVersion::Inherited`).

use std::sync::Arc;
use std::time::Duration;

use client::wire::PreviewRequest;

use crate::deploy::start::StartError;
use crate::engine::{AppEnv, Engine, now_ms};
use crate::environments::{DestroyReason, destroy};
use crate::store::Preview;

/// The longest a preview may live from its last deploy.
pub const MAX_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
/// The shortest, in a release build: one minute (a debug build, for tests, takes one second).
pub const MIN_TTL: Duration = if cfg!(debug_assertions) {
    Duration::from_secs(1)
} else {
    Duration::from_secs(60)
};
/// How often the agent looks for expired previews.
const CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// Debug builds only: the check interval in milliseconds, so tests need not wait 30 s.
pub const CHECK_INTERVAL_VAR: &str = "ROLLWAY_PREVIEW_CHECK_INTERVAL_MS";
/// Who the events name when the agent destroys an expired preview.
const AGENT: &str = "rollway (ttl)";

/// The preview row a deploy of `env` with `--from --ttl` records, or why it may not. The name and
/// the base are checked against the manifest by `manifest::parse_preview`; here, the ttl and an
/// existing preview's base.
pub fn admit(
    existing: Option<&Preview>,
    app: &str,
    env: &str,
    asked: &PreviewRequest,
    by: &str,
    now: i64,
) -> Result<Preview, StartError> {
    if !manifest::is_preview_name(env) {
        return Err(StartError::Preview(
            manifest::PreviewError::BadName {
                name: env.to_owned(),
            }
            .to_string(),
        ));
    }
    let ttl = ttl(&asked.ttl)?;
    if let Some(existing) = existing.filter(|existing| existing.base != asked.from) {
        return Err(StartError::PreviewConflict(format!(
            "`{env}` is a preview of `{}`, not of `{}`; deploy it `--from {}`, or destroy it and pick another name",
            existing.base, asked.from, existing.base
        )));
    }
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    Ok(Preview {
        app: app.to_owned(),
        environment: env.to_owned(),
        base: asked.from.clone(),
        created_by: existing.map_or_else(|| by.to_owned(), |existing| existing.created_by.clone()),
        created_at: existing.map_or(now, |existing| existing.created_at),
        expires_at: now.saturating_add(ttl_ms),
    })
}

/// `--ttl`: a human duration within [`MIN_TTL`]..=[`MAX_TTL`].
pub fn ttl(text: &str) -> Result<Duration, StartError> {
    let bounds = format!(
        "accepted: from {} to 90d, e.g. `72h`, `30m`, `7d`",
        if cfg!(debug_assertions) { "1s" } else { "1m" }
    );
    let parsed: manifest::units::Duration = text
        .parse()
        .map_err(|_| StartError::Preview(format!("`--ttl {text}` is not a duration; {bounds}")))?;
    let ttl = parsed.as_std();
    if ttl < MIN_TTL || ttl > MAX_TTL {
        return Err(StartError::Preview(format!(
            "`--ttl {text}` is out of bounds; {bounds}"
        )));
    }
    Ok(ttl)
}

/// The expiry pass; one task for the agent's life. A preview whose destroy is refused (a deploy in
/// flight, the lock held, the proxy away) is tried again at the next pass.
pub async fn run(engine: Arc<Engine>) {
    let interval = check_interval();
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = engine.shutdown.cancelled() => return,
        }
        destroy_expired(&engine).await;
    }
}

/// Destroys every preview past its expiry; answers how many went.
pub async fn destroy_expired(engine: &Arc<Engine>) -> usize {
    let expired = match engine.store.expired_previews(now_ms()) {
        Ok(expired) => expired,
        Err(error) => {
            tracing::error!(message = "Cannot list expired previews.", error = %crate::report::chain(&error));
            return 0;
        }
    };
    let mut destroyed = 0;
    for preview in expired {
        let key = AppEnv::new(preview.app, preview.environment);
        match destroy(engine, &key, AGENT, DestroyReason::Expired).await {
            Ok(_) => destroyed += 1,
            Err(error) => {
                tracing::warn!(
                    message = "An expired preview is not destroyed yet; next pass.",
                    app = %key.app,
                    environment = %key.environment,
                    error = %crate::report::chain(&error)
                );
            }
        }
    }
    destroyed
}

fn check_interval() -> Duration {
    if cfg!(debug_assertions)
        && let Some(ms) = std::env::var(CHECK_INTERVAL_VAR)
            .ok()
            .and_then(|value| value.parse::<u64>().ok())
            .filter(|ms| *ms > 0)
    {
        return Duration::from_millis(ms);
    }
    CHECK_INTERVAL
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(from: &str, ttl: &str) -> PreviewRequest {
        PreviewRequest {
            from: from.to_owned(),
            ttl: ttl.to_owned(),
        }
    }

    #[test]
    fn ttl_bounds_and_names() {
        assert_eq!(ttl("72h").expect("ok"), Duration::from_secs(72 * 3600));
        assert_eq!(ttl("90d").expect("ok"), MAX_TTL);
        for bad in ["91d", "0s", "soon", "", "-5m"] {
            let error = ttl(bad).expect_err(bad).to_string();
            assert!(error.contains("accepted: from"), "{bad}: {error}");
        }
        let error = admit(None, "shop", "staging", &asked("production", "1h"), "me", 0)
            .expect_err("not a preview name")
            .to_string();
        assert!(error.contains("not a preview name"), "{error}");
        let made = admit(
            None,
            "shop",
            "preview-1",
            &asked("staging", "1h"),
            "me",
            1_000,
        )
        .expect("admitted");
        assert_eq!(made.expires_at, 1_000 + 3_600_000);
        let renewed = admit(
            Some(&made),
            "shop",
            "preview-1",
            &asked("staging", "2h"),
            "you",
            5_000,
        )
        .expect("renewed");
        assert_eq!(
            (renewed.created_by.as_str(), renewed.created_at),
            ("me", 1_000)
        );
        assert_eq!(renewed.expires_at, 5_000 + 7_200_000);
        let error = admit(
            Some(&made),
            "shop",
            "preview-1",
            &asked("production", "2h"),
            "me",
            5_000,
        )
        .expect_err("another base")
        .to_string();
        assert!(error.contains("is a preview of `staging`"), "{error}");
    }
}
