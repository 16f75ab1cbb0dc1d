//! The web dashboard (issue 18), served at `/` of the API's address, over the same TLS, with the
//! same tokens and roles: sign in with a token, see every app and environment, follow deployments
//! live, act by role.
//!
//! - Server-rendered HTML (maud: checked at compile time, no template files), one small
//!   hand-written script and one stylesheet embedded in the binary (`assets/`); nothing is fetched
//!   from elsewhere (the Content-Security-Policy says so too).
//! - Sign-in exchanges a token for a session (`session.rs`): a random id in an HttpOnly,
//!   SameSite=Strict cookie (Secure over TLS), only its hash stored, ending at its expiry or when
//!   its token is revoked. Every state-changing request carries a CSRF token derived from the
//!   session, checked before any handler runs.
//! - Roles are the API's: an action asks the API's route table ([`crate::api::router::role_for`])
//!   which role its route needs, and calls the same handler that route calls (`actions.rs`).
//! - Live updates: the script follows the audit log's server-sent events (the API's own stream,
//!   behind the session instead of a bearer token) and re-reads the page's `<main>` when an event
//!   concerns it; charts are SVG drawn here (`charts.rs`).

mod actions;
mod charts;
mod limit;
mod pages;
mod session;
pub mod trends;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::{DOCTYPE, Markup, html};

use crate::engine::Engine;
use crate::tokens::Role;

pub use session::{SESSION_COOKIE, SESSION_TTL_MS, csrf_token};
pub use trends::Trends;

/// The script and stylesheet, embedded.
const SCRIPT: &str = include_str!("dashboard/assets/app.js");
const STYLE: &str = include_str!("dashboard/assets/app.css");

/// What every dashboard answer may load: its own script, style and forms, nothing else.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's routes (outside `/v1`, outside the API's bearer authentication and JSON error
/// envelope: its answers are HTML). `trends` feeds the overview's sparklines.
pub fn router(engine: Arc<Engine>, trends: Arc<Trends>) -> Router {
    let signed_in = Router::new()
        .route("/", get(pages::overview))
        .route("/apps/{app}/{env}", get(pages::environment))
        .route("/apps/{app}/{env}/logs", get(pages::logs))
        .route("/apps/{app}/{env}/logs/stream", get(pages::logs_stream))
        .route("/apps/{app}/{env}/backups", get(pages::backups))
        .route("/apps/{app}/{env}/confirm", get(actions::confirm))
        .route("/apps/{app}/{env}/act", post(actions::act))
        .route("/events", get(pages::events))
        .route("/events/stream", get(pages::events_stream))
        .route("/logout", post(session::logout))
        .layer(from_fn_with_state(engine.clone(), session::require));
    Router::new()
        .route("/login", get(session::login_form).post(session::login))
        .route("/assets/app.js", get(script))
        .route("/assets/app.css", get(style))
        .merge(signed_in)
        .layer(axum::Extension(trends))
        .layer(axum::Extension(Arc::new(limit::LoginLimiter::default())))
        .layer(from_fn(headers))
        .with_state(engine)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// Headers on every dashboard answer: the CSP, no framing, no sniffing, no caching of pages (a
/// signed-out browser's back button must not show one), no referrer.
async fn headers(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let is_asset = request.uri().path().starts_with("/assets/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if !is_asset {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Who is looking at a page: the caller as the API knows it, and the CSRF token of their session.
#[derive(Debug, Clone)]
pub struct Viewer {
    pub caller: crate::api::auth::Caller,
    pub csrf: String,
}

impl Viewer {
    /// Whether the viewer's role allows `needed` (the API's check).
    pub fn may(&self, needed: Role) -> bool {
        self.caller.role.allows(needed)
    }
}

/// An HTML page: the header with navigation, then `main`.
fn page(title: &str, viewer: Option<&Viewer>, live: Option<&str>, main: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Rollway" }
                link rel="stylesheet" href="/assets/app.css";
                script src="/assets/app.js" defer {}
            }
            body data-live=[live] {
                a.skip href="#main" { "Skip to content" }
                header {
                    nav aria-label="Dashboard" {
                        a.brand href="/" { "Rollway" }
                        @if viewer.is_some() {
                            a href="/" { "Overview" }
                            a href="/events" { "Events" }
                        }
                    }
                    @if let Some(viewer) = viewer {
                        form.signout method="post" action="/logout" {
                            span.who { (viewer.caller.name) " (" (viewer.caller.role) ")" }
                            input type="hidden" name="csrf" value=(viewer.csrf);
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main #main tabindex="-1" { (main) }
            }
        }
    }
}

/// An answer that ends a request early (an error page, a redirect to sign in), boxed: a
/// `Response` is large to carry in every `Result`.
pub(crate) struct Early(Box<Response>);

impl From<Response> for Early {
    fn from(response: Response) -> Early {
        Early(Box::new(response))
    }
}

impl IntoResponse for Early {
    fn into_response(self) -> Response {
        *self.0
    }
}

/// An HTML answer.
fn html_response(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

/// A page saying what went wrong, with the status the API would answer.
fn error_page(status: StatusCode, viewer: Option<&Viewer>, message: &str) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    html_response(
        status,
        page(
            title,
            viewer,
            None,
            html! {
                h1 { (title) }
                p.error role="alert" { (message) }
                p { a href="/" { "Back to the overview" } }
            },
        ),
    )
}

/// An API error as a page: its status and its message (the words the API would answer).
fn api_error_page(viewer: &Viewer, error: crate::api::error::ApiError) -> Response {
    error_page(error.status(), Some(viewer), &error.message)
}

#[cfg(test)]
mod tests;
