//! The container driver against the real engine: start, adopt, crash, stop, secrets, one-off
//! containers and logs, with images the tests build themselves (nothing can be pulled here).
//!
//! The base image is `docker import`ed from a tarball of the demo app, `/bin/sh`, `sleep` and
//! their shared libraries (`ldd`); the app image is built FROM it with the driver's own
//! `build_image`. Every container and image carries `dev.rollway.owner=rollway-driver-tests` and
//! is removed by that label at the start of the run and when the last test using it ends.
//!
//! Without a reachable engine the tests skip with one printed line, unless `CI` or
//! `ROLLWAY_REQUIRE_DOCKER` is set: there a missing engine fails them.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use driver::container::{ContainerDriver, ContainerDriverConfig, LABEL_OWNER};
use driver::{Driver, DriverError, InstanceSpec, InstanceStatus};

use crate::support::{eventually, get};

/// The owner label of everything these tests create.
const OWNER: &str = "rollway-driver-tests";
/// The user the agent would give an app environment.
const APP_USER: driver::AppUser = driver::AppUser {
    uid: 61234,
    gid: 61234,
};

#[tokio::test]
async fn start_answers_on_loopback_only_with_its_version_then_stop_removes_it() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    let mut spec = setup.spec("start", &[("VERSION", "v1"), ("ROLLWAY_APP", "demo")]);
    spec.confinement.user = Some(APP_USER);

    setup.driver.start(spec.clone()).await.expect("start");

    assert_eq!(answers(&spec).await, "v1\n");
    assert_eq!(
        get(spec.port, "/env/PORT").await,
        Some(spec.port.to_string())
    );
    assert!(matches!(
        setup.driver.status(&spec.instance_id),
        InstanceStatus::Running { restarts: 0, .. }
    ));
    assert!(setup.driver.running().contains(&spec.instance_id));
    let inspected = docker_inspect(&container(&spec)).expect("inspect the container");
    let bindings = &inspected["HostConfig"]["PortBindings"][format!("{}/tcp", spec.port)];
    assert_eq!(bindings[0]["HostIp"], "127.0.0.1", "{bindings}");
    assert_eq!(bindings[0]["HostPort"], spec.port.to_string());
    assert_eq!(bindings.as_array().map(Vec::len), Some(1));
    assert_eq!(inspected["Config"]["Labels"]["dev.rollway.app"], "demo");
    // The image runs as root; the app runs as its own user, and never sees the engine's socket.
    assert_eq!(inspected["Config"]["User"], "61234:61234", "{inspected}");
    let mounts = inspected["Mounts"].to_string();
    assert!(!mounts.contains("docker.sock"), "{mounts}");
    assert!(!mounts.contains("podman.sock"), "{mounts}");
    assert_eq!(
        inspected["Config"]["Labels"]["dev.rollway.instance"],
        spec.instance_id.as_str()
    );
    let logs = setup.driver.logs(&spec.instance_id, 10).expect("logs");
    assert!(
        logs.iter()
            .any(|log| log.line.contains(r#""event":"listening""#)),
        "{logs:?}"
    );
    assert!(matches!(
        setup.driver.start(spec.clone()).await,
        Err(DriverError::AlreadyRunning { .. })
    ));

    setup.driver.stop(&spec.instance_id).await.expect("stop");

    assert_eq!(
        setup.driver.status(&spec.instance_id),
        InstanceStatus::Stopped { last_exit: Some(0) }
    );
    assert!(
        docker_inspect(&container(&spec)).is_none(),
        "container removed"
    );
    assert!(get(spec.port, "/").await.is_none());
    assert!(!setup.driver.running().contains(&spec.instance_id));
    assert_eq!(setup.env_files(), Vec::<PathBuf>::new());
    let logs = setup
        .driver
        .logs(&spec.instance_id, 1)
        .expect("logs after stop");
    assert!(logs[0].line.contains(r#""event":"stopped""#), "{logs:?}");
}

#[tokio::test]
async fn a_new_driver_adopts_the_running_container_without_restarting_it() {
    let Some(mut setup) = Setup::new().await else {
        return;
    };
    let spec = setup.spec("adopt", &[("VERSION", "v2")]);
    setup.driver.start(spec.clone()).await.expect("start");
    answers(&spec).await;
    let original_container_id = container_id(&spec);
    let pid = running_pid(&setup.driver, &spec.instance_id);

    // The new driver shares nothing in memory with the old one, which is dropped at once.
    let fresh = connect(&setup.env_dir).await;
    drop(std::mem::replace(&mut setup.driver, fresh));
    let driver = &setup.driver;

    assert_eq!(driver.status(&spec.instance_id), InstanceStatus::Unknown);
    assert!(driver.running().contains(&spec.instance_id));
    assert!(driver.adopt(spec.clone()).await.expect("adopt"));
    assert_eq!(
        driver.status(&spec.instance_id),
        InstanceStatus::Running { pid, restarts: 0 }
    );
    assert_eq!(container_id(&spec), original_container_id);
    assert_eq!(answers(&spec).await, "v2\n");
    let logs = driver.logs(&spec.instance_id, 20).expect("logs");
    assert_eq!(
        logs.iter()
            .filter(|log| log.line.contains(r#""event":"starting""#))
            .count(),
        1,
        "started once: {logs:?}"
    );

    driver.stop(&spec.instance_id).await.expect("stop");
    assert!(
        !driver
            .adopt(spec.clone())
            .await
            .expect("adopt a stopped instance")
    );
}

#[tokio::test]
async fn a_crash_is_reported_as_a_restart() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    let spec = setup.spec("crash", &[("CRASH_AFTER_S", "1")]);
    setup.driver.start(spec.clone()).await.expect("start");
    answers(&spec).await;

    eventually(
        "the engine restarted the crashed instance",
        async || match setup.driver.status(&spec.instance_id) {
            InstanceStatus::Running { restarts, .. } if restarts >= 1 => Some(()),
            _ => None,
        },
    )
    .await;

    let inspected = docker_inspect(&container(&spec)).expect("inspect the container");
    assert!(inspected["RestartCount"].as_u64() >= Some(1), "{inspected}");
    let logs = setup.driver.logs(&spec.instance_id, 50).expect("logs");
    assert!(
        logs.iter()
            .any(|log| log.line.contains(r#""event":"crash""#)),
        "{logs:?}"
    );
    setup.driver.stop(&spec.instance_id).await.expect("stop");
    assert!(matches!(
        setup.driver.status(&spec.instance_id),
        InstanceStatus::Stopped { .. }
    ));
}

#[tokio::test]
async fn stop_kills_a_container_that_ignores_sigterm_after_its_timeout_and_removes_it() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    let mut spec = setup.spec("stubborn", &[("IGNORE_SIGTERM_S", "600")]);
    spec.stop_timeout = Duration::from_secs(1);
    setup.driver.start(spec.clone()).await.expect("start");
    answers(&spec).await;

    setup.driver.stop(&spec.instance_id).await.expect("stop");

    // 128 + SIGKILL: killed after the timeout, not exited on its own, not restarted.
    assert_eq!(
        setup.driver.status(&spec.instance_id),
        InstanceStatus::Stopped {
            last_exit: Some(137)
        }
    );
    assert!(
        docker_inspect(&container(&spec)).is_none(),
        "container removed"
    );
    let logs = setup.driver.logs(&spec.instance_id, 10).expect("logs");
    assert!(
        logs.iter()
            .any(|log| log.line.contains(r#""event":"sigterm""#)),
        "the app was asked first: {logs:?}"
    );
    assert!(get(spec.port, "/").await.is_none());
    assert!(!setup.driver.running().contains(&spec.instance_id));
}

#[tokio::test]
async fn a_secret_reaches_the_app_but_not_docker_inspect_nor_docker_logs() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    let secret = format!("canary-secret-{}-c0ffee", std::process::id());
    // A value no random name can hold: a bare "v3" once matched the random
    // suffix of the env folder's name, which `docker inspect` shows.
    let config_value = format!("canary-config-{}-f00d", std::process::id());
    let spec = setup.spec(
        "secret",
        &[
            ("DATABASE_URL", secret.as_str()),
            ("VERSION", config_value.as_str()),
        ],
    );
    setup.driver.start(spec.clone()).await.expect("start");
    answers(&spec).await;
    assert_eq!(
        get(spec.port, "/env/DATABASE_URL").await.as_deref(),
        Some(secret.as_str())
    );

    let inspect = docker(&["inspect", &container(&spec)]).expect("docker inspect");
    assert!(!inspect.contains(&secret), "secret in `docker inspect`");
    assert!(
        !inspect.contains(&config_value),
        "config value in `docker inspect`"
    );
    assert!(inspect.contains(&format!("PORT={}", spec.port)));
    let logs = docker(&["logs", &container(&spec)]).expect("docker logs");
    assert!(logs.contains("listening"), "{logs}");
    assert!(!logs.contains(&secret), "secret in `docker logs`");
    let env_files = setup.env_files();
    assert_eq!(env_files.len(), 1, "{env_files:?}");
    let mode = std::fs::metadata(&env_files[0])
        .expect("stat env file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let dir_mode = std::fs::metadata(&setup.env_dir)
        .expect("stat env dir")
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);

    setup.driver.stop(&spec.instance_id).await.expect("stop");
    assert_eq!(setup.env_files(), Vec::<PathBuf>::new());
}

#[tokio::test]
async fn run_once_streams_the_output_returns_the_exit_code_and_removes_the_container() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    let images = setup.images();
    let env = [
        ("GREETING".to_owned(), "hello".to_owned()),
        ("TOKEN".to_owned(), "it's a secret".to_owned()),
    ];
    let mut lines = Vec::new();

    let exit = setup
        .driver
        .run_once(
            &images.app_id,
            &env,
            r#"echo "$GREETING from once"; echo "$TOKEN" >&2; exit 3"#,
            &driver::Confinement::default(),
            |line| lines.push(line.to_owned()),
        )
        .await
        .expect("run once");

    assert_eq!(exit, 3);
    // stdout and stderr are separate streams: their relative order is not kept.
    lines.sort();
    assert_eq!(lines, ["hello from once", "it's a secret"]);
    let mut quiet = Vec::new();
    let exit = setup
        .driver
        .run_once(
            &images.app_id,
            &[],
            "true",
            &driver::Confinement::default(),
            |line| quiet.push(line.to_owned()),
        )
        .await
        .expect("run once");
    assert_eq!((exit, quiet.len()), (0, 0));
    // A release command runs as the app's user too, with its env file readable.
    let mut uid = Vec::new();
    let exit = setup
        .driver
        .run_once(
            &images.app_id,
            &env,
            r#"while read key value; do [ "$key" = Uid: ] && echo "$value $GREETING"; done < /proc/self/status; true"#,
            &driver::Confinement {
                user: Some(APP_USER),
                ..driver::Confinement::default()
            },
            |line| uid.push(line.to_owned()),
        )
        .await
        .expect("run once as the app user");
    assert_eq!(
        (exit, uid),
        (0, vec!["61234	61234	61234	61234 hello".to_owned()])
    );
    let left = docker(&[
        "ps",
        "-aq",
        "--filter",
        "label=dev.rollway.run-once",
        "--filter",
        &format!("label={LABEL_OWNER}={OWNER}"),
    ])
    .expect("docker ps");
    assert_eq!(left.trim(), "", "one-off containers left behind");
    assert_eq!(setup.env_files(), Vec::<PathBuf>::new());
}

#[tokio::test]
async fn logs_tail_then_follow_with_a_cursor_without_gaps_or_repeats() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    let mut spec = setup.spec("logs", &[]);
    spec.command = r#"i=0; while :; do i=$((i+1)); echo "line $i"; sleep 0.05; done"#.into();
    setup.driver.start(spec.clone()).await.expect("start");
    let id = spec.instance_id.clone();

    let tail = eventually("three lines are written", async || {
        let logs = setup.driver.logs(&id, 3).ok()?;
        (logs.len() == 3).then_some(logs)
    })
    .await;
    let first = line_number(&tail[0].line);
    let numbers: Vec<u64> = tail.iter().map(|log| line_number(&log.line)).collect();
    assert_eq!(numbers, [first, first + 1, first + 2]);

    let (nothing, mut cursor) = setup.driver.logs_after(&id, None).expect("cursor");
    assert!(nothing.is_empty());
    let mut followed: Vec<u64> = Vec::new();
    eventually("20 more lines are followed", async || {
        let (lines, next) = setup.driver.logs_after(&id, Some(cursor)).ok()?;
        cursor = next;
        followed.extend(lines.iter().map(|log| line_number(&log.line)));
        (followed.len() >= 20).then_some(())
    })
    .await;
    let start = followed[0];
    assert!(start >= first + 3, "{followed:?} after {numbers:?}");
    let expected: Vec<u64> = (start..start + followed.len() as u64).collect();
    assert_eq!(followed, expected, "no gap, no repeat");

    setup.driver.stop(&id).await.expect("stop");
    let (after_stop, _) = setup
        .driver
        .logs_after(&id, Some(cursor))
        .expect("follow a stopped instance");
    assert!(after_stop.is_empty());
}

#[tokio::test]
async fn images_are_built_with_streamed_output_and_bad_specs_are_refused() {
    let Some(setup) = Setup::new().await else {
        return;
    };
    let images = setup.images();
    assert!(
        images.build_lines.iter().any(|line| line.contains("FROM")),
        "{:?}",
        images.build_lines
    );
    assert!(images.app_id.starts_with("sha256:"), "{}", images.app_id);
    assert_eq!(
        setup
            .driver
            .image_digest(&images.app_tag)
            .await
            .expect("digest"),
        images.app_id
    );

    let mut no_image = setup.spec("noimage", &[]);
    no_image.image = None;
    assert!(matches!(
        setup.driver.start(no_image).await,
        Err(DriverError::InvalidSpec { .. })
    ));
    let mut missing = setup.spec("missing", &[]);
    missing.image = Some("rollway-driver-tests-missing:none".into());
    let error = setup
        .driver
        .start(missing.clone())
        .await
        .expect_err("missing image");
    assert!(
        error.to_string().contains(&missing.instance_id),
        "the error names the instance: {error}"
    );
    assert!(docker_inspect(&container(&missing)).is_none());
    let bad_env = setup.spec("badenv", &[("NOT-A-NAME", "x")]);
    assert!(matches!(
        setup.driver.start(bad_env).await,
        Err(DriverError::InvalidSpec { .. })
    ));
    assert_eq!(setup.env_files(), Vec::<PathBuf>::new());
}

/// One test's driver, its private env directory on `/dev/shm`, and a hold on the test images.
struct Setup {
    driver: ContainerDriver,
    env_dir: PathBuf,
    images: Arc<TestImages>,
}

/// The images of this run; dropped (and removed from the engine) with the last test using them.
struct TestImages {
    base_tag: String,
    app_tag: String,
    app_id: String,
    build_lines: Vec<String>,
}

impl Setup {
    /// `None` (after one printed line) when no engine is reachable outside CI.
    async fn new() -> Option<Setup> {
        let env_dir = tempfile::Builder::new()
            .prefix("rollway-driver-tests-")
            .tempdir_in("/dev/shm")
            .expect("temporary directory on /dev/shm")
            .keep();
        let config = config(&env_dir);
        let driver = match ContainerDriver::connect(config).await {
            Ok(driver) => driver,
            Err(error) => {
                let _ = std::fs::remove_dir_all(&env_dir);
                let required = std::env::var_os("CI").is_some()
                    || std::env::var_os("ROLLWAY_REQUIRE_DOCKER").is_some();
                assert!(
                    !required,
                    "no container engine, but CI or ROLLWAY_REQUIRE_DOCKER is set: {error:?}"
                );
                static SKIPPED: OnceLock<()> = OnceLock::new();
                SKIPPED.get_or_init(|| {
                    eprintln!(
                        "skipping container driver tests: no container engine reachable ({error})"
                    );
                });
                return None;
            }
        };
        let images = testimages(&driver).await;
        Some(Setup {
            driver,
            env_dir,
            images,
        })
    }

    fn images(&self) -> &TestImages {
        &self.images
    }

    /// A spec of the test app image (its own command) on a free port.
    fn spec(&self, name: &str, env: &[(&str, &str)]) -> InstanceSpec {
        InstanceSpec {
            instance_id: format!("drivertest-{name}-{}", std::process::id()),
            workdir: PathBuf::from("/"),
            command: String::new(),
            env: env
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect(),
            port: testkit::demo::free_port().expect("free port"),
            stop_timeout: Duration::from_secs(5),
            image: Some(self.images().app_id.clone()),
            confinement: driver::Confinement::default(),
            cluster: None,
        }
    }

    fn env_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.env_dir)
            .expect("list env dir")
            .map(|entry| entry.expect("directory entry").path())
            .collect();
        files.sort();
        files
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        // A failed test may leave its containers: remove every one of this test's.
        let prefix = "rollway-drivertest-";
        if let Some(ids) = docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label={LABEL_OWNER}={OWNER}"),
            "--filter",
            &format!("name={prefix}"),
        ]) {
            for id in ids.split_whitespace() {
                if let Some(inspected) = docker_inspect(id)
                    && inspected["Mounts"]
                        .to_string()
                        .contains(&*self.env_dir.to_string_lossy())
                {
                    let _ = docker(&["rm", "-f", id]);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.env_dir);
    }
}

impl Drop for TestImages {
    fn drop(&mut self) {
        let _ = docker(&["rmi", "-f", &self.app_tag, &self.base_tag]);
    }
}

fn config(env_dir: &Path) -> ContainerDriverConfig {
    ContainerDriverConfig {
        env_dir: env_dir.to_path_buf(),
        owner: OWNER.to_owned(),
        status_poll_interval: Duration::from_millis(100),
        ..ContainerDriverConfig::default()
    }
}

async fn connect(env_dir: &Path) -> ContainerDriver {
    ContainerDriver::connect(config(env_dir))
        .await
        .expect("connect to the engine")
}

/// The shared test images, built when no test holds them (so at most a few times per run).
async fn testimages(driver: &ContainerDriver) -> Arc<TestImages> {
    // tokio Mutex: held across the build's awaits so that only one test builds.
    static IMAGES: tokio::sync::Mutex<Weak<TestImages>> =
        tokio::sync::Mutex::const_new(Weak::new());
    static FIRST: Mutex<bool> = Mutex::new(true);
    let mut images = IMAGES.lock().await;
    if let Some(held) = images.upgrade() {
        return held;
    }
    if std::mem::replace(&mut *FIRST.lock().unwrap_or_else(|e| e.into_inner()), false) {
        remove_leftovers();
    }
    let built = Arc::new(buildimages(driver).await);
    *images = Arc::downgrade(&built);
    built
}

/// Containers and images of an earlier run that did not get to clean up.
fn remove_leftovers() {
    let filter = format!("label={LABEL_OWNER}={OWNER}");
    if let Some(ids) = docker(&["ps", "-aq", "--filter", &filter]) {
        for id in ids.split_whitespace() {
            let _ = docker(&["rm", "-f", id]);
        }
    }
    if let Some(ids) = docker(&["images", "-q", "--filter", &filter]) {
        for id in ids.split_whitespace() {
            let _ = docker(&["rmi", "-f", id]);
        }
    }
}

async fn buildimages(driver: &ContainerDriver) -> TestImages {
    let tag = format!("{}-{}", std::process::id(), unique());
    let base_tag = format!("rollway-driver-tests-base:{tag}");
    import_base_image(&base_tag);
    let context = tempfile::tempdir().expect("build context");
    let dockerfile = format!(
        "FROM {base_tag}\n\
         LABEL {LABEL_OWNER}={OWNER}\n\
         COPY serve /usr/local/bin/serve\n\
         ENV VERSION=from-image\n\
         CMD [\"/bin/sh\", \"/usr/local/bin/serve\"]\n"
    );
    std::fs::write(context.path().join("Dockerfile"), dockerfile).expect("write Dockerfile");
    std::fs::write(context.path().join("serve"), SERVE_SCRIPT).expect("write serve");
    let app_tag = format!("rollway-driver-tests-app:{tag}");
    let mut build_lines = Vec::new();
    let app_id = driver
        .build_image(context.path(), "Dockerfile", &app_tag, |line| {
            build_lines.push(line.to_owned())
        })
        .await
        .unwrap_or_else(|error| panic!("build the test image: {error:?}\n{build_lines:#?}"));
    TestImages {
        base_tag,
        app_tag,
        app_id,
        build_lines,
    }
}

/// The test image's command. demo-app listens on 127.0.0.1 only, which the published port cannot
/// reach inside a container, so the engine's own `docker-proxy` forwards the container's address
/// to it (real apps listen on `0.0.0.0:$PORT`). `exec` keeps demo-app the one that gets SIGTERM.
const SERVE_SCRIPT: &str = r#"ip=
while read -r address rest; do
  case "$address" in ''|'#'*|127.*|*:*) ;; *) ip=$address ;; esac
