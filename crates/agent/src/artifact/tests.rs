//! Tests of artifact storage and unpacking: digests, atomic puts, and hostile archives.

use std::path::Path;

use sha2::{Digest, Sha256};

use super::*;

/// One raw tar entry, written byte for byte so that tests can build what `tar::Builder` refuses.
enum Raw<'a> {
    File(&'a str, &'a str),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
}

/// A zstd-compressed tar of `entries` and its digest.
fn raw_artifact(entries: &[Raw<'_>]) -> (String, Vec<u8>) {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let (name, entry_type, link, contents) = match entry {
            Raw::File(name, contents) => (*name, tar::EntryType::Regular, "", *contents),
            Raw::Dir(name) => (*name, tar::EntryType::Directory, "", ""),
            Raw::Symlink(name, target) => (*name, tar::EntryType::Symlink, *target, ""),
            Raw::HardLink(name, target) => (*name, tar::EntryType::Link, *target, ""),
        };
        let mut header = tar::Header::new_gnu();
        let gnu = header.as_gnu_mut().expect("gnu header");
        gnu.name[..name.len()].copy_from_slice(name.as_bytes());
        gnu.linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_entry_type(entry_type);
        header.set_mode(0o644);
        header.set_size(contents.len() as u64);
        header.set_cksum();
        builder
            .append(&header, contents.as_bytes())
            .expect("append");
    }
    let tar_bytes = builder.into_inner().expect("finish tar");
    let bytes = zstd::encode_all(tar_bytes.as_slice(), 3).expect("compress");
    (hex::encode(Sha256::digest(&bytes)), bytes)
}

