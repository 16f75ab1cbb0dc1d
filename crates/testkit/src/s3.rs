//! A real S3-compatible server for tests: `s3s-fs` (installed by `scripts/test`) on a free port
//! of `127.0.0.1`, storing objects as files in a temporary folder of its own, with the access key
//! and secret key the test gives it.
//!
//! It does not fake S3: requests are checked (SigV4) and served by `s3s-fs`. Dropping it kills
//! the server and removes its folder.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::{Child, Command};

/// A running `s3s-fs`.
#[derive(Debug)]
pub struct S3Server {
    root: tempfile::TempDir,
    addr: SocketAddr,
    child: Child,
    binary: PathBuf,
}

impl S3Server {
    /// Starts `s3s-fs` with `buckets` made. `None` (after one printed line) when it is not
    /// installed outside `scripts/test`; inside it (`ROLLWAY_E2E`), a missing server panics.
    pub async fn start(access_key: &str, secret_key: &str, buckets: &[&str]) -> Option<S3Server> {
        let Some(binary) = binary() else {
            assert!(
                std::env::var_os("ROLLWAY_E2E").is_none(),
                "ROLLWAY_E2E is set but `s3s-fs` is not installed: scripts/test installs it (cargo install s3s-fs)"
            );
            println!("skipped: no `s3s-fs` (scripts/test installs it)");
            return None;
        };
        let root = tempfile::tempdir().expect("the S3 server's folder");
        for bucket in buckets {
            std::fs::create_dir_all(root.path().join(bucket)).expect("a bucket folder");
        }
        let port = {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("a free port");
            listener.local_addr().expect("its address").port()
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let child = spawn(&binary, addr, root.path(), access_key, secret_key);
        wait_listening(addr).await;
        Some(S3Server {
            root,
            addr,
            child,
            binary,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The folder objects are stored in (`ROOT/BUCKET/KEY`).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Every stored object of `bucket` whose name ends with `suffix`, sorted.
    pub fn objects(&self, bucket: &str, suffix: &str) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![self.root.path().join(bucket)];
        while let Some(dir) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.to_string_lossy().ends_with(suffix) {
                    found.push(path);
                }
            }
        }
        found.sort();
        found
    }

    /// Kills the server (a remote that is down); its folder stays until drop.
    pub async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Starts the server again on the same port and folder (the remote is back).
    pub async fn restart(&mut self, access_key: &str, secret_key: &str) {
        self.stop().await;
        self.child = spawn(
            &self.binary,
            self.addr,
            self.root.path(),
            access_key,
            secret_key,
        );
        wait_listening(self.addr).await;
    }
}

fn spawn(
    binary: &Path,
    addr: SocketAddr,
    root: &Path,
    access_key: &str,
    secret_key: &str,
) -> Child {
    Command::new(binary)
        .args(["--host", "127.0.0.1", "--port", &addr.port().to_string()])
        .args(["--access-key", access_key, "--secret-key", secret_key])
        .arg(root)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start s3s-fs")
}

/// Bounded wait for the server to accept connections.
async fn wait_listening(addr: SocketAddr) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("s3s-fs did not listen on {addr} within 10s");
}

fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("ROLLWAY_TEST_S3S_FS") {
        return Some(PathBuf::from(path));
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    if let Some(cargo_home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(cargo_home).join("bin"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|dir| dir.join("s3s-fs"))
        .find(|path| path.is_file())
}
