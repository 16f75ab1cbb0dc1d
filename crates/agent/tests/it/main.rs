//! Agent integration tests.