/// Stores `entries` and unpacks them into a fresh `dest`; returns the outcome and the folder.
fn unpack_raw(entries: &[Raw<'_>]) -> (Result<(), ArtifactError>, tempfile::TempDir) {
    let root = tempfile::tempdir().expect("tempdir");
    let store = ArtifactStore::new(root.path().join("artifacts"));
    let (digest, bytes) = raw_artifact(entries);
    store.put(&digest, &bytes).expect("put");
    let result = store.unpack(&digest, &root.path().join("app"));
    (result, root)
}

/// Checks that unpacking `entries` is refused for `reason`, and that nothing is left behind:
/// no destination, no temporary folder, nothing outside.
fn check_refused(entries: &[Raw<'_>], reason: &str) {
    let (result, root) = unpack_raw(entries);
    match result {
        Err(ArtifactError::UnsafeEntry { reason: actual, .. }) => assert_eq!(actual, reason),
        other => panic!("expected an unsafe entry ({reason}), got {other:?}"),
    }
    let mut left: Vec<String> = std::fs::read_dir(root.path())
        .expect("read root")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    left.sort();
    assert_eq!(left, ["artifacts"]);
}

#[test]
fn tampered_digest_is_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let store = ArtifactStore::new(root.path());
    let (digest, mut bytes) = raw_artifact(&[Raw::File("a.txt", "a")]);
    bytes.push(0);
    assert!(matches!(
        store.put(&digest, &bytes),
        Err(ArtifactError::DigestMismatch { .. })
    ));
    assert!(!store.has(&digest));
}

#[test]
fn digest_must_be_sha256_hex() {
    let root = tempfile::tempdir().expect("tempdir");
    let store = ArtifactStore::new(root.path());
    for digest in [
        "",
        "../../etc/passwd",
        &"A".repeat(64),
        &"a".repeat(63),
        &"g".repeat(64),
    ] {
        assert!(
            matches!(
                store.put(digest, b""),
                Err(ArtifactError::InvalidDigest { .. })
            ),
            "{digest}"
        );
        assert!(!store.has(digest));
    }
}

#[test]
fn put_is_atomic_and_idempotent() {
    let root = tempfile::tempdir().expect("tempdir");
    let store = ArtifactStore::new(root.path());
    let (digest, bytes) = raw_artifact(&[Raw::File("a.txt", "a")]);
    assert!(!store.has(&digest));
    store.put(&digest, &bytes).expect("put");
    store.put(&digest, &bytes).expect("put again");
    assert!(store.has(&digest));
    let path = store.path(&digest).expect("path");
    assert_eq!(
        path,
        root.path().join("sha256").join(format!("{digest}.tar.zst"))
    );
    assert_eq!(std::fs::read(&path).expect("read"), bytes);
    let n_files = std::fs::read_dir(root.path().join("sha256"))
        .expect("read dir")
        .count();
    assert_eq!(n_files, 1, "no temporary file is left");
}

#[test]
fn unpack_needs_a_stored_artifact_and_a_fresh_folder() {
    let root = tempfile::tempdir().expect("tempdir");
    let store = ArtifactStore::new(root.path().join("artifacts"));
    let (digest, bytes) = raw_artifact(&[Raw::File("a.txt", "a")]);
    assert!(matches!(
        store.unpack(&digest, &root.path().join("app")),
        Err(ArtifactError::NotFound { .. })
    ));
    store.put(&digest, &bytes).expect("put");
    std::fs::create_dir(root.path().join("app")).expect("mkdir");
    assert!(matches!(
        store.unpack(&digest, &root.path().join("app")),
        Err(ArtifactError::DestinationExists { .. })
    ));
}

#[test]
fn hostile_entries_are_refused() {
    check_refused(&[Raw::File("../evil", "x")], "its path contains `..`");
    check_refused(&[Raw::File("a/../../evil", "x")], "its path contains `..`");
    check_refused(&[Raw::File("/tmp/evil", "x")], "its path is absolute");
    check_refused(
        &[Raw::Symlink("etc", "/etc")],
        "it is a symlink to an absolute path",
    );
    check_refused(
        &[Raw::Symlink("up", "../..")],
        "it is a symlink pointing outside the artifact",
    );
    check_refused(
        &[Raw::Dir("a"), Raw::Symlink("a/up", "../../x")],
        "it is a symlink pointing outside the artifact",
    );
    check_refused(
        &[Raw::Symlink("out", "a/../../x")],
        "it is a symlink whose target has `..` after a name",
    );
    // `deep/s` points at the root; a symlink under it climbing once would leave the folder.
    check_refused(
        &[
            Raw::Dir("deep"),
            Raw::Symlink("deep/s", ".."),
            Raw::Symlink("deep/s/l", "../x"),
        ],
        "its path goes through a symlink",
    );
    check_refused(
        &[Raw::Symlink("s", "."), Raw::File("s/x", "through")],
        "its path goes through a symlink",
    );
    check_refused(
        &[Raw::File("a", "x"), Raw::HardLink("b", "a")],
        "only files, directories and symlinks are allowed",
    );
}

#[test]
fn inside_symlinks_are_unpacked() {
    let (result, root) = unpack_raw(&[
        Raw::Dir("a"),
        Raw::File("a/real.txt", "real"),
        Raw::Symlink("a/alias.txt", "real.txt"),
        Raw::Symlink("a/up.txt", "../top.txt"),
        Raw::File("top.txt", "top"),
    ]);
    result.expect("unpack");
    let app = root.path().join("app");
    assert_eq!(
        std::fs::read_to_string(app.join("a/alias.txt")).expect("read"),
        "real"
    );
    assert_eq!(
        std::fs::read_to_string(app.join("a/up.txt")).expect("read"),
        "top"
    );
}

/// Every file under `dir`: relative path -> (contents, executable).
fn files(dir: &Path) -> std::collections::BTreeMap<String, (String, bool)> {
    let mut files = std::collections::BTreeMap::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            let relative = path
                .strip_prefix(dir)
                .expect("relative")
                .display()
                .to_string();
            let contents = std::fs::read_to_string(&path).expect("read");
            files.insert(relative, (contents, is_executable(&path)));
        }
    }
    files
}

#[cfg(unix)]
fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o111
        != 0
}

#[cfg(not(unix))]
fn is_executable(_path: &Path) -> bool {
    false
}

#[test]
fn pack_put_unpack_round_trip() {
    let source = tempfile::tempdir().expect("tempdir");
    let write = |path: &str, contents: &str| {
        let full = source.path().join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(full, contents).expect("write");
    };
    write("app.py", "print('hi')");
    write("lib/util.py", "x = 1");
    write("bin/start", "#!/bin/sh\nexec python app.py");
    write(".gitignore", "*.pyc\n");
    write("lib/util.pyc", "compiled");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let start = source.path().join("bin/start");
        std::fs::set_permissions(&start, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    }

    let artifact = client::artifact::pack(source.path()).expect("pack");
    let root = tempfile::tempdir().expect("tempdir");
    let store = ArtifactStore::new(root.path().join("artifacts"));
    store.put(&artifact.digest, &artifact.bytes).expect("put");
    let dest = root.path().join("releases").join("1");
    store.unpack(&artifact.digest, &dest).expect("unpack");

    let mut expected = files(source.path());
    expected.remove("lib/util.pyc");
    assert_eq!(files(&dest), expected);
    assert!(
        expected
            .get("bin/start")
            .is_some_and(|(_, executable)| *executable || cfg!(not(unix)))
    );

    // Times are now, not the artifact's 0 (pip refuses files older than 1980).
    let modified = std::fs::metadata(dest.join("app.py"))
        .and_then(|metadata| metadata.modified())
        .expect("mtime");
    assert!(modified > std::time::UNIX_EPOCH + std::time::Duration::from_secs(315_532_800));
}

