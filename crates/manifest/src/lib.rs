//! `rollway.toml`: schema, parsing with spans, validation, layering and parity.
