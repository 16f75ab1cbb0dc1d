//! Landlock for an agent that is not root: `rollway sandbox --allow-rw DIR ... -- PROGRAM ARGS`
//! confines itself, then `exec`s the program, which keeps the confinement (and its pid).
//!
//! The confined process may read, write and run files only beneath its `--allow-rw` folders (its
//! release folder and its private temp folder), read and run the system's own files (`/usr`,
//! `/lib`, `/etc`, ...), use a few devices (`/dev/null`, `/dev/urandom`), and read its own
//! `/proc/self`: not the agent's state directory, not another app's folder, not another
//! process's `/proc/PID/environ`. Signals and abstract Unix sockets are scoped to the sandbox too
//! (Landlock ABI 6), and Unix sockets by path from ABI 9 (Linux 7.1). Before that, a confined
//! process could still connect to a socket whose path it knows (the proxy's control socket), so
//! the sandbox also covers the agent's paths up in a mount namespace of its own ([`hide`], best
//! effort: it needs unprivileged user namespaces). Nothing here needs privileges or `unsafe`: the `landlock` crate makes the
//! system calls, the exec is std's, and the one `unsafe` call (`unshare`) is explained where it is.
//!
//! This module does not choose the folders (the agent does) and does not start processes (the
//! process driver does, through [`crate::confine::Confinement`]).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, LandlockStatus, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope,
};

/// The newest Landlock ABI whose rights the sandbox asks for; older kernels get what they
/// support (best effort), a kernel without Landlock gets an error, never a silent "no sandbox".
/// V9 brings `ResolveUnix`: connecting to a Unix socket by path only beneath the allowed folders.
const WANTED_ABI: ABI = ABI::V9;

/// Before this ABI, Landlock cannot stop a confined process from connecting to a Unix socket by
/// its path (the proxy's control socket in the state directory, a container engine's socket).
pub const UNIX_SOCKETS_CONFINED_FROM_ABI: u32 = 9;

/// System folders every confined process may read and execute from.
pub const SYSTEM_READ_ONLY: [&str; 7] =
    ["/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc"];

/// Single files of `/proc` and `/sys` that runtimes read to size themselves (CPU count, memory).
/// `/proc/self` is added as well: it resolves to the confined process's own folder.
const SYSTEM_INFO_FILES: [&str; 5] = [
    "/proc/cpuinfo",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/loadavg",
    "/sys/devices/system/cpu",
];

/// Devices a confined process may open for reading and writing.
const DEVICES: [&str; 5] = [
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

/// What one sandbox allows besides the system paths above.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Folders (and everything beneath) the process may read, write, create in and execute from.
    pub read_write: Vec<PathBuf>,
    /// Further folders or files it may read and execute, not change.
    pub read_only: Vec<PathBuf>,
    /// Folders and files (sockets) made to vanish for the process, best effort: an empty
    /// read-only tmpfs over a folder, `/dev/null` over a file, in a mount namespace of its own.
    /// Landlock already keeps it from opening them; this also keeps it from connecting to Unix
    /// sockets in them, which Landlock cannot stop before ABI 9.
    pub hide: Vec<PathBuf>,
}

