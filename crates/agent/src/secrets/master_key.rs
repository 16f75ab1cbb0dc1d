//! Where the master key lives: never beside the database it protects.
//!
//! Whoever reads the state directory (the store with every sealed secret) must not find the key
//! there too. The key comes, in this order, from `--master-key FILE`, `ROLLWAY_MASTER_KEY`, a
//! systemd credential (`$CREDENTIALS_DIRECTORY/master.key`, `LoadCredential=`), or the default
//! file outside the state directory (`/etc/rollway/master.key` for root,
//! `$XDG_CONFIG_HOME/rollway/master.key` otherwise). A `master.key` that an earlier version left
//! in the state directory is moved to the key file on the first start (or removed when the key
//! in use is the same). This module does no decryption; it only finds, makes and moves keys.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::{MASTER_KEY_FILE, MASTER_KEY_VAR, MasterKey, SecretError, parse_key};

/// The places a master key may come from, read once from the process's environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySources {
    /// `--master-key FILE`: made when missing.
    pub file: Option<PathBuf>,
    /// The value of `ROLLWAY_MASTER_KEY`, if set. Never printed.
    pub variable: Option<Zeroizing<String>>,
    /// systemd's `$CREDENTIALS_DIRECTORY`; its `master.key` is used when present (never made:
    /// the directory is read-only).
    pub credentials_dir: Option<PathBuf>,
    /// The file used when nothing else names a key: made when missing.
    pub default_file: PathBuf,
}

/// Where the key in use came from, for the agent's start-up line. Holds no key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    File(PathBuf),
    Variable,
    Credential(PathBuf),
}

/// The key, where it came from, and what happened to a key file left in the state directory.
#[derive(Debug)]
pub struct LoadedKey {
    pub key: MasterKey,
    pub origin: KeyOrigin,
    /// `Some((from, to))` when this start moved the state directory's `master.key` out.
    pub moved: Option<(PathBuf, PathBuf)>,
}

impl KeySources {
    /// From the process environment; `file` is `--master-key`.
    pub fn from_env(file: Option<PathBuf>) -> KeySources {
        KeySources {
            file,
            variable: std::env::var(MASTER_KEY_VAR).ok().map(Zeroizing::new),
            credentials_dir: std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
            default_file: default_key_file(),
        }
    }
}

impl std::fmt::Display for KeyOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyOrigin::File(path) => write!(f, "`{}`", path.display()),
            KeyOrigin::Variable => write!(f, "`{MASTER_KEY_VAR}`"),
            KeyOrigin::Credential(path) => write!(f, "the credential `{}`", path.display()),
        }
    }
}

/// `/etc/rollway/master.key` for root; `$XDG_CONFIG_HOME/rollway/master.key` (or
/// `~/.config/rollway/master.key`) for anyone else.
pub fn default_key_file() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/etc/rollway").join(MASTER_KEY_FILE);
    }
    let config_home = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|path| path.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))
        .unwrap_or_else(|| PathBuf::from(".config"));
    config_home.join("rollway").join(MASTER_KEY_FILE)
}

/// Finds (or makes) the master key and moves a `master.key` out of `state_dir`.
/// The master key [`load`] would use, refused instead of made when its file is missing (restoring
/// state needs the key the state was sealed with, never a new one).
pub fn load_existing(sources: &KeySources, state_dir: &Path) -> Result<LoadedKey, SecretError> {
    let credential = sources
        .credentials_dir
        .as_ref()
        .map(|dir| dir.join(MASTER_KEY_FILE))
        .filter(|path| path.exists());
    let file = match (&sources.file, &sources.variable, credential) {
        (Some(file), _, _) => Some(file.clone()),
        (None, Some(_), _) | (None, None, Some(_)) => None,
        (None, None, None) => Some(sources.default_file.clone()),
    };
    if let Some(file) = file
        && !file.exists()
    {
        return Err(SecretError::KeyFile {
            path: file.display().to_string(),
            source: std::io::ErrorKind::NotFound.into(),
        });
    }
    load(sources, state_dir)
}

