//! How an app's processes are kept from the agent and from each other: as their own user when the
//! agent runs as root, else in a Landlock sandbox (`rollway sandbox`), and always with a private
//! temp folder as `HOME` and `TMPDIR`.
//!
//! This module decides nothing per app (the agent allocates users and folders); it turns a
//! [`Confinement`] into the command that starts `/bin/sh -c RUN`. std's `uid`/`gid` do the user
//! switch (dropping supplementary groups, see [`Confinement::command`]), and the sandbox is a
//! re-exec of the `rollway` binary; `pre_exec` joins the apps' cgroup (see [`crate::cgroup`]) and sets the
//! lower priority the deploy's own work starts at (see [`crate::priority`]).

use std::ffi::OsString;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

/// What isolation this host gives apps; detected once when the agent starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Isolation {
    /// The agent runs as root: every app environment runs as its own unprivileged user.
    Users,
    /// Landlock through `rollway sandbox` (`exe`), at this kernel ABI. `hidden` are covered in a
    /// mount namespace of the app's own (empty when this host cannot: `cannot_hide` says why).
    Landlock {
        abi: u32,
        exe: PathBuf,
        hidden: Vec<PathBuf>,
        cannot_hide: Option<String>,
    },
    /// Neither: apps run as the agent's own user, unconfined.
    None { user: String, reason: String },
}

/// A numeric user and group (no `/etc/passwd` entry needed), as systemd's `DynamicUser=` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AppUser {
    pub uid: u32,
    pub gid: u32,
}

/// How one process of an app is confined. The default confines nothing: the agent's own user,
/// its `HOME`, no sandbox (what tests of the driver itself use).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Confinement {
    /// Run as this user, with no supplementary groups. Needs the agent to be root.
    pub user: Option<AppUser>,
    /// Confine with Landlock through `EXE sandbox` before the command runs.
    pub sandbox: Option<PathBuf>,
    /// Paths the sandbox covers up (`--hide`): the agent's state directory, engine sockets.
    pub hide: Vec<PathBuf>,
    /// Containers only: the manifest's `user` (`uid[:gid]` or a name of the image's), which the
    /// container runs as instead of `user`.
    pub container_user: Option<String>,
    /// The private folder given as `HOME` and `TMPDIR`: made 0700 and owned by `user` before
    /// the process starts, and writable inside the sandbox.
    pub temp_dir: Option<PathBuf>,
    /// The cgroup the process joins before it execs (the apps' group of the agent's CPU
    /// placement); `None` leaves it in the agent's.
    pub cgroup: Option<crate::cgroup::Group>,
    /// The nice value the process starts at, set before exec; `None` keeps the agent's. The
    /// deploy's own work (build, release and smoke commands, a new instance until its health gate)
    /// starts below the serving instances: [`crate::priority::deploy_nice`].
    pub nice: Option<i32>,
}

impl Isolation {
    /// Root gets per-app users; anyone else Landlock when the kernel has it, probed by running
    /// `EXE sandbox --probe` once, which also tries to hide `hide`.
    pub fn detect(exe: &Path, hide: Vec<PathBuf>) -> Isolation {
        if rustix::process::geteuid().is_root() {
            return Isolation::Users;
        }
        match crate::sandbox::probe_with(exe, &hide) {
            Ok(probe) => Isolation::Landlock {
                abi: probe.abi,
                exe: exe.to_path_buf(),
                hidden: if probe.hiding.is_ok() {
                    hide
                } else {
                    Vec::new()
                },
                cannot_hide: probe.hiding.err(),
            },
            Err(error) => Isolation::None {
                user: format!("uid {}", rustix::process::geteuid().as_raw()),
                reason: error.to_string(),
            },
        }
    }

    /// The agent's start-up line: `per-app users (root)`, `landlock ABI v7`, or
    /// `none — apps run as uid 1000; the kernel has no Landlock (...)`.
    pub fn describe(&self) -> String {
        match self {
            Isolation::Users => "per-app users (root)".to_owned(),
            Isolation::Landlock { abi, .. } => format!("landlock ABI v{abi}"),
            Isolation::None { user, reason } => format!("none — apps run as {user}; {reason}"),
        }
    }

