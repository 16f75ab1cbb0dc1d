//! CPU placement: the proxy and the app processes in cgroups of their own, beside the agent's, with
//! the proxy's CPU weight above the apps', so that busy apps cannot starve the proxy (issue 20).
//!
//! It needs cgroup v2 and a subtree delegated to the agent: under systemd, the unit's
//! `Delegate=cpu` (or `yes`) with `DelegateSubgroup=agent` (systemd 254 and later, see
//! deploy/rollway-agent.service) puts the agent in `<unit>/agent`, and the agent makes the siblings:
//!
//! ```text
//! rollway-agent.service/   delegated (`trusted.delegate`); the agent turns on `+cpu` below it
//!   agent/                 the agent itself (systemd placed it here)         cpu.weight 100
//!   proxy/                 every proxy process                               cpu.weight 1000
//!   apps/                  every app process of the process driver           cpu.weight 100
//! ```
//!
//! The unit's own cgroup never holds a process, so the kernel's "no internal processes" rule lets
//! the controllers be on there, and a restart of the agent (systemd attaches the new one to
//! `agent/`) works while the proxy and the apps keep running in theirs. Anywhere else (no systemd,
//! cgroup v1 or hybrid hosts, a unit without delegation) the agent places nothing and says why in
//! one log line: every process then shares the agent's cgroup, and the proxy raises its own
//! scheduling priority instead (`crate::priority`), as it does when the groups are not weighted.
//!
//! Processes join at exec: [`Group::joiner`] opens the group's `cgroup.procs` in the agent, and the
//! child writes `0` ("this process") to it between fork and exec ([`Joiner::join`]), so nothing an
//! app forks can stay behind in the agent's group. The file was opened by the agent, so the kernel
//! checks the agent's rights (open-time credentials, Linux 5.16 and later) even when the child has
//! already switched to the app's user.

use std::ffi::OsStr;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

/// `cpu.weight` of the proxy's group (cgroup v2: 1 to 10000, the kernel's default 100).
pub const PROXY_WEIGHT: u32 = 1000;
/// `cpu.weight` of the apps' group: the default, a tenth of the proxy's.
pub const APPS_WEIGHT: u32 = 100;
/// `cpu.weight` of the agent's own group.
pub const AGENT_WEIGHT: u32 = 100;

/// The sibling groups the agent makes beside its own.
pub const PROXY_GROUP: &str = "proxy";
pub const APPS_GROUP: &str = "apps";

/// One cgroup (v2) that processes are put in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    dir: PathBuf,
}

/// Where the agent puts the proxy and the apps, decided once when it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// The proxy and the apps in groups of their own, beside the agent's.
    Split {
        proxy: Group,
        apps: Group,
        /// The CPU weights are set (the `cpu` controller is on in the parent); without it the
        /// groups only separate, and `describe` says so.
        weighted: bool,
    },
    /// Nothing is placed: every process stays in the agent's cgroup.
    Off { reason: String },
}

/// A group's `cgroup.procs`, opened in the agent, for a child to join between fork and exec.
#[derive(Debug)]
pub struct Joiner {
    procs: OwnedFd,
}

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot {what} `{path}`")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CgroupError {
    let path = path.display().to_string();
    move |source| CgroupError::Io { what, path, source }
}

impl Group {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Opens the group's `cgroup.procs` for [`Joiner::join`] (close-on-exec: the app never gets
    /// the descriptor).
    pub fn joiner(&self) -> Result<Joiner, CgroupError> {
        let path = self.dir.join("cgroup.procs");
        let procs = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_error("open for writing", &path))?;
        Ok(Joiner {
            procs: procs.into(),
        })
    }

    /// Moves the running process `pid` (all its threads) into the group.
    pub fn add(&self, pid: u32) -> Result<(), CgroupError> {
        let path = self.dir.join("cgroup.procs");
        std::fs::write(&path, pid.to_string()).map_err(io_error("write a pid to", &path))
    }
}

impl Joiner {
    /// Puts the calling process in the group. Meant for `pre_exec`: one write(2) of a constant to a
    /// descriptor opened before the fork, which is async-signal-safe (no allocation, no lock).
    pub fn join(&self) -> io::Result<()> {
        rustix::io::write(&self.procs, b"0")
            .map(drop)
            .map_err(io::Error::from)
    }
}