/// What `rollway sandbox --probe` found: the Landlock ABI, and whether paths can be hidden.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub abi: u32,
    /// `Err(reason)` when this host gives unprivileged processes no user namespaces.
    pub hiding: Result<(), String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the kernel has no Landlock ({0})")]
    Unavailable(&'static str),
    #[error("{0}")]
    Probe(String),
    #[error("cannot build the Landlock ruleset")]
    Ruleset(#[source] landlock::RulesetError),
    #[error("cannot open `{path}` for a Landlock rule")]
    Path {
        path: PathBuf,
        #[source]
        source: landlock::PathFdError,
    },
    #[error("cannot run `{program}` in the sandbox")]
    Exec {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// The Landlock ABI the running kernel offers (as far as the `landlock` crate knows), or why
/// there is none. Probed by confining a throwaway thread: Landlock domains are per thread, so
/// the calling process stays unconfined.
pub fn probe() -> Result<u32, SandboxError> {
    let probe = std::thread::spawn(|| -> Result<LandlockStatus, SandboxError> {
        let status = Ruleset::default()
            .handle_access(AccessFs::from_all(ABI::V1))
            .map_err(SandboxError::Ruleset)?
            .create()
            .map_err(SandboxError::Ruleset)?
            .restrict_self()
            .map_err(SandboxError::Ruleset)?;
        Ok(status.landlock)
    })
    .join()
    .map_err(|_| SandboxError::Unavailable("the probe thread panicked"))??;
    match probe {
        LandlockStatus::Available {
            effective_abi,
            kernel_abi,
        } => Ok(kernel_abi
            .and_then(|abi| u32::try_from(abi).ok())
            .unwrap_or(effective_abi as u32)),
        LandlockStatus::NotEnabled => Err(SandboxError::Unavailable(
            "built in but not enabled at boot: add `landlock` to the `lsm=` kernel parameter",
        )),
        LandlockStatus::NotImplemented => Err(SandboxError::Unavailable(
            "not built into this kernel (needs Linux 5.13 or later with CONFIG_SECURITY_LANDLOCK)",
        )),
    }
}

/// Hides `paths` from this process and what it execs: a new user namespace (mapping only its own
/// uid and gid, so nothing is gained) with a private mount namespace, where an empty read-only
/// tmpfs (mode 000) covers each folder and `/dev/null` each other file. Must run while the
/// process has a single thread (a user namespace requires it), before Landlock (which forbids
/// mounts afterwards, so the covers cannot be lifted).
pub fn hide(paths: &[PathBuf]) -> Result<(), String> {
    use rustix::mount::{MountFlags, MountPropagationFlags};
    use rustix::thread::UnshareFlags;
    let paths: Vec<&PathBuf> = paths.iter().filter(|path| path.exists()).collect();
    if paths.is_empty() {
        return Ok(());
    }
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    // SAFETY: `unshare_unsafe` is unsafe only for `CLONE_FILES`, which would split the file
    // descriptor table between threads; these flags do not include it, and the sandbox process
    // runs a single thread at this point anyway.
    #[allow(unsafe_code)]
    let unshared =
        unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWUSER | UnshareFlags::NEWNS) };
    unshared.map_err(|error| format!("no user namespace: {error}"))?;
    let write = |file: &str, text: String| {
        std::fs::write(file, text).map_err(|error| format!("cannot write `{file}`: {error}"))
    };
    write("/proc/self/setgroups", "deny".to_owned())?;
    write("/proc/self/uid_map", format!("{uid} {uid} 1"))?;
    write("/proc/self/gid_map", format!("{gid} {gid} 1"))?;
    rustix::mount::mount_change(
        "/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .map_err(|error| format!("cannot make the mounts private: {error}"))?;
    for path in paths {
        let covered = if path.is_dir() {
            rustix::mount::mount(
                "rollway-hidden",
                path.as_path(),
                "tmpfs",
                MountFlags::RDONLY | MountFlags::NODEV | MountFlags::NOSUID | MountFlags::NOEXEC,
                c"mode=000,size=4k",
            )
        } else {
            rustix::mount::mount_bind("/dev/null", path.as_path())
        };
        covered.map_err(|error| format!("cannot hide `{}`: {error}", path.display()))?;
    }
    Ok(())
}

/// `rollway sandbox --probe`: hides `policy.hide` and applies Landlock to this process, as a
/// sandbox would, and says what worked; the agent runs it once at start.
pub fn probe_self(policy: &Policy) -> Result<Probe, SandboxError> {
    let hiding = hide(&policy.hide);
    restrict_self(policy)?;
    Ok(Probe {
        abi: probe()?,
        hiding,
    })
}

/// Runs `EXE sandbox --probe --hide PATH...` and reads what it found.
pub fn probe_with(exe: &Path, hide: &[PathBuf]) -> Result<Probe, SandboxError> {
    let mut command = std::process::Command::new(exe);
    command.arg("sandbox").arg("--probe");
    for path in hide {
        command.arg("--hide").arg(path);
    }
    let output = command
        .arg("--")
        .arg("/bin/true")
        .output()
        .map_err(|source| SandboxError::Exec {
            program: exe.display().to_string(),
            source,
        })?;
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::to_owned)
    };
    match (output.status.success(), field("abi "), field("hiding ")) {
        (true, Some(abi), Some(hiding)) => Ok(Probe {
            abi: abi.trim().parse().unwrap_or(0),
            hiding: match hiding.trim() {
                "ok" => Ok(()),
                reason => Err(reason.to_owned()),
            },
        }),
        _ => {
            // `error: the kernel has no Landlock (...)`, as `rollway sandbox` reports it.
            let stderr = String::from_utf8_lossy(&output.stderr);
            let reason = stderr
                .lines()
                .find_map(|line| line.strip_prefix("error: "))
                .unwrap_or("the sandbox probe failed")
                .to_owned();
            Err(SandboxError::Probe(reason))
        }
    }
}

