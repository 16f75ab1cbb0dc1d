//! Unit tests of header rewriting and body-error classification.
