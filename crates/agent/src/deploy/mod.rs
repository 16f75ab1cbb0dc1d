//! Deployments: the pure state machine, the executor that drives it, and what a release needs to run.

pub mod claims;
pub mod executor;
pub mod fault;
pub mod prepare;
pub mod release;
pub mod spec;
pub mod start;
pub mod state;
