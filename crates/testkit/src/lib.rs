//! The Rollway test kit: a demo app, a bounded load loop, temporary agents and fault injection.
//!
//! - [`demo`] starts the `demo-app` binary (an HTTP/1.1 + h2c app whose faults are set by env vars).
//! - [`cli`] runs the `rollway` binary and renders its transcript for snapshots.
//! - [`load`] sends bounded, counted load and reports every request's outcome.
//! - [`agent`] runs a real `rollway agent` in a temporary state directory and deploys the demo app
//!   to it; dropping it kills the agent, its proxy and its instances.
//! - [`s3`] runs a real S3-compatible server (`s3s-fs`) on `127.0.0.1` over a temporary folder.
//! - [`registry`] runs a throwaway image registry on loopback for the swarm tests.
//! - [`webhook`] receives alerts on `127.0.0.1:0` and keeps every request for the test to read.

pub mod agent;
pub mod cli;
pub mod demo;
pub mod load;
pub mod registry;
pub mod s3;
pub mod source;
pub mod webhook;
