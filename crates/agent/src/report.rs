//! An error with every cause under it, as one line a person can act on:
//! ``cannot write `/state/builds/x`: No space left on device (os error 28)``.
//!
//! The agent's errors keep their causes as `#[source]`; whoever turns one into text for a person
//! (a deployment's reason, an API message, a log line) walks the chain here, so the cause from the
//! OS or SQLite is never lost.

use std::error::Error;

/// `error` and its sources, joined by `: `; a cause already quoted by the message above it is
/// not repeated.
pub fn chain(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !cause_text.is_empty() && !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot write `{path}`")]
    struct Write {
        path: &'static str,
        #[source]
        source: std::io::Error,
    }

    #[test]
    fn the_os_cause_reaches_the_text() {
        let error = Write {
            path: "/state/builds/x",
            source: std::io::Error::from_raw_os_error(28),
        };
        assert_eq!(
            chain(&error),
            "cannot write `/state/builds/x`: No space left on device (os error 28)"
        );
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot read: {source}")]
        struct Quoted {
            #[source]
            source: std::io::Error,
        }
        let error = Quoted {
            source: std::io::Error::other("gone"),
        };
        assert_eq!(chain(&error), "cannot read: gone");
    }
}