pub fn load(sources: &KeySources, state_dir: &Path) -> Result<LoadedKey, SecretError> {
    let legacy = state_dir.join(MASTER_KEY_FILE);
    let legacy_exists = legacy.exists();
    let (origin, key_file) = if let Some(file) = &sources.file {
        (KeyOrigin::File(file.clone()), Some(file.clone()))
    } else if sources.variable.is_some() {
        (KeyOrigin::Variable, None)
    } else if let Some(credential) = sources
        .credentials_dir
        .as_ref()
        .map(|dir| dir.join(MASTER_KEY_FILE))
        .filter(|path| path.exists())
    {
        (KeyOrigin::Credential(credential), None)
    } else {
        let file = sources.default_file.clone();
        (KeyOrigin::File(file.clone()), Some(file))
    };
    if let Some(file) = &key_file
        && is_inside(file, state_dir)
    {
        return Err(SecretError::KeyInStateDir {
            path: file.display().to_string(),
        });
    }

    let mut moved = None;
    let key = match (&origin, &key_file) {
        (KeyOrigin::Variable, _) => sources
            .variable
            .as_ref()
            .and_then(|text| parse_key(text.trim()))
            .ok_or(SecretError::BadKeyVar)?,
        (KeyOrigin::Credential(path), _) => {
            read_key(path)?.ok_or_else(|| SecretError::KeyFile {
                path: path.display().to_string(),
                source: std::io::ErrorKind::NotFound.into(),
            })?
        }
        (KeyOrigin::File(_), Some(file)) => match read_key(file)? {
            Some(key) => key,
            None if legacy_exists => {
                // The key an earlier version kept beside the database: same key, new place.
                let key = read_key(&legacy)?.ok_or_else(|| SecretError::KeyFile {
                    path: legacy.display().to_string(),
                    source: std::io::ErrorKind::NotFound.into(),
                })?;
                write_key(file, &key)?;
                moved = Some((legacy.clone(), file.clone()));
                key
            }
            None => {
                let key = MasterKey::generate();
                write_key(file, &key)?;
                key
            }
        },
        (KeyOrigin::File(path), None) => {
            return Err(SecretError::KeyFile {
                path: path.display().to_string(),
                source: std::io::ErrorKind::NotFound.into(),
            });
        }
    };

    if legacy_exists {
        if moved.is_none() {
            // A key file in the state directory that is not the key in use would be a second
            // secret beside the database (and a confusing one): refuse rather than guess.
            match read_key(&legacy)? {
                Some(old) if *old.0 == *key.0 => {}
                _ => {
                    return Err(SecretError::ConflictingKeys {
                        legacy: legacy.display().to_string(),
                        origin: origin.to_string(),
                    });
                }
            }
        }
        std::fs::remove_file(&legacy).map_err(|source| SecretError::KeyFile {
            path: legacy.display().to_string(),
            source,
        })?;
    }
    Ok(LoadedKey { key, origin, moved })
}

/// Whether `file` is in `dir` or below it (symbolic links resolved where they exist).
fn is_inside(file: &Path, dir: &Path) -> bool {
    let resolve = |path: &Path| std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = resolve(dir);
    let file = match (file.parent(), file.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => resolve(parent).join(name),
        _ => resolve(file),
    };
    file.starts_with(&dir)
}

/// The key in `path`, `None` when the file does not exist.
fn read_key(path: &Path) -> Result<Option<MasterKey>, SecretError> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let text = Zeroizing::new(text);
            parse_key(text.trim())
                .map(Some)
                .ok_or_else(|| SecretError::BadKeyFile {
                    path: path.display().to_string(),
                })
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(SecretError::KeyFile {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// Writes a new key file (0600, in a 0700 folder made when missing); never replaces one.
fn write_key(path: &Path, key: &MasterKey) -> Result<(), SecretError> {
    let error = |source| SecretError::KeyFile {
        path: path.display().to_string(),
        source,
    };
    if let Some(parent) = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(error)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(error)?;
    file.write_all(Zeroizing::new(hex::encode(*key.0)).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(error)
}

#[cfg(test)]
mod tests;
