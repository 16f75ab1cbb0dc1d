//! Shared helpers: instance specs for `demo-app`, a tiny HTTP client, eventual assertions.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use driver::{Driver, InstanceSpec, InstanceStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How long an eventual assertion waits before failing; generous, since tests assert outcomes,
/// not speed, and the machine is shared.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// A spec running `command` in `workdir` on a free port.
pub fn spec(
    instance_id: &str,
    workdir: &Path,
    command: String,
    env: &[(&str, &str)],
) -> InstanceSpec {
    InstanceSpec {
        instance_id: instance_id.to_owned(),
        workdir: workdir.to_path_buf(),
        command,
        env: env
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect(),
        port: testkit::demo::free_port().expect("free port"),
        stop_timeout: Duration::from_secs(5),
        image: None,
        confinement: driver::Confinement::default(),
        cluster: None,
    }
}

/// A spec running `demo-app` itself as the process group leader (`exec`).
pub fn demo_spec(instance_id: &str, workdir: &Path, env: &[(&str, &str)]) -> InstanceSpec {
    spec(
        instance_id,
        workdir,
        format!("exec {}", shell_quote(&testkit::demo::demo_app_path())),
        env,
    )
}

pub fn shell_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// The body of a `200` answer to `GET path`, `None` on any failure.
pub async fn get(port: u16, path: &str) -> Option<String> {
    let attempt = async {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await.ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8(response).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

/// Polls `check` until it returns `Some`, failing the test after [`PATIENCE`].
pub async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "not within {PATIENCE:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the instance answers `GET /` and returns the body.
pub async fn answers(spec: &InstanceSpec) -> String {
    let port = spec.port;
    eventually(
        &format!("`{}` answers on port {port}", spec.instance_id),
        async || get(port, "/").await,
    )
    .await
}

/// The pid of a running instance.
pub fn running_pid(driver: &impl Driver, instance_id: &str) -> u32 {
    match driver.status(instance_id) {
        InstanceStatus::Running { pid, .. } => pid,
        other => panic!("instance `{instance_id}` is not running: {other:?}"),
    }
}

/// True while a non-zombie process with this pid exists.
pub fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// Every file below `dir`, recursively.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("list state dir") {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The file names in one instance's directory.
pub fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list instance dir")
        .map(|entry| {
            entry
                .expect("directory entry")
                .file_name()
                .into_string()
                .expect("utf-8 file name")
        })
        .collect();
    names.sort();
    names
}

/// The nice value of every thread of `pid`.
pub fn thread_nices(pid: u32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the process's threads")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|tid| driver::priority::observe(tid).ok())
        .map(|observed| observed.nice)
        .collect()
}
