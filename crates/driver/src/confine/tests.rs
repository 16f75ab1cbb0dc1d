use super::*;

const USER: AppUser = AppUser {
    uid: 61999,
    gid: 61999,
};

async fn run(confinement: &Confinement, command: &str, workdir: &Path) -> String {
    confinement.prepare().expect("prepare");
    let output = confinement
        .command(command, workdir)
        .env_clear()
        .envs(confinement.env())
        .output()
        .await
        .expect("run");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[tokio::test]
async fn as_root_a_confined_process_is_its_user_with_no_groups_and_a_private_home() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to switch users");
        return;
    }
    let root = tempfile::tempdir().expect("temp dir");
    let temp_dir = root.path().join("tmp");
    let confinement = Isolation::Users.confinement(USER, temp_dir.clone());
    let seen = run(
        &confinement,
        "grep -E '^(Uid|Gid|Groups):' /proc/self/status | tr -s '\\t ' ' '; echo \"$HOME $TMPDIR\"",
        Path::new("/"),
    )
    .await;
    let home = temp_dir.display();
    assert_eq!(
        seen,
        format!(
            "Uid: 61999 61999 61999 61999\nGid: 61999 61999 61999 61999\nGroups: \n{home} {home}"
        ),
        "uid, gid, no supplementary groups, HOME and TMPDIR"
    );
    use std::os::unix::fs::MetadataExt as _;
    let metadata = std::fs::metadata(&temp_dir).expect("temp dir");
    assert_eq!((metadata.uid(), metadata.mode() & 0o777), (USER.uid, 0o700));
}

#[test]
fn the_report_names_the_isolation() {
    assert_eq!(Isolation::Users.describe(), "per-app users (root)");
    let landlock = Isolation::Landlock {
        abi: 7,
        exe: PathBuf::from("/usr/bin/rollway"),
        hidden: vec![PathBuf::from("/var/lib/rollway")],
        cannot_hide: None,
    };
    assert_eq!(landlock.describe(), "landlock ABI v7");
    let none = Isolation::None {
        user: "uid 1000".to_owned(),
        reason: "the kernel has no Landlock (not built into this kernel)".to_owned(),
    };
    assert_eq!(
        none.describe(),
        "none — apps run as uid 1000; the kernel has no Landlock (not built into this kernel)"
    );
    let confinement = landlock.confinement(USER, PathBuf::from("/t"));
    assert_eq!(confinement.user, None, "no user switch without root");
    assert_eq!(confinement.sandbox, Some(PathBuf::from("/usr/bin/rollway")));
    assert_eq!(confinement.hide, vec![PathBuf::from("/var/lib/rollway")]);
    assert_eq!(
        landlock.gap(),
        None,
        "hidden paths close the Unix socket gap"
    );
}

#[test]
fn another_users_path_keeps_only_the_folders_it_can_enter() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let open = dir.path().join("open/bin");
    let private = dir.path().join("private");
    let behind = private.join("bin");
    for folder in [&open, &behind] {
        std::fs::create_dir_all(folder).expect("mkdir");
    }
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let path = std::env::join_paths([
        behind.as_path(),
        open.as_path(),
        Path::new("relative/bin"),
        &dir.path().join("missing"),
    ])
    .expect("join");
    assert_eq!(
        path_for_other_users(&path),
        open.as_os_str(),
        "only the folder every user can cross stays"
    );
    assert_eq!(
        first_uncrossable(&behind),
        Some(Uncrossable {
            dir: private.clone(),
            mode: 0o700
        })
    );
    assert_eq!(first_uncrossable(&open), None);
}

#[test]
fn a_process_of_its_own_user_gets_the_path_it_can_use_and_others_the_agents() {
    let own = Confinement {
        user: Some(USER),
        temp_dir: Some(PathBuf::from("/t")),
        ..Confinement::default()
    };
    let names = |confinement: &Confinement| {
        confinement
            .env()
            .into_iter()
            .map(|(name, _)| name)
            .collect::<Vec<_>>()
    };
    if std::env::var_os("PATH").is_some() {
        assert!(names(&own).contains(&OsString::from("PATH")));
    }
    let same_user = Confinement {
        temp_dir: Some(PathBuf::from("/t")),
        ..Confinement::default()
    };
    assert_eq!(
        names(&same_user),
        vec![OsString::from("HOME"), OsString::from("TMPDIR")],
        "the agent's own PATH is passed through unchanged"
    );
}

#[test]
fn the_inherited_env_is_the_agents_few_variables_with_the_private_ones_in_their_place() {
    let confined = Confinement {
        user: Some(USER),
        temp_dir: Some(PathBuf::from("/t")),
        ..Confinement::default()
    };
    let env = confined.inherited_env();
    let mut names: Vec<&OsString> = env.iter().map(|(name, _)| name).collect();
    names.sort();
    let count = names.len();
    names.dedup();
    assert_eq!(names.len(), count, "every variable once: {env:?}");
    assert!(env.iter().all(|(name, _)| {
        name == "TMPDIR"
            || super::PASSED_THROUGH_VARIABLES
                .iter()
                .any(|passed| name == passed)
    }));
    let value = |wanted: &str| {
        env.iter()
            .find(|(name, _)| name == wanted)
            .map(|(_, value)| value.clone())
    };
    assert_eq!(value("HOME"), Some(OsString::from("/t")));
    assert_eq!(value("TMPDIR"), Some(OsString::from("/t")));
    if let Some(path) = std::env::var_os("PATH") {
        assert_eq!(value("PATH"), Some(super::path_for_other_users(&path)));
    }
    // Unconfined: the agent's own values, nothing else.
    assert_eq!(
        Confinement::default().inherited_env(),
        super::passed_through_env()
    );
}
