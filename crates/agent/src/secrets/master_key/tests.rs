use super::*;

struct Dirs {
    _root: tempfile::TempDir,
    state: PathBuf,
    config: PathBuf,
}

fn dirs() -> Dirs {
    let root = tempfile::tempdir().expect("temp dir");
    let state = root.path().join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    let config = root.path().join("config/rollway/master.key");
    Dirs {
        state,
        config,
        _root: root,
    }
}

fn sources(dirs: &Dirs) -> KeySources {
    KeySources {
        file: None,
        variable: None,
        credentials_dir: None,
        default_file: dirs.config.clone(),
    }
}

fn mode(path: &Path) -> u32 {
    std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(path).expect("metadata").permissions(),
    ) & 0o777
}

#[test]
fn a_new_key_is_made_outside_the_state_dir_private_and_stable() {
    let dirs = dirs();
    let first = load(&sources(&dirs), &dirs.state).expect("create");
    let second = load(&sources(&dirs), &dirs.state).expect("load");
    assert_eq!(*first.key.0, *second.key.0);
    assert_eq!(first.origin, KeyOrigin::File(dirs.config.clone()));
    assert_eq!(mode(&dirs.config), 0o600);
    assert!(!dirs.state.join(MASTER_KEY_FILE).exists());
    assert_eq!(first.moved, None);
}

#[test]
fn a_key_left_in_the_state_dir_is_moved_out_once() {
    let dirs = dirs();
    let legacy = dirs.state.join(MASTER_KEY_FILE);
    std::fs::write(&legacy, "ab".repeat(32)).expect("legacy key");
    let loaded = load(&sources(&dirs), &dirs.state).expect("move");
    assert_eq!(*loaded.key.0, [0xab; 32]);
    assert_eq!(loaded.moved, Some((legacy.clone(), dirs.config.clone())));
    assert!(
        !legacy.exists(),
        "the old key file is gone from the state dir"
    );
    assert_eq!(mode(&dirs.config), 0o600);
    let again = load(&sources(&dirs), &dirs.state).expect("load");
    assert_eq!((*again.key.0, again.moved), ([0xab; 32], None));
}

#[test]
fn the_variable_wins_over_the_default_file_and_removes_an_equal_legacy_key() {
    let dirs = dirs();
    let legacy = dirs.state.join(MASTER_KEY_FILE);
    std::fs::write(&legacy, "cd".repeat(32)).expect("legacy key");
    let mut sources = sources(&dirs);
    sources.variable = Some(Zeroizing::new("cd".repeat(32)));
    let loaded = load(&sources, &dirs.state).expect("variable");
    assert_eq!(
        (*loaded.key.0, loaded.origin),
        ([0xcd; 32], KeyOrigin::Variable)
    );
    assert!(!legacy.exists());
    assert!(
        !dirs.config.exists(),
        "no file is made when the variable holds the key"
    );
}

#[test]
fn a_different_key_in_the_state_dir_is_refused() {
    let dirs = dirs();
    std::fs::write(dirs.state.join(MASTER_KEY_FILE), "ab".repeat(32)).expect("legacy key");
    let mut sources = sources(&dirs);
    sources.variable = Some(Zeroizing::new("cd".repeat(32)));
    let error = load(&sources, &dirs.state).expect_err("two keys");
    assert!(
        matches!(error, SecretError::ConflictingKeys { .. }),
        "{error}"
    );
}

#[test]
fn a_systemd_credential_is_read_and_never_written() {
    let dirs = dirs();
    let credentials = dirs.state.parent().expect("root").join("credentials");
    std::fs::create_dir_all(&credentials).expect("credentials dir");
    std::fs::write(credentials.join(MASTER_KEY_FILE), "ef".repeat(32)).expect("credential");
    let mut sources = sources(&dirs);
    sources.credentials_dir = Some(credentials.clone());
    let loaded = load(&sources, &dirs.state).expect("credential");
    assert_eq!(*loaded.key.0, [0xef; 32]);
    assert_eq!(
        loaded.origin,
        KeyOrigin::Credential(credentials.join(MASTER_KEY_FILE))
    );
}

#[test]
fn a_key_file_inside_the_state_dir_is_refused() {
    let dirs = dirs();
    let mut sources = sources(&dirs);
    sources.file = Some(dirs.state.join("keys/master.key"));
    let error = load(&sources, &dirs.state).expect_err("inside");
    assert!(
        matches!(error, SecretError::KeyInStateDir { .. }),
        "{error}"
    );
}
