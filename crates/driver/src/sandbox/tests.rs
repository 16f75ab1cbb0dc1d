use std::io::ErrorKind;

use super::*;

/// Runs `check` on a new thread confined by `policy` (Landlock domains are per thread), or
/// returns `None` when this kernel has no Landlock.
fn confined<T: Send + 'static>(
    policy: Policy,
    check: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    if let Err(error) = probe() {
        eprintln!("skipped: {error}");
        return None;
    }
    std::thread::spawn(move || {
        restrict_self(&policy).expect("restrict");
        check()
    })
    .join()
    .ok()
}

#[test]
fn a_confined_thread_reads_its_folders_and_the_system_only() {
    let root = tempfile::tempdir().expect("temp dir");
    let own = root.path().join("own");
    let other = root.path().join("other");
    std::fs::create_dir_all(&own).expect("own");
    std::fs::create_dir_all(&other).expect("other");
    std::fs::write(other.join("secret"), "x").expect("secret");
    let policy = Policy {
        read_write: vec![own.clone()],
        read_only: Vec::new(),
        hide: Vec::new(),
    };
    let outcome = confined(policy, move || {
        let kind = |result: std::io::Result<Vec<u8>>| result.err().map(|error| error.kind());
        (
            std::fs::write(own.join("file"), "ok").is_ok(),
            kind(std::fs::read(other.join("secret"))),
            // Another process's environment: the kernel's init, always there.
            kind(std::fs::read("/proc/1/environ")),
            std::fs::read("/proc/self/status").is_ok(),
            std::fs::read("/etc/hostname").is_ok() || !Path::new("/etc/hostname").exists(),
        )
    });
    let Some((wrote_own, other_secret, init_environ, own_status, system)) = outcome else {
        return;
    };
    assert!(wrote_own, "its own folder is writable");
    assert_eq!(other_secret, Some(ErrorKind::PermissionDenied));
    assert_eq!(init_environ, Some(ErrorKind::PermissionDenied));
    assert!(own_status, "its own /proc/self stays readable");
    assert!(system, "/etc is readable");
}
