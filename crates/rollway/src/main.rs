//! The `rollway` binary: command-line parsing and output only.

fn main() {}
