use super::*;

#[test]
fn the_preferred_uid_is_in_the_range_and_stable() {
    let uid = preferred_uid("shop", "production");
    assert!((FIRST_APP_UID..=LAST_APP_UID).contains(&uid));
    assert_eq!(uid, preferred_uid("shop", "production"));
    assert_ne!(uid, preferred_uid("shop", "staging"));
    // The separator keeps `a-b`/`c` and `a`/`b-c` apart.
    assert_ne!(preferred_uid("a-b", "c"), preferred_uid("a", "b-c"));
}

#[test]
fn a_taken_uid_moves_on_and_wraps_around() {
    let taken = BTreeSet::from([LAST_APP_UID, FIRST_APP_UID]);
    assert_eq!(first_free(LAST_APP_UID, &taken), Some(FIRST_APP_UID + 1));
    assert_eq!(
        first_free(FIRST_APP_UID + 5, &taken),
        Some(FIRST_APP_UID + 5)
    );
}

#[test]
fn as_root_each_app_environment_owns_its_folder_and_keeps_its_uid() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root to own folders as app users");
        return;
    }
    let root = tempfile::tempdir().expect("temp dir");
    let apps = apps_dir(&root.path().join("state"));
    // Another app environment already owns the uid `shop`/`production` would prefer.
    let preferred = preferred_uid("shop", "production");
    let squatter = apps.join("other").join("env");
    std::fs::create_dir_all(&squatter).expect("squatter");
    std::os::unix::fs::chown(&squatter, Some(0), Some(preferred)).expect("chown");

    let home = AppHome::ensure(&apps, "shop", "production").expect("ensure");
    assert_ne!(home.user.uid, preferred, "a collision moves on");
    for dir in [home.dir.clone(), home.builds(), home.dir.join("tmp")] {
        let metadata = std::fs::metadata(&dir).expect("dir");
        assert_eq!(
            (metadata.uid(), metadata.gid(), metadata.mode() & 0o777),
            (0, home.user.uid, 0o710),
            "{}: the agent's, crossable by the app's group only",
            dir.display()
        );
    }
    assert_eq!(
        std::fs::metadata(&apps).expect("apps").mode() & 0o777,
        0o711
    );
    let again = AppHome::ensure(&apps, "shop", "production").expect("again");
    assert_eq!(again, home, "the folder's owner records the allocation");

    let release = home.builds().join("r1");
    std::fs::create_dir_all(release.join("src")).expect("release");
    std::fs::write(release.join("src/app.py"), "print()").expect("file");
    std::os::unix::fs::symlink("/etc/shadow", release.join("link")).expect("symlink");
    home.take_ownership(&release).expect("chown");
    let owner = |path: &Path| std::fs::symlink_metadata(path).expect("meta").uid();
    assert_eq!(owner(&release), home.user.uid);
    assert_eq!(owner(&release.join("src/app.py")), home.user.uid);
    assert_eq!(owner(&release.join("link")), home.user.uid);
    assert_eq!(owner(Path::new("/etc/shadow")), 0, "links are not followed");
}

#[test]
fn copy_tree_keeps_modes_and_links() {
    let root = tempfile::tempdir().expect("temp dir");
    let from = root.path().join("from");
    std::fs::create_dir_all(from.join("bin")).expect("dirs");
    std::fs::write(from.join("bin/run"), "#!/bin/sh\n").expect("file");
    std::fs::set_permissions(from.join("bin/run"), std::fs::Permissions::from_mode(0o750))
        .expect("chmod");
    std::os::unix::fs::symlink("bin/run", from.join("link")).expect("symlink");
    let to = root.path().join("to");
    copy_tree(&from, &to).expect("copy");
    assert_eq!(
        std::fs::read_to_string(to.join("bin/run")).expect("copied"),
        "#!/bin/sh\n"
    );
    let mode = std::fs::metadata(to.join("bin/run")).expect("meta").mode() & 0o777;
    assert_eq!(mode, 0o750);
    assert_eq!(
        std::fs::read_link(to.join("link")).expect("link"),
        Path::new("bin/run")
    );
}
