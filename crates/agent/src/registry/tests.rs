//! The registry as clients see it, over a real socket: credentials, the push and pull dance
//! (monolithic and chunked), refusals with the spec's error JSON, a restart, the collection of
//! images no longer kept; and the host's Docker engine pushing and pulling through it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;

use super::*;
use crate::api::Limits;
use crate::api::router::tests::{Answer, call_with, test_engine};

struct TestRegistry {
    addr: SocketAddr,
    engine: Arc<Engine>,
    dir: tempfile::TempDir,
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.engine.shutdown.cancel();
    }
}

async fn start(limits: RegistryLimits) -> TestRegistry {
    start_in(tempfile::tempdir().expect("temp dir"), limits).await
}

async fn start_in(dir: tempfile::TempDir, limits: RegistryLimits) -> TestRegistry {
    let mut engine = test_engine(dir.path());
    Arc::get_mut(&mut engine)
        .expect("a fresh engine")
        .registry
        .limits = limits;
    serve(engine, dir).await
}

async fn serve(engine: Arc<Engine>, dir: tempfile::TempDir) -> TestRegistry {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(crate::api::serve_router(
        listener,
        crate::api::router::router(engine.clone()),
        Limits {
            header_timeout: Duration::from_secs(5),
            ..Limits::from_fd_limit()
        },
        engine.shutdown.clone(),
    ));
    TestRegistry { addr, engine, dir }
}

fn basic(credential: &Credential) -> String {
    let pair = format!("{}:{}", credential.username, credential.password.expose());
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

impl TestRegistry {
    fn push(&self) -> String {
        basic(&self.engine.registry.push)
    }

    fn pull(&self) -> String {
        basic(&self.engine.registry.pull)
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Answer {
        let mut all: Vec<(&str, &str)> = auth
            .map(|auth| ("authorization", auth))
            .into_iter()
            .collect();
        all.extend_from_slice(headers);
        call_with(self.addr, method, path, &all, body).await
    }

    /// Pushes `bytes` as one blob (monolithic POST); the answer.
    async fn put_blob(&self, name: &str, bytes: &[u8]) -> Answer {
        let digest = Digest::of(bytes);
        let push = self.push();
        self.call(
            "POST",
            &format!("/v2/{name}/blobs/uploads/?digest={digest}"),
            Some(&push),
            &[],
            bytes,
        )
        .await
    }

    /// Puts `manifest` (a Docker image manifest) as `reference` of `name` with `auth`.
    async fn put_manifest(
        &self,
        name: &str,
        reference: &str,
        auth: &str,
        manifest: &[u8],
    ) -> Answer {
        self.call(
            "PUT",
            &format!("/v2/{name}/manifests/{reference}"),
            Some(auth),
            &[("content-type", MANIFEST_V2)],
            manifest,
        )
        .await
    }

    fn uploads_in_progress(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("registry/uploads"))
            .expect("uploads")
            .count()
    }
}

fn header<'a>(answer: &'a Answer, name: &str) -> Option<&'a str> {
    answer.head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// An error answer's status and the spec's error code.
#[track_caller]
fn refusal(answer: &Answer) -> (u16, String) {
    (answer.status, oci_code(answer))
}

/// The spec's error JSON: the first error's code.
#[track_caller]
fn oci_code(answer: &Answer) -> String {
    let body: serde_json::Value =
        serde_json::from_str(&answer.body).unwrap_or_else(|error| panic!("{error}: {answer:?}"));
    let first = &body["errors"][0];
    assert!(
        first["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{answer:?}"
    );
    first["code"].as_str().expect("code").to_owned()
}

/// Stores `bytes` as a blob through an upload, as a push does; its digest.
fn stored_blob(storage: &Storage, bytes: &[u8]) -> Digest {
    let digest = Digest::of(bytes);
    let id = storage
        .start_upload(Duration::from_secs(60), 8)
        .expect("start")
        .expect("session");
    let (path, _) = storage.upload(&id).expect("upload");
    std::fs::write(path, bytes).expect("write");
    storage.finish_upload(&id, &digest).expect("finish");
    digest
}

fn image_manifest(config: &Digest, layers: &[&Digest]) -> Vec<u8> {
    let descriptor = |digest: &Digest| serde_json::json!({ "mediaType": "application/octet-stream", "size": 1, "digest": digest.to_string() });
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_V2,
        "config": descriptor(config),
        "layers": layers.iter().map(|digest| descriptor(digest)).collect::<Vec<_>>(),
    }))
    .expect("json")
}

const MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";

#[tokio::test]
async fn without_the_right_credential_nothing_is_answered() {
    let registry = start(RegistryLimits::default()).await;
    let wrong = basic(&Credential {
        username: registry.engine.registry.push.username.clone(),
        password: Secret::new("not-the-password".to_owned()),
    });
    for auth in [
        None,
        Some(wrong.as_str()),
        Some("Basic !!!"),
        Some("Bearer x"),
    ] {
        let answer = registry.call("GET", "/v2/", auth, &[], b"").await;
        assert_eq!(answer.status, 401, "{auth:?}: {answer:?}");
        assert_eq!(
            header(&answer, "www-authenticate"),
            Some("Basic realm=\"rollway\"")
        );
        assert_eq!(oci_code(&answer), "UNAUTHORIZED");
    }
    // The API's bearer tokens do not open it, and its own credentials do not open the API.
    let answer = registry
        .call("GET", "/v1/apps", Some(&registry.push()), &[], b"")
        .await;
    assert_eq!(answer.status, 401, "{answer:?}");
    for auth in [registry.push(), registry.pull()] {
        let answer = registry.call("GET", "/v2/", Some(&auth), &[], b"").await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(
            header(&answer, "docker-distribution-api-version"),
            Some("registry/2.0")
        );
    }
}

#[tokio::test]
async fn the_pull_credential_cannot_push() {
    let registry = start(RegistryLimits::default()).await;
    let pull = registry.pull();
    let bytes = b"layer";
    let path = format!("/v2/rollway/a/blobs/uploads/?digest={}", Digest::of(bytes));
    let answer = registry.call("POST", &path, Some(&pull), &[], bytes).await;
    assert_eq!(answer.status, 403, "{answer:?}");
    assert_eq!(oci_code(&answer), "DENIED");
    let manifest = image_manifest(&Digest::of(b"c"), &[]);
    let answer = registry
        .put_manifest("rollway/a", "r1", &pull, &manifest)
        .await;
    assert_eq!(answer.status, 403, "{answer:?}");
    assert_eq!(registry.uploads_in_progress(), 0);
}

#[tokio::test]
async fn unknown_blobs_and_manifests_are_404_with_the_error_json() {
    let registry = start(RegistryLimits::default()).await;
    let pull = registry.pull();
    let digest = Digest::of(b"nothing");
    let cases = [
        (format!("/v2/rollway/a/blobs/{digest}"), 404, "BLOB_UNKNOWN"),
        (
            "/v2/rollway/a/manifests/r1".to_owned(),
            404,
            "MANIFEST_UNKNOWN",
        ),
        (
            format!("/v2/rollway/a/manifests/{digest}"),
            404,
            "MANIFEST_UNKNOWN",
        ),
        ("/v2/rollway/A/manifests/r1".to_owned(), 400, "NAME_INVALID"),
        (
            "/v2/rollway/a/blobs/sha256:xyz".to_owned(),
            400,
            "DIGEST_INVALID",
        ),
        ("/v2/rollway/a/nothing".to_owned(), 404, "NOT_FOUND"),
    ];
    for (path, status, code) in cases {
        let answer = registry.call("GET", &path, Some(&pull), &[], b"").await;
        assert_eq!(refusal(&answer), (status, code.to_owned()), "{path}");
    }
}

