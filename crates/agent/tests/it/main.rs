//! Agent integration tests.
mod remote_multipart;