done < /etc/hosts
docker-proxy -proto tcp -host-ip "$ip" -host-port "$PORT" -container-ip 127.0.0.1 -container-port "$PORT" 3>/dev/null &
exec demo-app
"#;

/// `docker import` of a root file system holding demo-app, docker-proxy, `/bin/sh`, `sleep` and
/// the shared libraries `ldd` lists for them.
pub(crate) fn import_base_image(tag: &str) {
    let binaries = [
        (testkit::demo::demo_app_path(), "/usr/local/bin/demo-app"),
        (
            find_binary(&[
                "/usr/bin/docker-proxy",
                "/usr/sbin/docker-proxy",
                "/usr/libexec/docker/docker-proxy",
            ]),
            "/usr/local/bin/docker-proxy",
        ),
        (find_binary(&["/bin/sh", "/usr/bin/sh"]), "/bin/sh"),
        (find_binary(&["/bin/sleep", "/usr/bin/sleep"]), "/bin/sleep"),
    ];
    let root = tempfile::tempdir().expect("image root");
    let mut libraries = Vec::new();
    for (source, target) in &binaries {
        copy_into(root.path(), source, target);
        libraries.extend(shared_libraries(source));
    }
    libraries.sort();
    libraries.dedup();
    for library in &libraries {
        copy_into(root.path(), library, &library.to_string_lossy());
    }
    std::fs::create_dir_all(root.path().join("etc")).expect("create /etc");
    std::fs::create_dir_all(root.path().join("tmp")).expect("create /tmp");
    let mut archive = tar::Builder::new(Vec::new());
    archive.follow_symlinks(true);
    archive
        .append_dir_all(".", root.path())
        .expect("pack the image root");
    let tarball = archive.into_inner().expect("finish the tarball");
    let mut child = Command::new("docker")
        .args([
            "import",
            "--change",
            &format!("LABEL {LABEL_OWNER}={OWNER}"),
            "--change",
            "ENV PATH=/usr/local/bin:/usr/bin:/bin",
            "-",
            tag,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("run `docker import`");
    child
        .stdin
        .take()
        .expect("stdin of docker import")
        .write_all(&tarball)
        .expect("send the tarball to `docker import`");
    let status = child.wait().expect("wait for `docker import`");
    assert!(status.success(), "`docker import` of `{tag}` failed");
}

fn find_binary(candidates: &[&str]) -> PathBuf {
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("none of {candidates:?} exists; the test image needs one"))
}

/// Copies `source` (following symlinks) to `target` inside `root`, keeping its mode.
fn copy_into(root: &Path, source: &Path, target: &str) {
    let destination = root.join(target.trim_start_matches('/'));
    if let Some(parent) = destination.parent() {
        std::fs::create_dir_all(parent).expect("create a directory of the image root");
    }
    std::fs::copy(source, &destination)
        .unwrap_or_else(|error| panic!("copy `{}` into the image: {error}", source.display()));
}

/// The absolute paths of the shared libraries (and the loader) `ldd` lists for `binary`.
fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let output = Command::new("ldd").arg(binary).output().expect("run `ldd`");
    // A static binary: `ldd` says "not a dynamic executable" and fails.
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, after)) => after.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// The docker CLI's stdout, `None` when it fails.
pub(crate) fn docker(args: &[&str]) -> Option<String> {
    let output = Command::new("docker").args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// `docker inspect` of one object as JSON, `None` when there is no such object.
pub(crate) fn docker_inspect(name: &str) -> Option<serde_json::Value> {
    let text = docker(&["inspect", name])?;
    let mut values: Vec<serde_json::Value> = serde_json::from_str(&text).ok()?;
    values.pop()
}

fn container(spec: &InstanceSpec) -> String {
    format!("rollway-{}", spec.instance_id)
}

fn container_id(spec: &InstanceSpec) -> String {
    docker_inspect(&container(spec)).expect("inspect the container")["Id"]
        .as_str()
        .expect("container id")
        .to_owned()
}

fn running_pid(driver: &impl Driver, instance_id: &str) -> u32 {
    match driver.status(instance_id) {
        InstanceStatus::Running { pid, .. } => pid,
        other => panic!("instance `{instance_id}` is not running: {other:?}"),
    }
}

/// Waits until the instance answers `GET /` on 127.0.0.1 and returns the body.
async fn answers(spec: &InstanceSpec) -> String {
    let port = spec.port;
    eventually(
        &format!("`{}` answers on 127.0.0.1:{port}", spec.instance_id),
        async || get(port, "/").await,
    )
    .await
}

fn line_number(line: &str) -> u64 {
    line.strip_prefix("line ")
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("unexpected line `{line}`"))
}

pub(crate) fn unique() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64 % 1_000_000_007)
}