#[tokio::test]
async fn a_blob_whose_digest_differs_is_refused_and_not_kept() {
    let registry = start(RegistryLimits::default()).await;
    let push = registry.push();
    let claimed = Digest::of(b"what the client says");
    let answer = registry
        .call(
            "POST",
            &format!("/v2/rollway/a/blobs/uploads/?digest={claimed}"),
            Some(&push),
            &[],
            b"what the client sends",
        )
        .await;
    assert_eq!(refusal(&answer), (400, "DIGEST_INVALID".to_owned()));
    let answer = registry
        .call(
            "HEAD",
            &format!("/v2/rollway/a/blobs/{claimed}"),
            Some(&push),
            &[],
            b"",
        )
        .await;
    assert_eq!(answer.status, 404);
    assert_eq!(registry.uploads_in_progress(), 0);
    // A manifest put under a digest that is not its own.
    let manifest = image_manifest(&claimed, &[]);
    let answer = registry
        .put_manifest("rollway/a", &claimed.to_string(), &push, &manifest)
        .await;
    assert_eq!(refusal(&answer), (400, "DIGEST_INVALID".to_owned()));
}

#[tokio::test]
async fn an_oversized_blob_is_refused_and_its_upload_removed() {
    let registry = start(RegistryLimits {
        max_blob: 1000,
        ..RegistryLimits::default()
    })
    .await;
    let answer = registry.put_blob("rollway/a", &[7u8; 1001]).await;
    assert_eq!(refusal(&answer), (413, "SIZE_INVALID".to_owned()));
    assert!(answer.body.contains(MAX_BLOB_VAR), "{answer:?}");
    assert_eq!(registry.uploads_in_progress(), 0);
    // Chunked: the chunk that crosses the limit ends the upload.
    let push = registry.push();
    let started = registry
        .call(
            "POST",
            "/v2/rollway/a/blobs/uploads/",
            Some(&push),
            &[],
            b"",
        )
        .await;
    let location = header(&started, "location").expect("location").to_owned();
    let answer = registry
        .call("PATCH", &location, Some(&push), &[], &[1u8; 600])
        .await;
    assert_eq!(answer.status, 202, "{answer:?}");
    let answer = registry
        .call("PATCH", &location, Some(&push), &[], &[1u8; 600])
        .await;
    assert_eq!(answer.status, 413, "{answer:?}");
    assert_eq!(registry.uploads_in_progress(), 0);
    let answer = registry.put_blob("rollway/a", &[7u8; 1000]).await;
    assert_eq!(answer.status, 201, "{answer:?}");
}

