//! Sign-in, sessions and CSRF.
//!
//! `POST /login` takes a form field `token`, checks it as the API does (`tokens::try_verify`) and
//! answers with a session cookie: 32 random bytes in hex, of which the store keeps only the SHA-256.
//! [`require`] runs before every signed-in route: no valid session (none, unknown, expired, its
//! token revoked) sends the browser to `/login`; a state-changing request must also carry the
//! session's CSRF token in its form (field `csrf`), or it is refused with 403 before any handler.
//! Failed sign-ins are counted per client address (`limit.rs`): too many, and the address waits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Extension, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::limit::{self, LoginLimiter};
use super::{Early, Viewer, error_page, html_response, page};
use crate::api::auth::Caller;
use crate::engine::{Engine, now_ms};
use crate::tokens;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "rollway_session";
/// How long a session lasts after sign-in: a working day.
pub const SESSION_TTL_MS: i64 = 12 * 60 * 60 * 1000;
/// Largest form a signed-in request may post (the forms here are a few fields).
const MAX_FORM_BYTES: usize = 16 * 1024;

/// The CSRF token of session `session_id`: derived from it, so the store holds nothing more, and
/// a page of one session is no use to another.
pub fn csrf_token(session_id: &str) -> String {
    let mut digest = Sha256::new();
    digest.update(b"rollway dashboard csrf\0");
    digest.update(session_id.as_bytes());
    hex::encode(digest.finalize())
}

/// The hash under which the store keeps session `session_id`.
fn session_hash(session_id: &str) -> String {
    hex::encode(Sha256::digest(session_id.as_bytes()))
}

/// Equal strings, compared in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim())
}

/// The signed-in viewer of a request, if its session is valid now.
fn viewer_of(engine: &Engine, headers: &HeaderMap) -> Result<Option<Viewer>, Early> {
    let Some(session_id) = cookie(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    match engine
        .store
        .session_token(&session_hash(session_id), now_ms())
    {
        Ok(Some((token, _expires_at))) => Ok(Some(Viewer {
            caller: Caller {
                token_id: token.id,
                name: token.name,
                role: token.role,
            },
            csrf: csrf_token(session_id),
        })),
        Ok(None) => Ok(None),
        Err(error) => {
            let error = crate::report::chain(&error);
            tracing::error!(message = "Cannot look up a dashboard session.", %error);
            Err(error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                None,
                &format!("cannot look up the session: {error}"),
            )
            .into())
        }
    }
}

/// The layer before every signed-in route: a valid session, and for a state-changing request the
/// session's CSRF token in its form. Puts the [`Viewer`] and the caller (as the API's
/// authentication would) in the request's extensions.
pub async fn require(State(engine): State<Arc<Engine>>, request: Request, next: Next) -> Response {
    let viewer = match viewer_of(&engine, request.headers()) {
        Ok(Some(viewer)) => viewer,
        Ok(None) => return Redirect::to("/login").into_response(),
        Err(response) => return response.into_response(),
    };
    let request = if matches!(*request.method(), Method::GET | Method::HEAD) {
        request
    } else {
        let (parts, body) = request.into_parts();
        let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM_BYTES).await else {
            return error_page(
                StatusCode::PAYLOAD_TOO_LARGE,
                Some(&viewer),
                &format!("a dashboard form is at most {MAX_FORM_BYTES} bytes"),
            );
        };
        let presented = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&bytes)
            .ok()
            .and_then(|fields| {
                fields
                    .into_iter()
                    .find(|(name, _)| name == "csrf")
                    .map(|(_, value)| value)
            });
        match presented {
            Some(presented) if same(&presented, &viewer.csrf) => {}
            Some(_) => {
                return error_page(
                    StatusCode::FORBIDDEN,
                    Some(&viewer),
                    "the form's CSRF token is not this session's: reload the page and try again",
                );
            }
            None => {
                return error_page(
                    StatusCode::FORBIDDEN,
                    Some(&viewer),
                    "the form carries no CSRF token (field `csrf`): use the dashboard's own forms",
                );
            }
        }
        Request::from_parts(parts, Body::from(bytes))
    };
    let mut request = request;
    request.extensions_mut().insert(viewer.caller.clone());
    request.extensions_mut().insert(viewer);
    next.run(request).await
}

/// `GET /login`: the form; a signed-in browser goes to the overview.
pub async fn login_form(State(engine): State<Arc<Engine>>, headers: HeaderMap) -> Response {
    match viewer_of(&engine, &headers) {
        Ok(Some(_)) => Redirect::to("/").into_response(),
        Ok(None) => html_response(StatusCode::OK, login_page(None)),
        Err(response) => response.into_response(),
    }
}