    /// What this isolation does not stop, for a warning at start; `None` when nothing is known.
    pub fn gap(&self) -> Option<String> {
        match self {
            Isolation::Landlock {
                abi,
                cannot_hide: Some(reason),
                ..
            } if *abi < crate::sandbox::UNIX_SOCKETS_CONFINED_FROM_ABI => Some(format!(
                "Landlock before ABI {} cannot stop an app from connecting to a Unix socket by its path (the proxy's control socket, a container engine's socket), and the agent's paths cannot be hidden ({reason}); run the agent as root to give each app its own user",
                crate::sandbox::UNIX_SOCKETS_CONFINED_FROM_ABI
            )),
            Isolation::None { .. } => Some(
                "apps can read the agent's state directory and each other's files; run the agent as root, or on a kernel with Landlock".to_owned(),
            ),
            _ => None,
        }
    }

    /// The confinement of a process of the app environment that `user` was allocated to, with
    /// `temp_dir` as its private folder.
    pub fn confinement(&self, user: AppUser, temp_dir: PathBuf) -> Confinement {
        Confinement {
            user: matches!(self, Isolation::Users).then_some(user),
            sandbox: match self {
                Isolation::Landlock { exe, .. } => Some(exe.clone()),
                _ => None,
            },
            hide: match self {
                Isolation::Landlock { hidden, .. } => hidden.clone(),
                _ => Vec::new(),
            },
            temp_dir: Some(temp_dir),
            container_user: None,
            cgroup: None,
            nice: None,
        }
    }
}

impl Confinement {
    /// `/bin/sh -c COMMAND` in `workdir`, confined. The caller sets the environment (clear it,
    /// then add [`Confinement::env`]) and the standard streams.
    ///
    /// With a user, std's `uid`/`gid` switch after fork; when the parent is root and no groups are
    /// given, std also calls `setgroups(0, NULL)`, so the process keeps none of root's
    /// supplementary groups.
    pub fn command(&self, command: &str, workdir: &Path) -> tokio::process::Command {
        #[allow(
            clippy::disallowed_methods,
            reason = "the one place app processes are built, confined"
        )]
        let mut process = match &self.sandbox {
            Some(exe) => {
                let mut process = tokio::process::Command::new(exe);
                process.arg("sandbox");
                for folder in std::iter::once(workdir).chain(self.temp_dir.as_deref()) {
                    process.arg("--allow-rw").arg(folder);
                }
                for hidden in &self.hide {
                    process.arg("--hide").arg(hidden);
                }
                process.arg("--").arg("/bin/sh");
                process
            }
            None => tokio::process::Command::new("/bin/sh"),
        };
        process.arg("-c").arg(command).current_dir(workdir);
        if let Some(user) = self.user {
            process.uid(user.uid).gid(user.gid);
        }
        if let Some(group) = &self.cgroup {
            match group.joiner() {
                // SAFETY: the closure runs in the forked child before exec and makes one write(2)
                // of a constant to a descriptor opened before the fork (async-signal-safe: no
                // allocation, no lock). A failure fails the spawn with the kernel's error.
                #[allow(unsafe_code)]
                Ok(joiner) => unsafe {
                    process.pre_exec(move || joiner.join());
                },
                Err(error) => tracing::warn!(
                    message = "Cannot place an app process in the apps' cgroup; it runs in the agent's.",
                    error = %error,
                    source = %std::error::Error::source(&error).map(ToString::to_string).unwrap_or_default(),
                ),
            }
        }
        if let Some(nice) = self.nice {
            // SAFETY: the closure runs in the forked child before exec and makes one
            // setpriority(2) call with a value computed before the fork (async-signal-safe: no
            // allocation, no lock). Lowering needs no right; a refusal fails the spawn.
            #[allow(unsafe_code)]
            unsafe {
                process.pre_exec(move || crate::priority::set_thread_nice(nice));
            }
        }
        process
    }

    /// Makes the private temp folder (0700, owned by the app's user). Kept between starts, like
    /// a home folder.
    pub fn prepare(&self) -> std::io::Result<()> {
        let Some(dir) = &self.temp_dir else {
            return Ok(());
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        if let Some(user) = self.user {
            std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid))?;
        }
        Ok(())
    }

    /// `HOME` and `TMPDIR` of the process: its private folder, when it has one; and when it runs as
    /// a user of its own, `PATH` as that user can use it ([`path_for_other_users`]). These take the
    /// place of the agent's own values of the same names.
    pub fn env(&self) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = self
            .temp_dir
            .iter()
            .flat_map(|dir| {
                [
                    (OsString::from("HOME"), dir.as_os_str().to_owned()),
                    (OsString::from("TMPDIR"), dir.as_os_str().to_owned()),
                ]
            })
            .collect();
        if self.user.is_some()
            && let Some(path) = std::env::var_os("PATH")
        {
            env.push((OsString::from("PATH"), path_for_other_users(&path)));
        }
        env
    }

    /// The environment an app's process starts from, before its own variables: the agent's
    /// [`PASSED_THROUGH_VARIABLES`], with [`Confinement::env`]'s values in place of the agent's
    /// where it has them. The one place builds, release commands, one-offs, backup checks and
    /// instances get it from.
    pub fn inherited_env(&self) -> Vec<(OsString, OsString)> {
        let private = self.env();
        let mut env: Vec<(OsString, OsString)> = passed_through_env()
            .into_iter()
            .filter(|(name, _)| !private.iter().any(|(private, _)| private == name))
            .collect();
        env.extend(private);
        env
    }
}