/// Unmounts the tmpfs of a test when it ends.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        // The temporary directory could not remove its mount point while it was mounted.
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A full disk (a 1 MiB tmpfs as the state directory; needs root) fails the upload with 507 and
/// the cause, and leaves no partial file; a blob that fits is taken afterwards.
#[tokio::test]
async fn a_full_disk_fails_the_upload_and_removes_it() {
    if !rustix::process::geteuid().is_root() {
        assert!(
            std::env::var_os("ROLLWAY_E2E").is_none(),
            "ROLLWAY_E2E is set but the test is not root (it mounts a tmpfs)"
        );
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(dir.path())
        .status()
        .expect("mount runs");
    assert!(
        mounted.success(),
        "mount a tmpfs on {}",
        dir.path().display()
    );
    let _mounted = Mounted(dir.path().to_owned());
    let registry = start_in(dir, RegistryLimits::default()).await;
    let answer = registry.put_blob("rollway/a", &[9u8; 2 << 20]).await;
    assert_eq!(refusal(&answer), (507, "BLOB_UPLOAD_INVALID".to_owned()));
    assert!(answer.body.contains("disk is full"), "{answer:?}");
    assert_eq!(registry.uploads_in_progress(), 0);
    let answer = registry.put_blob("rollway/a", &[9u8; 1000]).await;
    assert_eq!(answer.status, 201, "{answer:?}");
}

#[tokio::test]
async fn upload_sessions_are_bounded() {
    let registry = start(RegistryLimits {
        max_uploads: 2,
        ..RegistryLimits::default()
    })
    .await;
    let push = registry.push();
    for expected in [202, 202, 429] {
        let answer = registry
            .call(
                "POST",
                "/v2/rollway/a/blobs/uploads/",
                Some(&push),
                &[],
                b"",
            )
            .await;
        assert_eq!(answer.status, expected, "{answer:?}");
    }
}

#[tokio::test]
async fn a_chunked_push_then_a_pull_by_tag_and_by_digest() {
    let registry = start(RegistryLimits::default()).await;
    let push = registry.push();
    let layer = b"the first chunk, the second chunk".to_vec();
    let layer_digest = Digest::of(&layer);
    let started = registry
        .call(
            "POST",
            "/v2/rollway/shop-production-web/blobs/uploads/",
            Some(&push),
            &[],
            b"",
        )
        .await;
    assert_eq!(started.status, 202, "{started:?}");
    let location = header(&started, "location").expect("location").to_owned();
    let answer = registry
        .call(
            "PATCH",
            &location,
            Some(&push),
            &[("content-range", "0-15")],
            &layer[..16],
        )
        .await;
    assert_eq!(answer.status, 202, "{answer:?}");
    assert_eq!(header(&answer, "range"), Some("0-15"));
    // A chunk that does not start where the upload is.
    let answer = registry
        .call(
            "PATCH",
            &location,
            Some(&push),
            &[("content-range", "0-3")],
            b"oops",
        )
        .await;
    assert_eq!(answer.status, 416, "{answer:?}");
    let answer = registry
        .call(
            "PUT",
            &format!("{location}?digest={layer_digest}"),
            Some(&push),
            &[],
            &layer[16..],
        )
        .await;
    assert_eq!(answer.status, 201, "{answer:?}");
    assert_eq!(
        header(&answer, "docker-content-digest"),
        Some(layer_digest.to_string().as_str())
    );
    let config = b"{}".to_vec();
    assert_eq!(
        registry
            .put_blob("rollway/shop-production-web", &config)
            .await
            .status,
        201
    );

    // A manifest whose blobs are not all there is refused.
    let missing = Digest::of(b"missing");
    let manifest = image_manifest(&Digest::of(&config), &[&layer_digest, &missing]);
    let answer = registry
        .put_manifest("rollway/shop-production-web", "r1", &push, &manifest)
        .await;
    assert_eq!(refusal(&answer), (400, "MANIFEST_BLOB_UNKNOWN".to_owned()));

    let manifest = image_manifest(&Digest::of(&config), &[&layer_digest]);
    let manifest_digest = Digest::of(&manifest).to_string();
    let answer = registry
        .put_manifest("rollway/shop-production-web", "r1", &push, &manifest)
        .await;
    assert_eq!(answer.status, 201, "{answer:?}");
    assert_eq!(
        header(&answer, "docker-content-digest"),
        Some(manifest_digest.as_str())
    );

    let pull = registry.pull();
    for reference in ["r1", manifest_digest.as_str()] {
        let path = format!("/v2/rollway/shop-production-web/manifests/{reference}");
        let answer = registry.call("GET", &path, Some(&pull), &[], b"").await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(header(&answer, "content-type"), Some(MANIFEST_V2));
        assert_eq!(
            header(&answer, "docker-content-digest"),
            Some(manifest_digest.as_str())
        );
        assert_eq!(answer.body.as_bytes(), manifest.as_slice());
        let answer = registry.call("HEAD", &path, Some(&pull), &[], b"").await;
        assert_eq!(answer.status, 200, "{answer:?}");
        assert_eq!(
            header(&answer, "content-length"),
            Some(manifest.len().to_string().as_str())
        );
    }
    let answer = registry
        .call(
            "GET",
            &format!("/v2/rollway/shop-production-web/blobs/{layer_digest}"),
            Some(&pull),
            &[],
            b"",
        )
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.body.as_bytes(), layer.as_slice());
    // A mount of a blob the registry holds needs no upload.
    let answer = registry
        .call(
            "POST",
            &format!("/v2/rollway/other/blobs/uploads/?mount={layer_digest}&from=rollway/shop-production-web"),
            Some(&push),
            &[],
            b"",
        )
        .await;
    assert_eq!(answer.status, 201, "{answer:?}");
    assert_eq!(registry.uploads_in_progress(), 0);

    // The agent restarts on the same state: same credentials, same images.
    let engine = registry.engine.clone();
    let reopened = Registry::open(
        registry.dir.path(),
        &engine.store,
        &engine.master_key,
        Some(registry.addr.to_string()),
        RegistryLimits::default(),
    )
    .expect("reopen");
    assert_eq!(
        reopened.push.password.expose(),
        engine.registry.push.password.expose()
    );
    assert_eq!(
        reopened.pull.password.expose(),
        engine.registry.pull.password.expose()
    );
    let name = RepositoryName::parse("rollway/shop-production-web").expect("name");
    let stored = reopened
        .storage
        .manifest(&name, "r1")
        .expect("manifest kept");
    assert_eq!(stored.digest.to_string(), manifest_digest);
    assert_ne!(
        engine.registry.push.password.expose(),
        engine.registry.pull.password.expose()
    );
}

