//! What the API accepts: the size limits of bodies and values, and the rules for names in paths
//! and bodies, checked before a handler acts.
//!
//! It decides nothing about roles (`auth.rs`) and writes no answer itself: an [`InputError`]
//! becomes the error envelope in `error.rs`.

use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{RawPathParams, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::error::ApiError;

/// Largest JSON body of any route (artifacts have their own limit, on their route only).
pub const MAX_JSON_BODY: usize = 1024 * 1024;
/// Largest manifest a deploy request may carry.
pub const MAX_MANIFEST: usize = 1024 * 1024;
/// Largest secret value.
pub const MAX_SECRET_VALUE: usize = 64 * 1024;
/// Shortest secret value: shorter ones would make the scrubber shred ordinary text.
pub const MIN_SECRET_VALUE: usize = 4;
/// Longest name: token, app, environment and secret names, and every path parameter.
pub const MAX_NAME: usize = 100;

/// A name or value the API refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("the {what} is empty")]
    Empty { what: &'static str },
    #[error("the {what} is {len} characters long; at most {MAX_NAME} are accepted")]
    TooLong { what: &'static str, len: usize },
    #[error(
        "`{name}` is not a valid {what}; accepted: lowercase letters, digits and `-`, starting with a letter, at most 63 characters"
    )]
    NotASlug { what: &'static str, name: String },
    #[error(
        "`{name}` is not a valid secret name; accepted: uppercase letters, digits and `_`, not starting with a digit, such as `DATABASE_URL`"
    )]
    NotASecretName { name: String },
    #[error("`{name}` cannot be a secret: {why}")]
    Reserved { name: String, why: &'static str },
    #[error("the {what} contains a control character")]
    ControlCharacter { what: &'static str },
    #[error(
        "the secret value is {len} characters long; a secret needs at least {MIN_SECRET_VALUE}, so that hiding it from output never hides ordinary words"
    )]
    SecretTooShort { len: usize },
    #[error("the secret value is {len} bytes; at most {MAX_SECRET_VALUE} (64 KiB) are accepted")]
    SecretTooLarge { len: usize },
    #[error("the secret value contains a NUL byte, which no process environment can hold")]
    SecretHasNul,
    #[error("the manifest is {len} bytes; at most {MAX_MANIFEST} (1 MiB) are accepted")]
    ManifestTooLarge { len: usize },
}

impl InputError {
    /// Whether the refusal is about size (413) rather than form (422).
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            InputError::SecretTooLarge { .. } | InputError::ManifestTooLarge { .. }
        )
    }
}

/// An app name, as the manifest's `app.name` allows.
pub fn app_name(name: &str) -> Result<(), InputError> {
    slug(name, "app name")
}

/// An environment name, as the manifest's `[environments.NAME]` allows.
pub fn environment_name(name: &str) -> Result<(), InputError> {
    slug(name, "environment name")
}

fn slug(name: &str, what: &'static str) -> Result<(), InputError> {
    length(name, what)?;
    if manifest::is_slug(name) {
        Ok(())
    } else {
        Err(InputError::NotASlug {
            what,
            name: name.to_owned(),
        })
    }
}

/// A secret's name: `[A-Z_][A-Z0-9_]*`, and none of the variables Rollway or the system's loader
/// own (an app's secret would silently replace them).
pub fn secret_name(name: &str) -> Result<(), InputError> {
    length(name, "secret name")?;
    let mut chars = name.chars();
    let well_formed = matches!(chars.next(), Some(c) if c.is_ascii_uppercase() || c == '_')
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    if !well_formed {
        return Err(InputError::NotASecretName {
            name: name.to_owned(),
        });
    }
    let why = if manifest::RESERVED_ENV.contains(&name) {
        Some("Rollway sets it for each instance")
    } else if name == "PATH" {
        Some("it says where commands are found; set it in the manifest's `[env]` if you must")
    } else if name.starts_with("LD_") {
        Some("`LD_*` variables change how every program of the instance is loaded")
    } else if name.starts_with("ROLLWAY_") {
        Some("`ROLLWAY_*` variables are Rollway's own")
    } else {
        None
    };
    match why {
        Some(why) => Err(InputError::Reserved {
            name: name.to_owned(),
            why,
        }),
        None => Ok(()),
    }
}

/// A secret's value: 4 characters to 64 KiB, no NUL.
pub fn secret_value(value: &str) -> Result<(), InputError> {
    if value.len() > MAX_SECRET_VALUE {
        return Err(InputError::SecretTooLarge { len: value.len() });
    }
    if value.contains('\0') {
        return Err(InputError::SecretHasNul);
    }
    let len = value.chars().count();
    if len < MIN_SECRET_VALUE {
        return Err(InputError::SecretTooShort { len });
    }
    Ok(())
}

/// A token's name (already trimmed): 1 to 100 characters, no control characters.
pub fn token_name(name: &str) -> Result<(), InputError> {
    length(name, "token name")?;
    if name.chars().any(char::is_control) {
        return Err(InputError::ControlCharacter { what: "token name" });
    }
    Ok(())
}

/// A manifest's text: at most 1 MiB.
pub fn manifest(text: &str) -> Result<(), InputError> {
    if text.len() > MAX_MANIFEST {
        return Err(InputError::ManifestTooLarge { len: text.len() });
    }
    Ok(())
}

fn length(name: &str, what: &'static str) -> Result<(), InputError> {
    let len = name.chars().count();
    if len == 0 {
        return Err(InputError::Empty { what });
    }
    if len > MAX_NAME {
        return Err(InputError::TooLong { what, len });
    }
    Ok(())
}

/// A layer on every `/v1` route: path parameters named `app`, `env` and `name` must follow their
/// rules, and no parameter may be longer than [`MAX_NAME`], before any handler runs.
pub async fn check_path(
    params: Result<RawPathParams, RawPathParamsRejection>,
    request: Request,
    next: Next,
) -> Response {
    let params = match params {
        Ok(params) => params,
        // A route without parameters.
        Err(RawPathParamsRejection::MissingPathParams(_)) => return next.run(request).await,
        Err(rejection) => return ApiError::from_rejection(rejection).into_response(),
    };
    for (key, value) in params.iter() {
        let checked = match key {
            "app" => app_name(value),
            "env" => environment_name(value),
            "name" => secret_name(value),
            _ => length(value, "path parameter"),
        };
        if let Err(error) = checked {
            return ApiError::from(error).into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests;