/// Confines the calling thread (call it before any other thread exists, i.e. first thing in
/// `rollway sandbox`) with `policy`.
pub fn restrict_self(policy: &Policy) -> Result<(), SandboxError> {
    let all = AccessFs::from_all(WANTED_ABI);
    let read = AccessFs::from_read(WANTED_ABI);
    let file = AccessFs::from_file(WANTED_ABI);
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(all)
        .map_err(SandboxError::Ruleset)?
        .scope(Scope::from_all(WANTED_ABI))
        .map_err(SandboxError::Ruleset)?
        .create()
        .map_err(SandboxError::Ruleset)?;
    let system = SYSTEM_READ_ONLY
        .iter()
        .chain(&SYSTEM_INFO_FILES)
        .chain(&["/proc/self"])
        .map(PathBuf::from);
    let rules = policy
        .read_write
        .iter()
        .map(|path| (path.clone(), all))
        .chain(policy.read_only.iter().map(|path| (path.clone(), read)))
        .chain(system.map(|path| (path, read)))
        .chain(DEVICES.iter().map(|path| (PathBuf::from(path), file)));
    for (path, access) in rules {
        // A system path this host does not have (`/lib32`) is simply not granted.
        if !path.exists() {
            continue;
        }
        // Rights that make no sense on a file (creating entries) are dropped for files.
        let access = if path.is_dir() {
            access
        } else {
            access & AccessFs::from_file(WANTED_ABI)
        };
        let fd = PathFd::new(&path).map_err(|source| SandboxError::Path {
            path: path.clone(),
            source,
        })?;
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, access))
            .map_err(SandboxError::Ruleset)?;
    }
    let status = ruleset.restrict_self().map_err(SandboxError::Ruleset)?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err(SandboxError::Unavailable("the ruleset was not enforced"));
    }
    Ok(())
}

/// `rollway sandbox`: confines this process with `policy`, then replaces it with `program`
/// (its environment and working directory unchanged). Returns only on failure.
pub fn exec(policy: &Policy, program: &Path, args: &[OsString]) -> SandboxError {
    if let Err(reason) = hide(&policy.hide) {
        // Best effort: Landlock below still keeps every hidden file from being opened.
        eprintln!("rollway sandbox: cannot hide the agent's paths ({reason}); Landlock only");
    }
    if let Err(error) = restrict_self(policy) {
        return error;
    }
    use std::os::unix::process::CommandExt as _;
    #[allow(
        clippy::disallowed_methods,
        reason = "the sandbox replaces itself with the instance's own command"
    )]
    let source = std::process::Command::new(program).args(args).exec();
    SandboxError::Exec {
        program: program.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests;
