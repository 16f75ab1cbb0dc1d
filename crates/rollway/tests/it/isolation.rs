//! Promise 9, end to end: a deployed app is an untrusted party. A hostile app, deployed through
//! the real agent with a deployer token, tries to read the agent's admin token, store and master
//! key, another app's release folder and the environment of other processes (where that app's
//! secret is), to signal the agent, and to mint itself an admin token with what it found. It
//! writes what it managed into `report.json` in its own release folder, which the test reads.
//!
//! Twice: with the agent as root (each app its own user), and with the agent as `nobody`
//! (Landlock; when the kernel has none, the test checks that the agent says so).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use testkit::agent::{TestAgent, TestApp};

use crate::agent::{Setup, rollway_bin};

const ENV: &str = "production";
const VICTIM: &str = "victim";
const HOSTILE: &str = "hostile";
/// `nobody`.
const UNPRIVILEGED: u32 = 65534;

/// Both apps: a tiny HTTP server answering `/health`; the hostile one first runs its attempts.
const APP_PY: &str = r#"
import http.server, json, os, sys, urllib.request

def read(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
        return {"read": True, "text": data[:120].decode("utf-8", "replace")}
    except Exception as error:
        return {"read": False, "error": type(error).__name__}

def listing(path):
    try:
        return {"read": True, "entries": sorted(os.listdir(path))[:20]}
    except Exception as error:
        return {"read": False, "error": type(error).__name__}

def attack():
    targets = json.loads(os.environ["HOSTILE_TARGETS"])
    report = {"uid": os.getuid(), "groups": os.getgroups()}
    # What its PATH tells it of the agent's user (root's own tool folders), and whether it still
    # finds the system's tools.
    path = [entry for entry in os.environ.get("PATH", "").split(":") if entry]
    report["path_unreachable"] = [entry for entry in path if not os.access(entry, os.X_OK)]
    report["path_finds_sh"] = any(os.access(os.path.join(entry, "sh"), os.X_OK) for entry in path)
    for name, path in targets["files"].items():
        report[name] = read(path)
    for name, path in targets["dirs"].items():
        report[name] = listing(path)
    environs, leaked = [], []
    try:
        pids = [pid for pid in os.listdir("/proc") if pid.isdigit()]
        report["proc_listing"] = True
    except Exception:
        # Not listable: guess, as an attacker would, and try the pids it was told about.
        pids = [str(pid) for pid in range(1, 1 << 17)]
        report["proc_listing"] = False
    pids += [str(targets["agent_pid"]), str(targets["victim_pid"])]
    for pid in pids:
        if int(pid) == os.getpid():
            continue
        try:
            with open("/proc/%s/environ" % pid, "rb") as f:
                data = f.read()
        except Exception:
            continue
        environs.append(int(pid))
        if b"VICTIM_SECRET=" in data:
            leaked.append(int(pid))
    report["environ_readable_pids"] = environs
    report["environ_with_victim_secret"] = leaked
    # Swap the folder holding its release folders, to send the agent's next unpack elsewhere.
    builds = os.path.dirname(os.getcwd())
    try:
        os.rename(builds, builds + ".moved")
        report["swap_builds"] = "renamed"
    except Exception as error:
        report["swap_builds"] = type(error).__name__
    import socket
    for name, path in targets["sockets"].items():
        try:
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(path)
            client.close()
            report[name] = "connected"
        except Exception as error:
            report[name] = type(error).__name__
    try:
        os.kill(int(targets["agent_pid"]), 0)
        report["signal_agent"] = "allowed"
    except Exception as error:
        report["signal_agent"] = type(error).__name__
    found = report["admin_token"].get("text", "").strip() or "rwy_nothing_found"
    request = urllib.request.Request(
        targets["api"] + "/v1/tokens",
        data=json.dumps({"name": "hostile", "role": "admin"}).encode(),
        headers={"Authorization": "Bearer " + found, "Content-Type": "application/json"},
        method="POST",
    )
    try:
        report["mint_admin_token"] = urllib.request.urlopen(request, timeout=5).status
    except urllib.error.HTTPError as error:
        report["mint_admin_token"] = error.code
    except Exception as error:
        report["mint_admin_token"] = type(error).__name__
    with open("report.json.tmp", "w") as f:
        json.dump(report, f)
    os.rename("report.json.tmp", "report.json")

class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")
    def log_message(self, *args):
        pass

if os.environ.get("ROLE") == "hostile":
    attack()
http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Health).serve_forever()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_root_a_hostile_app_reads_nothing_of_the_agent_or_another_app() {
    if !is_root() {
        eprintln!("skipped: the agent must be started as root for per-app users");
        return;
    }
    let setup = Setup::start().await;
    let agent = &setup.agent;
    assert_eq!(
        isolation(agent).await,
        serde_json::json!({ "kind": "users" }),
        "{}",
        agent.log()
    );
    assert!(
        agent.log().contains("isolation: per-app users (root)"),
        "{}",
        agent.log()
    );
    let report = attack(agent, setup.dir.path()).await;
    assert_denied(agent, &report).await;
    assert_eq!(
        report["proxy_control_socket"], "PermissionError",
        "{report:#}"
    );

    let uid = report["uid"].as_u64().expect("uid");
    assert!((61184..=65519).contains(&uid), "{report}");
    assert_eq!(
        report["groups"],
        serde_json::json!([]),
        "no supplementary groups"
    );
    // Its PATH holds no folder of the agent's it cannot enter (root's `~/.cargo/bin`), and still
    // the system's.
    assert_eq!(
        report["path_unreachable"],
        serde_json::json!([]),
        "{report:#}"
    );
    assert_eq!(report["path_finds_sh"], true, "{report:#}");
    use std::os::unix::fs::MetadataExt as _;
    // An app environment's folder is the agent's, with the app's group; its release folder is
    // the app's.
    let group = |app: &str| {
        let folder = std::fs::metadata(agent.apps_dir().join(app).join(ENV)).expect("app folder");
        assert_eq!((folder.uid(), folder.mode() & 0o777), (0, 0o710));
        folder.gid()
    };
    assert_eq!(u64::from(group(HOSTILE)), uid);
    assert_ne!(group(VICTIM), group(HOSTILE), "each app has its own user");
    let release = only_child(&agent.apps_dir().join(HOSTILE).join(ENV).join("builds"));
    assert_eq!(
        u64::from(std::fs::metadata(&release).expect("release").uid()),
        uid
    );
    let state = std::fs::metadata(agent.state_dir()).expect("state dir");
    assert_eq!((state.uid(), state.mode() & 0o777), (0, 0o700));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_as_root_a_hostile_app_is_confined_by_landlock_or_the_agent_says_why_not() {
    if !is_root() {
        eprintln!("skipped: the test starts the agent as `nobody`, which needs root");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    // `nobody` must reach its own folder; nothing else of the test directory is theirs.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).expect("chmod");
    let home = dir.path().join("nobody");
    std::fs::create_dir_all(home.join("state")).expect("state dir");
    std::os::unix::fs::chown(&home, Some(UNPRIVILEGED), Some(UNPRIVILEGED)).expect("chown");
    let agent = TestAgent::start_as(
        rollway_bin(),
        &home.join("state"),
        UNPRIVILEGED,
        UNPRIVILEGED,
    )
    .await;
    let isolation = isolation(&agent).await;
    let abi = match isolation["kind"].as_str() {
        Some("landlock") => {
            let abi = isolation["abi"].as_u64().expect("abi");
            assert!(
                agent
                    .log()
                    .contains(&format!("isolation: landlock ABI v{abi}")),
                "{}",
                agent.log()
            );
            abi
        }
        Some("none") => {
            let reason = isolation["reason"].as_str().unwrap_or_default();
            eprintln!("this kernel has no Landlock: {reason}; only the report is checked");
            assert!(reason.contains("Landlock"), "{isolation}");
            assert!(
                agent
                    .log()
                    .contains("isolation: none — apps run as uid 65534")
            );
            return;
        }
        _ => panic!("unexpected isolation {isolation}"),
    };
    let report = attack(&agent, dir.path()).await;
    assert_denied(&agent, &report).await;
    assert_eq!(report["uid"], u64::from(UNPRIVILEGED), "{report}");
    let gap = agent
        .log()
        .contains("cannot stop an app from connecting to a Unix socket");
    if gap {
        // A known gap, said at start: Landlock before ABI 9 does not confine Unix sockets by
        // path, and this host could not hide the state directory in a mount namespace.
        eprintln!(
            "landlock ABI {abi} without hiding: the proxy's control socket was {}",
            report["proxy_control_socket"]
        );
    } else {
        assert_ne!(report["proxy_control_socket"], "connected", "{report:#}");
    }
}

/// Deploys the victim (with a secret) and the hostile app (with a deployer token), and returns
/// the hostile app's report.
async fn attack(agent: &TestAgent, dir: &Path) -> serde_json::Value {
    let victim = TestApp::new(dir.join(VICTIM))
        .named(VICTIM)
        .hosts(&["victim.test"])
        .run("/usr/bin/python3 app.py")
        .file("app.py", APP_PY)
        .file("victim-only.txt", "the victim's own file\n")
        .secrets(ENV, &["VICTIM_SECRET"]);
    agent
        .set_secret(VICTIM, ENV, "VICTIM_SECRET", "victim-canary-7f3a")
        .await
        .assert_code(0);
    agent.deploy(&victim, ENV).await.assert_code(0);
    let victim_builds = agent.apps_dir().join(VICTIM).join(ENV).join("builds");
    let victim_release = only_child(&victim_builds);

    let created = agent
        .cli(&[
            "tokens", "create", "--role", "deployer", "--name", "ci", "--json",
        ])
        .await;
    created.assert_code(0);
    let created: serde_json::Value = serde_json::from_str(&created.stdout).expect("token JSON");
    let deployer = created["token"].as_str().expect("token").to_owned();

    let agent_pid = std::fs::read_to_string(agent.state_dir().join("agent.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|json| json["pid"].as_u64())
        .expect("the agent's pid in agent.json");
    let victim_pid = *agent
        .instance_pid_files()
        .iter()
        .find(|(id, _)| id.starts_with(VICTIM))
        .map(|(_, pid)| pid)
        .expect("the victim's pid file");
    let state = agent.state_dir();
    let files = BTreeMap::from([
        ("admin_token", state.join("admin.token")),
        ("store", state.join("rollway.db")),
        ("master_key", agent.master_key_file()),
        ("legacy_master_key", state.join("master.key")),
        ("victim_file", victim_release.join("victim-only.txt")),
        (
            "agent_environ",
            PathBuf::from(format!("/proc/{agent_pid}/environ")),
        ),
    ]);
    let dirs = BTreeMap::from([
        ("state_dir", state.to_path_buf()),
        ("victim_dir", victim_builds.clone()),
    ]);
    let targets = serde_json::json!({
        "files": files,
        "dirs": dirs,
        "api": agent.api_url(),
        "sockets": { "proxy_control_socket": state.join("proxy/proxy.sock") },
        "agent_pid": agent_pid,
        "victim_pid": victim_pid,
    });
    let hostile = TestApp::new(dir.join(HOSTILE))
        .named(HOSTILE)
        .hosts(&["hostile.test"])
        .run("/usr/bin/python3 app.py")
        .file("app.py", APP_PY)
        .env("ROLE", "hostile")
        .env("HOSTILE_TARGETS", targets.to_string());
    let folder = hostile.write().display().to_string();
    agent
        .cli_as(Some(&deployer), &["deploy", "--env", ENV, "--dir", &folder])
        .await
        .assert_code(0);
    let report_path =
        only_child(&agent.apps_dir().join(HOSTILE).join(ENV).join("builds")).join("report.json");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(&report_path) {
            return serde_json::from_str(&text).expect("report JSON");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no report at `{}`:\n{}",
            report_path.display(),
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn assert_denied(agent: &TestAgent, report: &serde_json::Value) {
    for name in [
        "admin_token",
        "store",
        "master_key",
        "legacy_master_key",
        "victim_file",
        "agent_environ",
        "state_dir",
        "victim_dir",
    ] {
        assert_eq!(
            report[name]["read"], false,
            "`{name}` was readable: {report:#}"
        );
    }
    assert_eq!(
        report["environ_with_victim_secret"],
        serde_json::json!([]),
        "{report:#}"
    );
    assert_eq!(report["signal_agent"], "PermissionError", "{report:#}");
    assert_eq!(report["swap_builds"], "PermissionError", "{report:#}");
    assert_eq!(report["mint_admin_token"], 401, "{report:#}");
    let tokens = agent.cli(&["tokens", "list", "--json"]).await;
    tokens.assert_code(0);
    assert!(!tokens.stdout.contains("hostile"), "{}", tokens.stdout);
}

async fn isolation(agent: &TestAgent) -> serde_json::Value {
    let answer = agent.api("GET", "/v1/agent", "").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let info: serde_json::Value = serde_json::from_str(&answer.body).expect("agent JSON");
    info["isolation"].clone()
}

fn only_child(dir: &Path) -> PathBuf {
    let children: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|error| panic!("cannot list `{}`: {error}", dir.display()))
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            !path
                .file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with('.'))
        })
        .collect();
    assert_eq!(children.len(), 1, "{children:?}");
    children.into_iter().next().expect("one")
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .map(|line| line.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_upgrade_a_release_folder_left_in_the_state_dir_is_carried_over() {
    let mut setup = Setup::start().await;
    let app = setup.app("app", "v1");
    setup.agent.deploy(&app, ENV).await.assert_code(0);
    setup.agent.assert_serves("v1").await;
    setup.agent.kill9().await;
    // The layout before isolation: release folders inside the state directory.
    let builds = setup
        .agent
        .apps_dir()
        .join(testkit::agent::APP)
        .join(ENV)
        .join("builds");
    let release = only_child(&builds);
    let legacy = setup.agent.state_dir().join("builds");
    std::fs::create_dir_all(&legacy).expect("legacy builds");
    std::fs::rename(
        &release,
        legacy.join(release.file_name().expect("folder name")),
    )
    .expect("move the release folder back");

    setup.agent.restart_with_env(&[]).await;
    assert!(
        release.join("README").is_file(),
        "carried over:\n{}",
        setup.agent.log()
    );
    let pids = setup.agent.instance_pid_files();
    let (id, pid) = pids.iter().next().expect("one instance");
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = setup.agent.instance_pid_files();
        if now.get(id).is_some_and(|new| new != pid) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "`{id}` did not start again:\n{}",
            setup.agent.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The proxy may still try the killed process once; what matters is that it serves again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = setup.agent.get(None, "/").await;
        if answer.status == 200 && answer.body.trim() == "v1" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not serving again: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// As root, apps run as users of their own and must cross every folder on the way to their own:
/// a state folder inside a private one (root's home) is refused when the agent starts, naming the
/// folder and what to do, not at the first deploy as "Permission denied".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_root_a_state_folder_apps_cannot_reach_is_refused_at_start() {
    if !is_root() {
        eprintln!("skipped: the agent must be started as root for per-app users");
        return;
    }
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let private = dir.path().join("private");
    std::fs::create_dir(&private).expect("private dir");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let state = private.join("state");
    let mut command = tokio::process::Command::new(rollway_bin());
    command
        .arg("agent")
        .arg("--state")
        .arg(&state)
        .arg("--api")
        .arg("127.0.0.1:0")
        .arg("--proxy")
        .arg("127.0.0.1:0")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("the agent exits")
        .expect("run the agent");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_ne!(output.status.code(), Some(0), "{stderr}");
    let private = private.display();
    assert!(
        stderr.contains(&format!(
            "`{private}` (mode 0700) lets no other user through"
        )),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("chmod o+x {private}")), "{stderr}");
    assert!(stderr.contains("--state /var/lib/rollway"), "{stderr}");
    // No proxy was started (it would hold the state folder's lock and ports).
    assert!(
        !state.join("proxy/proxy.pid").exists()
            || std::fs::read_to_string(state.join("proxy/proxy.pid"))
                .unwrap_or_default()
                .trim()
                .is_empty(),
        "a proxy was left behind"
    );
}