/// Variables passed from the agent's own environment to every process it starts for an app (builds,
/// release commands, one-offs, backups, instances); nothing else of the agent's environment leaks in.
pub const PASSED_THROUGH_VARIABLES: [&str; 4] = ["PATH", "HOME", "LANG", "TZ"];

/// The agent's values of [`PASSED_THROUGH_VARIABLES`] that are set, for a process the agent runs as
/// itself (`pg_dump`); an app's processes get [`Confinement::inherited_env`] instead.
pub fn passed_through_env() -> Vec<(OsString, OsString)> {
    PASSED_THROUGH_VARIABLES
        .iter()
        .filter_map(|name| Some((OsString::from(name), std::env::var_os(name)?)))
        .collect()
}

/// The agent's `PATH` as a process of another user should get it: without the folders that user
/// cannot enter (root's `~/.cargo/bin`, `~/.pyenv/shims`: exec skips them anyway, but they would
/// tell the app where root keeps its tools). Entries are kept in order; relative ones are dropped.
pub fn path_for_other_users(path: &std::ffi::OsStr) -> OsString {
    let kept: Vec<PathBuf> = std::env::split_paths(path)
        .filter(|entry| entry.is_absolute() && first_uncrossable(entry).is_none())
        .collect();
    std::env::join_paths(kept).unwrap_or_default()
}

/// A folder that users other than its owner and group may not enter (no `x` for others).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uncrossable {
    pub dir: PathBuf,
    pub mode: u32,
}

/// The first folder on the way to `path` (itself included, symbolic links resolved) that another
/// user may not cross, going by the mode bits for others (an app's user owns none of them, and no
/// group of theirs is an app's). A path that cannot be resolved is its own answer, mode 0.
pub fn first_uncrossable(path: &Path) -> Option<Uncrossable> {
    use std::os::unix::fs::PermissionsExt as _;
    let resolved = match std::fs::canonicalize(path) {
        Ok(resolved) => resolved,
        Err(_) => {
            return Some(Uncrossable {
                dir: path.to_path_buf(),
                mode: 0,
            });
        }
    };
    let mut ancestors: Vec<&Path> = resolved.ancestors().collect();
    ancestors.reverse();
    ancestors.into_iter().find_map(|dir| {
        let mode = std::fs::metadata(dir)
            .map(|metadata| metadata.permissions().mode() & 0o7777)
            .unwrap_or(0);
        (mode & 0o001 == 0).then(|| Uncrossable {
            dir: dir.to_path_buf(),
            mode,
        })
    })
}

#[cfg(test)]
mod tests;
