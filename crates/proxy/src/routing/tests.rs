//! Unit tests of route matching and instance choice.
