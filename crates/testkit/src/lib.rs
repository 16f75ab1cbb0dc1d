//! The Rollway test kit: a demo app, a bounded load loop, and later temporary agents and fault injection.
//!
//! - [`demo`] starts the `demo-app` binary (an HTTP/1.1 + h2c app whose faults are set by env vars).
//! - [`cli`] runs the `rollway` binary and renders its transcript for snapshots.
//! - [`load`] sends bounded, counted load and reports every request's outcome.

pub mod cli;
pub mod demo;
pub mod load;
