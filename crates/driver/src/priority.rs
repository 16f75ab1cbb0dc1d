//! The proxy's scheduling priority: the CPU placement's fallback where no cgroup weights the proxy
//! above the apps (no systemd, cgroup v1 or hybrid hosts, a unit without delegation; see `cgroup`).
//!
//! It raises the proxy only, to nice [`PROXY_NICE`]: the apps keep the priority they were started
//! with (the agent's), so they are never put below other software on the host. The proxy is raised
//! above everything else at nice 0 on the host by the same factor (about 3x the CPU share when they
//! compete), which is what nginx's `worker_priority` and HAProxy's `nice` do when an operator sets
//! them. It does not change the cgroup placement, and it does nothing where the proxy's cgroup is
//! weighted (there the weight already decides, and nice only counts inside the proxy's own group).
//!
//! Two knobs, both set by the child between fork and exec, after its `setsid`, so every thread the
//! proxy starts inherits them:
//! - the nice value of the process (`setpriority`): weighs it against the tasks of its scheduling
//!   group;
//! - the nice value of its session's autogroup (`/proc/self/autogroup`): with the kernel's session
//!   autogroups on (`kernel.sched_autogroup_enabled = 1`, the default where the kernel has them), every
//!   session of the root cgroup is one scheduling group, weighed against the others (the agent's
//!   session with all the apps, other software's sessions) by that group's nice, and a task's own nice
//!   does not reach outside it. The proxy leads a session of its own, so the group is the proxy's.
//!
//! Raising needs `CAP_SYS_NICE` (or `RLIMIT_NICE`); without it both calls fail and the proxy runs at
//! the agent's priority. The child cannot log, so [`observe`] reads back what took effect.
//!
//! The same mechanism runs the deploy's own work *below* the serving instances, by
//! [`DEPLOY_LOWER`] nice levels (session 28, issue 20): the build, release and smoke commands
//! ([`set_thread_nice`] before exec), the agent's unpacking of an artifact ([`LoweredThread`]), and a new
//! instance from its start until it passes its health gate, when the agent promotes its process
//! group back to the agent's priority ([`promote_group`]) before it takes traffic. Lowering needs
//! no right; promoting back does (as raising), so a new instance is started lowered only where
//! [`may_restore`] says the promotion will succeed, and a thread is lowered only under the same
//! condition. Inside one scheduling group (the agent's session autogroup, or its cgroup) the
//! serving instances then weigh about 9x a new one (1024 against 110), so a deploy takes its CPU
//! from idle time first rather than from the requests being served.

use std::io;

/// The proxy's nice value where no cgroup weights it: as `PROXY_WEIGHT` is to `APPS_WEIGHT` in
/// spirit, a clear lead without real-time scheduling (the kernel's weight for -5 is 3121, for 0 1024).
pub const PROXY_NICE: i32 = -5;

/// [`PROXY_NICE`] as written to `/proc/self/autogroup` (formatted before any fork: the child may not
/// allocate).
const PROXY_NICE_TEXT: &[u8] = b"-5";

/// Raises the calling process to [`PROXY_NICE`], and its session's autogroup when the kernel has
/// them. Best effort: a refusal (no `CAP_SYS_NICE`) or a kernel without autogroups leaves that part
/// as it was. Meant for `pre_exec` after `setsid`: three system calls on a constant path and
/// constant bytes, async-signal-safe (no allocation, no lock).
pub fn raise_proxy() {
    let _ = rustix::process::setpriority_process(None, PROXY_NICE);
    // After `setsid` the autogroup is this session's own, so this never touches the agent's.
    if let Ok(file) = rustix::fs::open(
        c"/proc/self/autogroup",
        rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) {
        let _ = rustix::io::write(&file, PROXY_NICE_TEXT);
    }
}

/// How many nice levels below the agent the deploy's own work runs (nice 10 for an agent at 0: the
/// kernel's weight 110 against 1024, about a tenth of a serving instance's share when they compete).
pub const DEPLOY_LOWER: i32 = 10;

/// The lowest priority (highest nice value) Linux has.
const NICE_MAX: i32 = 19;

/// The nice value of the calling thread (the agent's threads all run at the agent's).
pub fn own_nice() -> i32 {
    rustix::process::getpriority_process(None).unwrap_or(0)
}

/// The nice value the deploy's own work starts at: [`DEPLOY_LOWER`] below the calling thread's,
/// `None` when that is the lowest already.
pub fn deploy_nice() -> Option<i32> {
    let own = own_nice();
    (own < NICE_MAX).then(|| (own + DEPLOY_LOWER).min(NICE_MAX))
}

/// Whether this process may set a nice value as low as `nice` (raise a priority back to it): with
/// `CAP_SYS_NICE`, or an `RLIMIT_NICE` whose ceiling (20 - the limit) reaches it.
pub fn may_restore(nice: i32) -> bool {
    if may_raise() {
        return true;
    }
    match rustix::process::getrlimit(rustix::process::Resource::Nice).current {
        None => true,
        Some(limit) => i64::from(20 - nice) <= i64::try_from(limit).unwrap_or(i64::MAX),
    }
}

