//! Unit tests of `desired`.
