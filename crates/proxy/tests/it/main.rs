//! Integration tests of the proxy: real sockets on 127.0.0.1, real `demo-app` processes from testkit.
//!
//! Every test binds port 0, bounds its load by count or duration, and asserts counts, states and
//! orderings, never wall-clock speed.

mod support;

mod conformance;
mod edge;
mod grpc;
mod limits;
mod manners;
mod process;
mod protocols;
mod retry;
mod smuggling;
mod swap;
mod waiting;
