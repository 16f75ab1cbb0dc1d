//! Typed client of the agent API, and the wire types the agent and its clients share.
//!
//! `wire` is the API contract (the agent imports it too); `http` is the client; `local` finds the
//! local agent of this user; `pin` trusts an agent by its certificate's fingerprint; `artifact` packs an app folder the way the agent expects it.

pub mod artifact;
pub mod http;
pub mod local;
pub mod pin;
pub mod wire;

pub use http::{Client, ClientError};
