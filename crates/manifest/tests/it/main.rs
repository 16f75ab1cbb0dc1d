//! Integration tests of the manifest crate: data-driven cases, resolution and generated manifests.

mod data;
mod preview;
mod properties;
mod resolve;
