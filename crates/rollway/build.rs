//! Link options of the `rollway` binary.
//!
//! Packed relative relocations (`DT_RELR`) on Linux with glibc: a position-independent Rust binary of
//! this size carries about 1.2 MB of relative relocations (`.rela.dyn`), which the dynamic loader reads
//! in full at every start, so every `rollway` process (the proxy included) kept them resident; packed,
//! they take a few kilobytes (issue 20: the proxy's memory before any connection). The linker emits them
//! only when the C library it links against supports them (GNU ld 2.38 and glibc 2.36 or later; an
//! older ld ignores the option with a warning).

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo::rustc-link-arg-bin=rollway=-Wl,-z,pack-relative-relocs");
    }
    println!("cargo::rerun-if-changed=build.rs");
}