/// The nice value a new instance starts at: [`deploy_nice`], where the agent may promote it back
/// ([`may_restore`] its own); `None` (start at the agent's) elsewhere.
pub fn instance_start_nice() -> Option<i32> {
    deploy_nice().filter(|_| may_restore(own_nice()))
}

/// Sets the calling thread's nice value to `nice` (lowering needs no right, raising back needs what
/// [`may_restore`] checks). Meant for `pre_exec` of a process started lowered (the child's only
/// thread then; its threads and children inherit it): one system call, async-signal-safe.
pub fn set_thread_nice(nice: i32) -> io::Result<()> {
    rustix::process::setpriority_process(None, nice).map_err(io::Error::from)
}

/// Sets every thread of every process of process group `pgid` to nice `nice`: how a new instance
/// (its own process group) is promoted back to the agent's priority once it passed its gate.
pub fn promote_group(pgid: u32, nice: i32) -> io::Result<()> {
    let pgid = i32::try_from(pgid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a process group id"))?;
    rustix::process::setpriority_pgrp(Some(pgid), nice).map_err(io::Error::from)
}

/// The calling thread lowered by [`DEPLOY_LOWER`] while this lives (for the agent's own deploy work
/// on a blocking thread, as unpacking an artifact), restored when it drops. It lowers nothing where
/// the restoring would be refused (no `CAP_SYS_NICE`, no `RLIMIT_NICE`): a pool thread left
/// lowered would run later work (store writes) lowered too. Keep it on one thread: it is not `Send`.
pub struct LoweredThread {
    restore: Option<i32>,
    _not_send: std::marker::PhantomData<*const ()>,
}

impl LoweredThread {
    pub fn new() -> LoweredThread {
        let own = own_nice();
        let restore = deploy_nice()
            .filter(|_| may_restore(own))
            .and_then(|nice| set_thread_nice(nice).ok())
            .map(|()| own);
        LoweredThread {
            restore,
            _not_send: std::marker::PhantomData,
        }
    }

    /// Whether the thread runs lowered now.
    pub fn lowered(&self) -> bool {
        self.restore.is_some()
    }
}

impl Default for LoweredThread {
    fn default() -> LoweredThread {
        LoweredThread::new()
    }
}

impl Drop for LoweredThread {
    fn drop(&mut self) {
        if let Some(own) = self.restore {
            let _ = set_thread_nice(own);
        }
    }
}

/// The scheduling priority a process runs at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// The nice value of its main thread.
    pub nice: i32,
    /// The nice value of its autogroup; `None` where the kernel has no autogroups.
    pub autogroup_nice: Option<i32>,
    /// Whether the kernel groups sessions now (`kernel.sched_autogroup_enabled`).
    pub autogroups_on: bool,
}

impl Observed {
    /// Whether the process runs at [`PROXY_NICE`] where it counts: its autogroup when the kernel
    /// groups sessions, else its own.
    pub fn raised(&self) -> bool {
        match self.autogroup_nice {
            Some(group) if self.autogroups_on => group <= PROXY_NICE && self.nice <= PROXY_NICE,
            _ => self.nice <= PROXY_NICE,
        }
    }

    /// One line for the agent's log.
    pub fn describe(&self) -> String {
        let group = match (self.autogroup_nice, self.autogroups_on) {
            (Some(group), true) => format!(", its session's autogroup at nice {group}"),
            (Some(_), false) | (None, _) => ", no session autogroups".to_owned(),
        };
        format!("nice {}{group}", self.nice)
    }
}

/// Reads the priority `pid` runs at, from `/proc/PID/stat` and `/proc/PID/autogroup`.
pub fn observe(pid: u32) -> io::Result<Observed> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let nice = parse_stat_nice(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/stat has no nice field"),
        )
    })?;
    let autogroup_nice = std::fs::read_to_string(format!("/proc/{pid}/autogroup"))
        .ok()
        .as_deref()
        .and_then(parse_autogroup_nice);
    let autogroups_on = std::fs::read_to_string("/proc/sys/kernel/sched_autogroup_enabled")
        .is_ok_and(|text| text.trim() == "1");
    Ok(Observed {
        nice,
        autogroup_nice,
        autogroups_on,
    })
}

/// Whether this process holds `CAP_SYS_NICE` (bit 23 of `CapEff` in /proc/self/status), which raising
/// needs.
pub fn may_raise() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << 23) != 0)
}

/// The 19th field of `/proc/PID/stat` (the command, field 2, may hold spaces and parentheses: fields
/// are counted after its last `)`).
fn parse_stat_nice(stat: &str) -> Option<i32> {
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts at field 3 (the state).
    rest.split_whitespace().nth(19 - 3)?.parse().ok()
}

/// `/autogroup-42 nice -5` -> -5.
fn parse_autogroup_nice(text: &str) -> Option<i32> {
    let (_, nice) = text.trim().rsplit_once(" nice ")?;
    nice.parse().ok()
}

#[cfg(test)]
mod tests;
