//! How a container gets its environment without the engine ever seeing it: a shell file on a
//! tmpfs the agent owns, bind-mounted read-only, sourced by a two-line entrypoint before the
//! real command is exec'd.
//!
//! The engine's container config (`docker inspect`) therefore holds only `PORT`. Nothing here
//! touches the engine; the file is written before the container is created and removed after it.

use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where the env file appears inside the container.
pub(crate) const MOUNT_PATH: &str = "/run/rollway/env";

/// The entrypoint: `/bin/sh -c SCRIPT rollway-entrypoint <command...>`. It sources the env file
/// (whose lines are `export NAME='value'`), then replaces itself with the command, so the app is
/// the one that gets the stop signal.
pub(crate) const ENTRYPOINT_SCRIPT: &str = ". /run/rollway/env && exec \"$@\"";

/// The `$0` of the entrypoint shell, as shown in `ps` until the `exec`.
pub(crate) const ENTRYPOINT_NAME: &str = "rollway-entrypoint";

/// `tmpfs` and `ramfs`: the file systems whose contents never reach a disk.
const MEMORY_FILE_SYSTEMS: [u64; 2] = [0x0102_1994, 0x8584_58f6];

/// Who must be able to read the env file inside the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reader {
    /// The image runs as root (no `USER`, or `root`/`0`): mode 0600 owned by the agent suffices,
    /// since root reads it anyway.
    Root,
    /// The image runs as this numeric uid: mode 0600 and owned by that uid when the agent may
    /// change owners (it runs as root), else mode 0644.
    Uid(u32),
    /// A user named in the image (`USER app`), whose uid only the image's `/etc/passwd` knows:
    /// mode 0644. The directory holding the file is 0700, so no other host user can open it.
    Named,
}

impl Reader {
    /// From the image's `Config.User`: `""`, `root`, `0`, `1000`, `1000:1000`, `app`, `app:app`.
    pub(crate) fn of_image_user(user: Option<&str>) -> Reader {
        let user = user.unwrap_or("").trim();
        let name = user.split(':').next().unwrap_or("");
        match name {
            "" | "root" | "0" => Reader::Root,
            _ => match name.parse::<u32>() {
                Ok(uid) => Reader::Uid(uid),
                Err(_) => Reader::Named,
            },
        }
    }
}

/// Creates the env directory (mode 0700) and checks that it is on a tmpfs, so that secrets never
/// reach a disk. `Err` names what is wrong.
pub(crate) fn prepare_dir(dir: &Path) -> Result<(), String> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|error| format!("cannot create it: {error}"))?;
    let metadata = std::fs::metadata(dir).map_err(|error| format!("cannot stat it: {error}"))?;
    let agent_uid = rustix::process::geteuid().as_raw();
    if metadata.uid() != agent_uid {
        // Someone else could read or swap the files (`/dev/shm` is writable by everyone).
        return Err(format!(
            "it belongs to uid {}, not to the agent's uid {agent_uid}",
            metadata.uid()
        ));
    }
    if metadata.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|error| format!("cannot make it private (mode 0700): {error}"))?;
    }
    let statfs = rustix::fs::statfs(dir).map_err(|error| format!("cannot statfs it: {error}"))?;
    // `f_type` is signed on some targets; the magic numbers fit in 32 bits.
    #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
    let file_system = (statfs.f_type as i64) as u64 & 0xffff_ffff;
    if MEMORY_FILE_SYSTEMS.contains(&file_system) {
        Ok(())
    } else {
        Err(format!(
            "it is not on a tmpfs (file system type {file_system:#x}); secrets would reach a disk"
        ))
    }
}

/// The file of one container, `<dir>/<container name>.env`.
pub(crate) fn path(dir: &Path, container_name: &str) -> PathBuf {
    dir.join(format!("{container_name}.env"))
}

/// The names in `env` that cannot be exported by a POSIX shell.
pub(crate) fn invalid_names(env: &[(String, String)]) -> Vec<String> {
    env.iter()
        .map(|(name, _)| name)
        .filter(|name| !is_shell_identifier(name))
        .cloned()
        .collect()
}

/// The file's text: one `export NAME='value'` line per variable, `PORT` left out (the engine sets
/// it, and it is not secret).
pub(crate) fn render(env: &[(String, String)]) -> String {
    let mut text = String::new();
    for (name, value) in env {
        if name == "PORT" {
            continue;
        }
        text.push_str("export ");
        text.push_str(name);
        text.push('=');
        text.push_str(&single_quote(value));
        text.push('\n');
    }
    text
}

/// Writes the env file through a temporary file and a rename (so a reader never sees half of
/// it), created with its final mode so it is never readable by others, even for a moment.
pub(crate) fn write(path: &Path, env: &[(String, String)], reader: Reader) -> io::Result<()> {
    let agent_uid = rustix::process::geteuid().as_raw();
    let (mode, owner) = match reader {
        Reader::Root => (0o600, None),
        Reader::Uid(uid) if uid == agent_uid => (0o600, None),
        Reader::Uid(uid) if agent_uid == 0 => (0o600, Some(uid)),
        Reader::Uid(_) | Reader::Named => (0o644, None),
    };
    let temporary = path.with_extension("env.tmp");
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(mode)
        .open(&temporary)?;
    if let Some(uid) = owner {
        std::os::unix::fs::fchown(&file, Some(uid), None)?;
    }
    file.write_all(render(env).as_bytes())?;
    drop(file);
    std::fs::rename(&temporary, path)
}

/// Removes the env file; one already gone is fine.
pub(crate) fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

fn is_shell_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `'...'` with every `'` written as `'\''`: the shell reads the value back byte for byte,
/// newlines, `$` and backslashes included.
fn single_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}
