//! Pid files and `/proc`: which process an instance is, and whether it (or its group) still runs.
//!
//! A pid alone is not an identity: the kernel reuses pids. The pid file therefore holds the pid
//! and the process start time (field 22 of `/proc/<pid>/stat`, in clock ticks since boot), and a
//! process counts as ours only while both match. Zombies count as gone: an adopted instance may
//! still be a (dead, unreaped) child of whoever started it.

use std::io::{self, Write};
use std::path::Path;

/// A process as the kernel knows it: pid plus start time, so a reused pid never matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcessIdentity {
    pub(crate) pid: u32,
    /// Clock ticks since boot at which the process started.
    pub(crate) start_time: u64,
}

/// The fields of `/proc/<pid>/stat` the driver reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProcStat {
    /// `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub(crate) state: char,
    pub(crate) process_group: i64,
    pub(crate) start_time: u64,
}

impl ProcStat {
    fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// The identity of `pid` now, or `None` when no such process exists.
pub(crate) fn identity_of(pid: u32) -> Option<ProcessIdentity> {
    read_stat(pid).map(|stat| ProcessIdentity {
        pid,
        start_time: stat.start_time,
    })
}

/// True while the process runs: same pid, same start time, and not a zombie.
pub(crate) fn is_alive(identity: ProcessIdentity) -> bool {
    read_stat(identity.pid)
        .is_some_and(|stat| stat.start_time == identity.start_time && !stat.is_dead())
}

/// True while any live (non-zombie) process is in the process group `process_group`.
///
/// `kill(-pgid, 0)` answers "no such group" cheaply; when it says the group exists, `/proc` is
/// scanned because zombies (which nobody may ever reap in a container without an init) also
/// make `kill` succeed.
pub(crate) fn group_alive(process_group: u32) -> bool {
    let Some(pid) = rustix_pid(process_group) else {
        return false;
    };
    match rustix::process::test_kill_process_group(pid) {
        Err(rustix::io::Errno::SRCH) => false,
        // EPERM (a member we may not signal) or success: look closer.
        _ => group_has_live_member(process_group),
    }
}

/// Sends `signal` to every process of the group; a group that no longer exists is not an error.
pub(crate) fn signal_group(process_group: u32, signal: rustix::process::Signal) -> io::Result<()> {
    let Some(pid) = rustix_pid(process_group) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("process group {process_group} is not a positive i32"),
        ));
    };
    match rustix::process::kill_process_group(pid, signal) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(errno) => Err(errno.into()),
    }
}

/// Sends `signal` to one process; one that no longer exists is not an error.
pub(crate) fn signal_process(pid: u32, signal: rustix::process::Signal) -> io::Result<()> {
    let Some(raw_pid) = rustix_pid(pid) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("pid {pid} is not a positive i32"),
        ));
    };
    match rustix::process::kill_process(raw_pid, signal) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(errno) => Err(errno.into()),
    }
}

/// The process group `pid` is in, `None` when it no longer exists (or is a zombie).
pub(crate) fn process_group_of(pid: u32) -> Option<i64> {
    read_stat(pid)
        .filter(|stat| !stat.is_dead())
        .map(|stat| stat.process_group)
}

/// Writes `pid start_time\n` through a temporary file and a rename, so a reader (or an agent
/// killed mid-write) never sees half a pid file.
pub(crate) fn write_pid_file(path: &Path, identity: ProcessIdentity) -> io::Result<()> {
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary)?;
    writeln!(file, "{} {}", identity.pid, identity.start_time)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, path)
}

/// The identity recorded in the pid file; `None` when there is no pid file or it is unreadable
/// garbage (treated as "nothing runs").
pub(crate) fn read_pid_file(path: &Path) -> io::Result<Option<ProcessIdentity>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(parse_pid_file(&text)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}

/// Removes the pid file; one that is already gone is fine.
pub(crate) fn remove_pid_file(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

pub(crate) fn parse_pid_file(text: &str) -> Option<ProcessIdentity> {
    let mut fields = text.split_whitespace();
    let pid = fields.next()?.parse().ok()?;
    let start_time = fields.next()?.parse().ok()?;
    if fields.next().is_some() || pid == 0 {
        return None;
    }
    Some(ProcessIdentity { pid, start_time })
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may itself hold
/// spaces and parentheses, so the fields are counted from the last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<ProcStat> {
    let (_, after_name) = text.rsplit_once(')')?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // fields[0] is field 3 (state), so field N is fields[N - 3].
    let state = fields.first()?.chars().next()?;
    let process_group = fields.get(5 - 3)?.parse().ok()?;
    let start_time = fields.get(22 - 3)?.parse().ok()?;
    Some(ProcStat {
        state,
        process_group,
        start_time,
    })
}

fn read_stat(pid: u32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn group_has_live_member(process_group: u32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        // Without /proc there is nothing better than `kill`'s answer.
        return true;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(read_stat)
        .any(|stat| stat.process_group == i64::from(process_group) && !stat.is_dead())
}

fn rustix_pid(pid: u32) -> Option<rustix::process::Pid> {
    i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
}

#[cfg(test)]
mod tests;
