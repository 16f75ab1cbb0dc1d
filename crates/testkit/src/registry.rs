//! A throwaway image registry for the swarm tests: Debian's `docker-registry` (the CNCF
//! distribution registry) serving HTTP on a free port of 127.0.0.1, storing in a temporary
//! folder; dropping it kills it and removes the folder.
//!
//! The engine pushes to and pulls from `127.0.0.1:PORT` without TLS: it treats loopback
//! registries as insecure-allowed by default. [`Registry::start_with_auth`] asks for a user
//! and password (htpasswd, bcrypt: `htpasswd` from apache2-utils, which scripts/test installs).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running registry.
pub struct Registry {
    child: Child,
    dir: PathBuf,
    port: u16,
}

/// Why no registry runs.
#[derive(Debug)]
pub enum RegistryError {
    /// `docker-registry` is not installed (scripts/test installs it).
    NotInstalled,
    /// `htpasswd` is not installed or failed (apache2-utils; scripts/test installs it).
    Htpasswd(String),
    Start(String),
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegistryError::NotInstalled => write!(
                f,
                "`docker-registry` is not installed (Debian package docker-registry; scripts/test installs it)"
            ),
            RegistryError::Htpasswd(reason) => write!(
                f,
                "cannot write the registry's password file with `htpasswd` (Debian package apache2-utils; scripts/test installs it): {reason}"
            ),
            RegistryError::Start(reason) => write!(f, "cannot start `docker-registry`: {reason}"),
        }
    }
}

impl Registry {
    /// Starts a registry and waits until it answers `GET /v2/`.
    pub fn start() -> Result<Registry, RegistryError> {
        Registry::start_inner(None)
    }

    /// Starts a registry that accepts only `user` with `password` (HTTP basic auth).
    pub fn start_with_auth(user: &str, password: &str) -> Result<Registry, RegistryError> {
        Registry::start_inner(Some((user, password)))
    }

    fn start_inner(auth: Option<(&str, &str)>) -> Result<Registry, RegistryError> {
        let binary = ["/usr/bin/docker-registry", "/usr/sbin/docker-registry"]
            .into_iter()
            .map(PathBuf::from)
            .find(|path| path.is_file())
            .ok_or(RegistryError::NotInstalled)?;
        let port =
            crate::demo::free_port().map_err(|error| RegistryError::Start(error.to_string()))?;
        let dir =
            std::env::temp_dir().join(format!("rollway-registry-{}-{port}", std::process::id()));
        std::fs::create_dir_all(dir.join("data")).map_err(|error| {
            RegistryError::Start(format!("create `{}`: {error}", dir.display()))
        })?;
        let config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        );
        let config = match auth {
            None => config,
            Some((user, password)) => {
                let htpasswd = dir.join("htpasswd");
                // The password on stdin (`-i`), never in argv.
                let mut child = Command::new("htpasswd")
                    .args(["-niB", user])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|error| RegistryError::Htpasswd(error.to_string()))?;
                if let Some(mut stdin) = child.stdin.take() {
                    stdin
                        .write_all(password.as_bytes())
                        .map_err(|error| RegistryError::Htpasswd(error.to_string()))?;
                }
                let output = child
                    .wait_with_output()
                    .map_err(|error| RegistryError::Htpasswd(error.to_string()))?;
                if !output.status.success() {
                    return Err(RegistryError::Htpasswd(
                        String::from_utf8_lossy(&output.stderr).into_owned(),
                    ));
                }
                std::fs::write(&htpasswd, &output.stdout).map_err(|error| {
                    RegistryError::Start(format!("write `{}`: {error}", htpasswd.display()))
                })?;
                format!(
                    "{config}auth:\n  htpasswd:\n    realm: rollway-tests\n    path: {}\n",
                    htpasswd.display()
                )
            }
        };
        let config_path = dir.join("config.yml");
        std::fs::write(&config_path, config)
            .map_err(|error| RegistryError::Start(format!("write the config: {error}")))?;
        let log = std::fs::File::create(dir.join("registry.log"))
            .map_err(|error| RegistryError::Start(format!("create the log: {error}")))?;
        let child = Command::new(&binary)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|error| {
                RegistryError::Start(format!("run `{}`: {error}", binary.display()))
            })?;
        let mut registry = Registry { child, dir, port };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !registry.answers() {
            if let Ok(Some(status)) = registry.child.try_wait() {
                let log =
                    std::fs::read_to_string(registry.dir.join("registry.log")).unwrap_or_default();
                return Err(RegistryError::Start(format!(
                    "it exited with {status}: {log}"
                )));
            }
            if Instant::now() > deadline {
                return Err(RegistryError::Start(
                    "it did not answer within 20s".to_owned(),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(registry)
    }

    /// `127.0.0.1:PORT`, the registry part of an image reference.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = "GET /v2/ HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        // 401: it asks for credentials, as one started with them does.
        answer.starts_with("HTTP/1.1 200") || answer.starts_with("HTTP/1.1 401")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