#[test]
fn the_cluster_address_is_the_apis_unless_it_listens_everywhere() {
    let at = |text: &str| text.parse::<SocketAddr>().expect("address");
    assert_eq!(
        cluster_address(at("10.0.0.5:7443"), None).as_deref(),
        Some("10.0.0.5:7443")
    );
    assert_eq!(cluster_address(at("0.0.0.0:7443"), None), None);
    assert_eq!(cluster_address(at("[::]:7443"), Some(" ".to_owned())), None);
    assert_eq!(
        cluster_address(at("0.0.0.0:7443"), Some("agent.internal:7443".to_owned())).as_deref(),
        Some("agent.internal:7443")
    );
    assert_eq!(host_of("agent.internal:7443"), "agent.internal");
    assert_eq!(host_of("[fd00::1]:7443"), "fd00::1");
    assert_eq!(host_of("10.0.0.5:7443"), "10.0.0.5");
}

#[test]
fn a_sweep_removes_what_no_kept_manifest_references() {
    let dir = tempfile::tempdir().expect("temp dir");
    let storage = &Storage::open(dir.path().join("registry")).expect("storage");
    let blob = |bytes: &[u8]| stored_blob(storage, bytes);
    let (config, shared, only_old) = (blob(b"config"), blob(b"shared layer"), blob(b"old layer"));
    let name = RepositoryName::parse("rollway/shop-production-web").expect("name");
    let old = image_manifest(&config, &[&shared, &only_old]);
    let new = image_manifest(&config, &[&shared]);
    let put = |tag: &str, bytes: &[u8]| {
        storage
            .put_manifest(
                &name,
                Some(tag),
                MANIFEST_V2,
                bytes,
                &manifest_references(bytes),
            )
            .expect("manifest")
    };
    let old_digest = put("r1", &old);
    put("r2", &new);
    // Nothing is unreferenced yet; a fresh blob is spared by the grace.
    assert_eq!(storage.sweep(Duration::ZERO).expect("sweep"), (0, 0));
    assert!(storage.remove_tag(&name, "r1").expect("remove"));
    assert!(!storage.remove_tag(&name, "r1").expect("remove again"));
    assert_eq!(
        storage.sweep(Duration::from_secs(3600)).expect("sweep"),
        (0, 0)
    );
    let (removed, bytes) = storage.sweep(Duration::ZERO).expect("sweep");
    assert_eq!(removed, 2, "the old manifest and its own layer");
    assert_eq!(bytes, (old.len() + b"old layer".len()) as u64);
    assert!(storage.blob(&only_old).is_none());
    assert!(storage.blob(&old_digest).is_none());
    assert!(storage.blob(&shared).is_some());
    assert!(storage.blob(&config).is_some());
    assert_eq!(storage.tags(&name), ["r2"]);
    assert!(storage.manifest(&name, "r2").is_some());
}