/// What is left in `dir`, by name.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|entry| {
                    entry
                        .expect("entry")
                        .file_name()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A zstd-compressed tar holding one file of `size` zero bytes: a few KiB that unpack to `size`.
fn zeros_artifact(size: u64) -> (String, Vec<u8>) {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_path("zeros.bin").expect("path");
    header.set_entry_type(tar::EntryType::Regular);
    header.set_mode(0o644);
    header.set_size(size);
    header.set_cksum();
    builder
        .append(&header, std::io::repeat(0).take(size))
        .expect("append");
    let tar_bytes = builder.into_inner().expect("finish tar");
    let bytes = zstd::encode_all(tar_bytes.as_slice(), 19).expect("compress");
    (hex::encode(Sha256::digest(&bytes)), bytes)
}

#[test]
fn a_zstd_bomb_is_refused_and_leaves_nothing() {
    let root = tempfile::tempdir().expect("tempdir");
    let store = ArtifactStore::new(root.path().join("artifacts"));
    let (digest, bytes) = zeros_artifact(RATIO_FLOOR + 8 * 1024 * 1024);
    assert!((bytes.len() as u64) * store.limits().max_ratio < RATIO_FLOOR);
    store.put(&digest, &bytes).expect("put");
    let builds = root.path().join("builds");
    let result = store.unpack(&digest, &builds.join("app"));
    match result {
        Err(ArtifactError::ExpandsTooMuch { ratio, .. }) => assert_eq!(ratio, 200),
        other => panic!("expected a refused bomb, got {other:?}"),
    }
    assert_eq!(
        names_in(&builds),
        Vec::<String>::new(),
        "builds/ after a bomb"
    );
}

#[test]
fn unpacked_and_compressed_sizes_are_bounded() {
    let root = tempfile::tempdir().expect("tempdir");
    let limits = ArtifactLimits {
        max_compressed: 1 << 20,
        max_unpacked: 100_000,
        max_ratio: 1_000_000,
    };
    let store = ArtifactStore::new(root.path().join("artifacts")).with_limits(limits);
    let (digest, bytes) = zeros_artifact(200_000);
    store.put(&digest, &bytes).expect("put");
    let builds = root.path().join("builds");
    match store.unpack(&digest, &builds.join("app")) {
        Err(ArtifactError::UnpacksTooLarge { limit, .. }) => assert_eq!(limit, 100_000),
        other => panic!("expected the unpacked bound, got {other:?}"),
    }
    assert_eq!(names_in(&builds), Vec::<String>::new());

    let small = ArtifactStore::new(root.path().join("small")).with_limits(ArtifactLimits {
        max_compressed: 10,
        ..limits
    });
    match small.put(&digest, &bytes) {
        Err(error @ ArtifactError::TooLarge { .. }) => {
            assert!(
                error.to_string().contains("ROLLWAY_ARTIFACT_MAX_SIZE"),
                "{error}"
            )
        }
        other => panic!("expected the compressed bound, got {other:?}"),
    }
}

#[test]
fn a_corrupted_artifact_leaves_nothing_in_builds() {
    let root = tempfile::tempdir().expect("tempdir");
    let store = ArtifactStore::new(root.path().join("artifacts"));
    let (digest, bytes) = raw_artifact(&[Raw::File("a.txt", "a"), Raw::File("b.txt", "b")]);
    store.put(&digest, &bytes).expect("put");
    // Corrupt the stored file behind the store's back (a bad disk), keeping its name.
    let path = store.path(&digest).expect("path");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate");
    let builds = root.path().join("builds");
    assert!(store.unpack(&digest, &builds.join("app")).is_err());
    assert_eq!(names_in(&builds), Vec::<String>::new());
}

#[test]
fn leftovers_of_interrupted_work_are_removed() {
    let root = tempfile::tempdir().expect("tempdir");
    let builds = root.path().join("builds");
    std::fs::create_dir_all(builds.join(".app.0123.unpacking/sub")).expect("leftover");
    std::fs::create_dir_all(builds.join("kept")).expect("kept");
    assert_eq!(remove_hidden_with_suffix(&builds, ".unpacking"), 1);
    assert_eq!(names_in(&builds), ["kept"]);
}