impl Placement {
    /// Looks at this process's cgroup: splits when it is a cgroup v2 group whose parent was
    /// delegated (systemd's `trusted.delegate` or `user.delegate` attribute), else says why not.
    pub fn detect() -> Placement {
        let Some(mount) = cgroup2_mount() else {
            return off("no cgroup v2 hierarchy is mounted (a cgroup v1 host)");
        };
        let own = match std::fs::read_to_string("/proc/self/cgroup") {
            Ok(text) => text,
            Err(error) => return off(&format!("cannot read /proc/self/cgroup: {error}")),
        };
        let Some(relative) = own.lines().find_map(|line| line.strip_prefix("0::")) else {
            return off(
                "this process is in no cgroup v2 group (/proc/self/cgroup has no `0::` line)",
            );
        };
        let relative = relative.trim_start_matches('/');
        let agent = mount.join(relative);
        let Some(parent) = agent.parent().filter(|_| !relative.is_empty()) else {
            return off(&format!(
                "the agent runs in the root cgroup `{}`; run it as a systemd unit with `Delegate=cpu` and `DelegateSubgroup=agent` (deploy/rollway-agent.service)",
                agent.display()
            ));
        };
        if !is_delegated(parent) {
            return off(&format!(
                "`{}` is not delegated to the agent; run it as a systemd unit with `Delegate=cpu` and `DelegateSubgroup=agent` (systemd 254 or later, deploy/rollway-agent.service)",
                parent.display()
            ));
        }
        match Placement::split(&agent) {
            Ok(placement) => placement,
            Err(error) => off(&match std::error::Error::source(&error) {
                Some(source) => format!("{error}: {source}"),
                None => error.to_string(),
            }),
        }
    }

    /// Makes `proxy` and `apps` beside the agent's group `agent` (whose parent must hold no
    /// process), turns the `cpu` controller on in the parent when it is available there, and sets
    /// the weights. Safe to repeat: existing groups are reused (a restarted agent).
    pub fn split(agent: &Path) -> Result<Placement, CgroupError> {
        let parent = agent.parent().unwrap_or(agent);
        let available = std::fs::read_to_string(parent.join("cgroup.controllers"))
            .map_err(io_error("read", &parent.join("cgroup.controllers")))?;
        let weighted = available.split_whitespace().any(|name| name == "cpu");
        if weighted {
            let control = parent.join("cgroup.subtree_control");
            let on = std::fs::read_to_string(&control).map_err(io_error("read", &control))?;
            if !on.split_whitespace().any(|name| name == "cpu") {
                std::fs::write(&control, "+cpu")
                    .map_err(io_error("turn on `+cpu` in", &control))?;
            }
        }
        let make = |dir: PathBuf, weight: u32| -> Result<Group, CgroupError> {
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {}
                Err(error) => return Err(io_error("create the cgroup", &dir)(error)),
            }
            if weighted {
                let file = dir.join("cpu.weight");
                std::fs::write(&file, weight.to_string()).map_err(io_error("write", &file))?;
            }
            Ok(Group { dir })
        };
        make(agent.to_path_buf(), AGENT_WEIGHT)?;
        Ok(Placement::Split {
            proxy: make(parent.join(PROXY_GROUP), PROXY_WEIGHT)?,
            apps: make(parent.join(APPS_GROUP), APPS_WEIGHT)?,
            weighted,
        })
    }

    pub fn proxy(&self) -> Option<&Group> {
        match self {
            Placement::Split { proxy, .. } => Some(proxy),
            Placement::Off { .. } => None,
        }
    }

    /// Whether the proxy's group is weighted above the apps' (else the proxy raises its own
    /// priority, `crate::priority`).
    pub fn weighted(&self) -> bool {
        matches!(self, Placement::Split { weighted: true, .. })
    }

    pub fn apps(&self) -> Option<&Group> {
        match self {
            Placement::Split { apps, .. } => Some(apps),
            Placement::Off { .. } => None,
        }
    }

    /// One line for the agent's log.
    pub fn describe(&self) -> String {
        match self {
            Placement::Split {
                proxy,
                apps,
                weighted: true,
            } => format!(
                "the proxy in `{}` (cpu.weight {PROXY_WEIGHT}), apps in `{}` (cpu.weight {APPS_WEIGHT})",
                proxy.dir.display(),
                apps.dir.display()
            ),
            Placement::Split {
                proxy,
                apps,
                weighted: false,
            } => format!(
                "the proxy in `{}`, apps in `{}`, without CPU weights: the `cpu` controller is not delegated; the proxy raises its priority instead (nice {})",
                proxy.dir.display(),
                apps.dir.display(),
                crate::priority::PROXY_NICE
            ),
            Placement::Off { reason } => format!(
                "off, the proxy and the apps share the agent's cgroup: {reason}; the proxy raises its priority instead (nice {})",
                crate::priority::PROXY_NICE
            ),
        }
    }
}

fn off(reason: &str) -> Placement {
    Placement::Off {
        reason: reason.to_owned(),
    }
}

/// The mount point of the cgroup v2 hierarchy (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a
/// hybrid host), from /proc/self/mountinfo.
fn cgroup2_mount() -> Option<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    text.lines().find_map(|line| {
        // `ID PARENT MAJ:MIN ROOT MOUNT_POINT OPTIONS... - FSTYPE SOURCE SUPER_OPTIONS`
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next() == Some("cgroup2"))
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// systemd marks a delegated cgroup with the extended attribute `trusted.delegate` (system units)
/// or `user.delegate` (user units) set to `1`.
fn is_delegated(dir: &Path) -> bool {
    ["trusted.delegate", "user.delegate"].iter().any(|name| {
        let mut value = [0u8; 8];
        matches!(
            rustix::fs::getxattr(dir, OsStr::new(name), &mut value[..]),
            Ok(n) if value[..n] == *b"1"
        )
    })
}

#[cfg(test)]
mod tests;