/// Which images `collect` removes: those of releases older than the latest
/// [`KEEP_RELEASE_IMAGES`] that are neither current (here an old one, after a rollback) nor
/// running (a warm instance); then the blobs only they used.
#[test]
fn collect_removes_the_images_of_releases_no_longer_kept() {
    use crate::engine::{InstancePhase, Runtime, RuntimeInstance};
    use crate::store::NewRelease;
    let dir = tempfile::tempdir().expect("temp dir");
    let engine = test_engine(dir.path());
    let storage = &engine.registry.storage;
    let name = RepositoryName::parse("rollway/shop-production-web").expect("name");
    let blob = |bytes: &[u8]| stored_blob(storage, bytes);
    let shared = blob(b"shared layer");
    let latest = KEEP_RELEASE_IMAGES + 3;
    for number in 1..=latest {
        let release = engine
            .store
            .create_release(NewRelease {
                app: "shop".to_owned(),
                environment: "production".to_owned(),
                artifact: "ab".repeat(32),
                config_json: "{}".to_owned(),
                secrets_version: None,
                strategy: client::wire::Strategy::BlueGreen,
                created_by: "test".to_owned(),
                message: None,
            })
            .expect("release");
        assert_eq!(release.number.get(), number);
        let config = blob(format!("config of release {number}").as_bytes());
        let manifest = image_manifest(&config, &[&shared]);
        let tag = release_tag(release.number);
        let digest = storage
            .put_manifest(
                &name,
                Some(&tag),
                MANIFEST_V2,
                &manifest,
                &manifest_references(&manifest),
            )
            .expect("manifest");
        engine
            .store
            .set_release_image(
                "shop",
                "production",
                release.number,
                "web",
                &format!("127.0.0.1:0/rollway/shop-production-web@{digest}"),
            )
            .expect("image");
    }
    engine
        .store
        .set_current("shop", "production", ReleaseNumber::new(2))
        .expect("current");
    let mut runtime = Runtime::default();
    runtime.instances.insert(
        "shop-production-r1-web-1".to_owned(),
        RuntimeInstance {
            release: ReleaseNumber::new(1),
            service: "web".to_owned(),
            port: 1,
            host: std::net::IpAddr::from([127, 0, 0, 1]),
            phase: InstancePhase::Warm,
            warm_until: None,
            unhealthy: false,
        },
    );
    engine
        .runtimes
        .lock()
        .expect("runtimes")
        .insert(AppEnv::new("shop", "production"), runtime);

    let collected = collect(&engine, Duration::ZERO).expect("collect");
    assert_eq!((collected.images, collected.blobs), (1, 2), "{collected:?}");
    let tags = storage.tags(&name);
    let mut expected: Vec<String> = (1..=latest)
        .filter(|number| *number != 3)
        .map(|number| format!("r{number}"))
        .collect();
    expected.sort();
    assert_eq!(tags, expected);
    assert!(storage.blob(&Digest::of(b"config of release 3")).is_none());
    assert!(storage.blob(&Digest::of(b"config of release 4")).is_some());
    assert!(storage.blob(&shared).is_some());
    // Nothing more to remove.
    assert_eq!(
        collect(&engine, Duration::ZERO).expect("again"),
        Collected::default()
    );
}