/// 429 for an address that failed too often: when to try again, in the header and on the page.
fn too_many_attempts(wait: Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut response = html_response(
        StatusCode::TOO_MANY_REQUESTS,
        login_page(Some(&format!(
            "too many failed sign-ins from this address ({} within {} s): try again in {seconds} s",
            limit::MAX_FAILURES,
            limit::WINDOW.as_secs()
        ))),
    );
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

fn login_page(problem: Option<&str>) -> maud::Markup {
    page(
        "Sign in",
        None,
        None,
        html! {
            h1 { "Sign in" }
            @if let Some(problem) = problem {
                p.error role="alert" { (problem) }
            }
            form.login method="post" action="/login" {
                label for="token" { "API token" }
                input #token type="password" name="token" autocomplete="current-password"
                    required autofocus placeholder="rwy_…";
                button type="submit" { "Sign in" }
            }
            p.hint { "A token from " code { "rollway token create" } ". Its role decides what you may do here, as on the API." }
        },
    )
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
}

/// `POST /login`: a valid, unrevoked token becomes a session. An address that failed
/// [`limit::MAX_FAILURES`] times within [`limit::WINDOW`] is answered 429 (with `Retry-After`)
/// before its token is looked at.
pub async fn login(
    State(engine): State<Arc<Engine>>,
    Extension(limiter): Extension<Arc<LoginLimiter>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    let peer = peer.map(|Extension(ConnectInfo(addr))| addr.ip());
    if let Err(wait) = limiter.check(peer, Instant::now()) {
        return too_many_attempts(wait);
    }
    let presented = form.token.trim();
    let record = match tokens::try_verify(&engine.store, presented) {
        Ok(Some(record)) => record,
        Ok(None) => {
            limiter.failed(peer, Instant::now());
            return html_response(
                StatusCode::UNAUTHORIZED,
                login_page(Some(
                    "that token is not valid here: it is unknown or revoked (tokens start with `rwy_`)",
                )),
            );
        }
        Err(error) => {
            return error_page(
                StatusCode::INTERNAL_SERVER_ERROR,
                None,
                &format!("cannot check the token: {}", crate::report::chain(&error)),
            );
        }
    };
    if !record.role.is_person() {
        limiter.failed(peer, Instant::now());
        return html_response(
            StatusCode::FORBIDDEN,
            login_page(Some(
                "that is a proxy's token: it only follows the routing. Sign in with a token of role viewer, deployer, approver or admin (`rollway tokens create`)",
            )),
        );
    }
    let session_id = new_session_id();
    let expires_at = now_ms().saturating_add(SESSION_TTL_MS);
    if let Err(error) =
        engine
            .store
            .insert_session(&session_hash(&session_id), &record.id, expires_at)
    {
        return error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            &format!("cannot start a session: {}", crate::report::chain(&error)),
        );
    }
    // Sessions that ended are pruned at each sign-in: the table stays the size of the live ones.
    let _ = engine.store.prune_sessions(now_ms());
    engine.record(crate::store::NewEvent {
        app: None,
        environment: None,
        deployment_id: None,
        kind: "dashboard.signed_in".to_owned(),
        message: format!(
            "{} ({}) signed in to the dashboard",
            record.name, record.role
        ),
        data_json: "{}".to_owned(),
    });
    let secure = engine.api_fingerprint.is_some();
    let cookie = session_cookie(&session_id, SESSION_TTL_MS / 1000, secure);
    let mut response = Redirect::to("/").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// The `Set-Cookie` value of a session (`max_age` 0 ends it in the browser).
pub(super) fn session_cookie(session_id: &str, max_age_s: i64, secure: bool) -> String {
    format!(
        "{SESSION_COOKIE}={session_id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_s}{}",
        if secure { "; Secure" } else { "" }
    )
}

/// `POST /logout` (CSRF checked by [`require`]): the session ends in the store and the browser.
pub async fn logout(State(engine): State<Arc<Engine>>, headers: HeaderMap) -> Response {
    if let Some(session_id) = cookie(&headers, SESSION_COOKIE) {
        let _ = engine.store.delete_session(&session_hash(session_id));
    }
    let secure = engine.api_fingerprint.is_some();
    let mut response = Redirect::to("/login").into_response();
    if let Ok(value) = HeaderValue::from_str(&session_cookie("", 0, secure)) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// 32 random bytes in hex.
///
/// # Panics
///
/// If the operating system cannot supply random bytes (as `tokens::generate`).
fn new_session_id() -> String {
    let mut bytes = [0u8; 32];
    if let Err(error) = getrandom::fill(&mut bytes) {
        panic!("the operating system cannot supply random bytes for a session: {error}");
    }
    hex::encode(bytes)
}

#[cfg(test)]
pub(super) fn hash_for_tests(session_id: &str) -> String {
    session_hash(session_id)
}