/// Whether the host's Docker engine answers; inside `scripts/test` (`ROLLWAY_E2E`) it must.
fn docker_available() -> bool {
    let available = std::process::Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .is_ok_and(|output| output.status.success());
    assert!(
        available || std::env::var_os("ROLLWAY_E2E").is_none(),
        "ROLLWAY_E2E is set but the Docker engine does not answer"
    );
    available
}

/// Runs `docker ARGS` with its own client config (`--config`), feeding `stdin`; its output.
fn docker(config: &std::path::Path, args: &[&str], stdin: &str) -> std::process::Output {
    use std::io::Write as _;
    let mut child = std::process::Command::new("docker")
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("docker");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("docker output")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_hosts_docker_engine_pushes_and_pulls_through_it() {
    if !docker_available() {
        eprintln!("skipped: no Docker engine");
        return;
    }
    let registry = start(RegistryLimits::default()).await;
    let engine = registry.engine.clone();
    let address = registry.addr.to_string();
    let work = tempfile::tempdir().expect("temp dir");
    let config = work.path().join("docker-config");
    std::fs::create_dir(&config).expect("config dir");
    let context = work.path().join("context");
    std::fs::create_dir(&context).expect("context dir");
    // A layer no registry has seen: random content.
    let mut random = [0u8; 16];
    getrandom::fill(&mut random).expect("random");
    std::fs::write(context.join("payload"), hex::encode(random)).expect("payload");
    std::fs::write(
        context.join("Dockerfile"),
        "FROM scratch\nCOPY payload /payload\n",
    )
    .expect("Dockerfile");
    let reference = format!("{address}/rollway/registry-test:r1");
    let run = move |args: Vec<String>, stdin: String| {
        let config = config.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                docker(&config, &args, &stdin)
            })
            .await
            .expect("docker task")
        }
    };
    let ok = |output: &std::process::Output, what: &str| {
        assert!(
            output.status.success(),
            "{what}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let strings = |args: &[&str]| args.iter().map(|arg| (*arg).to_owned()).collect::<Vec<_>>();
    let built = run(
        strings(&[
            "build",
            "-q",
            "-t",
            &reference,
            &context.display().to_string(),
        ]),
        String::new(),
    )
    .await;
    ok(&built, "build");

    // Without logging in, the push is refused.
    let refused = run(strings(&["push", &reference]), String::new()).await;
    assert!(!refused.status.success());
    // The pull credential cannot push.
    let pull = &engine.registry.pull;
    let login = |credential: &Credential| {
        strings(&[
            "login",
            &address,
            "-u",
            &credential.username,
            "--password-stdin",
        ])
    };
    ok(
        &run(login(pull), pull.password.expose().to_owned()).await,
        "login (pull)",
    );
    let refused = run(strings(&["push", &reference]), String::new()).await;
    assert!(!refused.status.success(), "{refused:?}");
    let push = &engine.registry.push;
    ok(
        &run(login(push), push.password.expose().to_owned()).await,
        "login (push)",
    );
    let pushed = run(strings(&["push", &reference]), String::new()).await;
    ok(&pushed, "push");
    let name = RepositoryName::parse("rollway/registry-test").expect("name");
    let digest = engine
        .registry
        .storage
        .resolve(&name, "r1")
        .expect("the manifest is in the registry");
    assert!(
        String::from_utf8_lossy(&pushed.stdout).contains(&digest.to_string()),
        "{pushed:?}"
    );

    // Removed locally, pulled back by digest with the pull credential.
    ok(
        &run(strings(&["rmi", &reference]), String::new()).await,
        "rmi",
    );
    ok(
        &run(login(pull), pull.password.expose().to_owned()).await,
        "login (pull)",
    );
    let by_digest = format!("{address}/rollway/registry-test@{digest}");
    let pulled = run(strings(&["pull", &by_digest]), String::new()).await;
    ok(&pulled, "pull");
    let _ = run(strings(&["rmi", &by_digest]), String::new()).await;
}
