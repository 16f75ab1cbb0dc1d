//! Tests of packing: reproducible bytes, ignore files, `.git`, metadata normalization.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use super::*;

/// A folder built from `(path, contents)` pairs; a path ending in `*` is made executable (the
/// `*` is not part of the name).
fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for (path, contents) in files {
        let (path, executable) = match path.strip_suffix('*') {
            Some(path) => (path, true),
            None => (*path, false),
        };
        let full = dir.path().join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent).expect("create parent");
        }
        std::fs::write(&full, contents).expect("write file");
        set_executable(&full, executable);
    }
    dir
}

#[cfg(unix)]
fn set_executable(path: &Path, executable: bool) {
    use std::os::unix::fs::PermissionsExt;
    let mode = if executable { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[cfg(not(unix))]
fn set_executable(_path: &Path, _executable: bool) {}

/// What the artifact holds: path -> (kind and mode, contents), plus every header's metadata.
fn listing(artifact: &Artifact) -> BTreeMap<String, String> {
    let decoder = zstd::Decoder::new(artifact.bytes.as_slice()).expect("zstd");
    let mut archive = tar::Archive::new(decoder);
    let mut listing = BTreeMap::new();
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let header = entry.header();
        assert_eq!(header.mtime().ok(), Some(0));
        assert_eq!((header.uid().ok(), header.gid().ok()), (Some(0), Some(0)));
        let path = entry.path().expect("path").display().to_string();
        let kind = match header.entry_type() {
            tar::EntryType::Directory => "dir",
            tar::EntryType::Symlink => "link",
            _ => "file",
        };
        let mode = header.mode().expect("mode");
        let mut contents = String::new();
        if kind == "link" {
            let target = entry.link_name().expect("link").expect("target");
            contents = format!("-> {}", target.display());
        } else {
            entry.read_to_string(&mut contents).expect("contents");
        }
        listing.insert(path, format!("{kind} {mode:o} {contents}"));
    }
    listing
}

fn check(files: &[(&str, &str)], expected: &[(&str, &str)]) {
    let dir = folder(files);
    let artifact = pack(dir.path()).expect("pack");
    let expected: BTreeMap<String, String> = expected
        .iter()
        .map(|(path, description)| (path.to_string(), description.to_string()))
        .collect();
    assert_eq!(listing(&artifact), expected);
    let n_files = expected
        .values()
        .filter(|description| !description.starts_with("dir"))
        .count();
    assert_eq!(artifact.n_files, n_files);
    assert_eq!(artifact.size, artifact.bytes.len() as u64);
}

#[test]
fn packs_files_with_normalized_modes() {
    check(
        &[
            ("app.py", "print(1)"),
            ("bin/start*", "#!/bin/sh"),
            ("static/a/b.css", "b{}"),
        ],
        &[
            ("app.py", "file 644 print(1)"),
            ("bin", "dir 755 "),
            ("bin/start", "file 755 #!/bin/sh"),
            ("static", "dir 755 "),
            ("static/a", "dir 755 "),
            ("static/a/b.css", "file 644 b{}"),
        ],
    );
}

#[test]
fn gitignore_is_honoured_without_a_git_repository() {
    check(
        &[
            (".gitignore", "*.log\n/build/\n.env\n"),
            ("app.py", "x"),
            ("debug.log", "noise"),
            ("build/out.bin", "big"),
            (".env", "SECRET=1"),
            ("sub/.gitignore", "local.txt\n"),
            ("sub/local.txt", "x"),
            ("sub/kept.txt", "y"),
        ],
        &[
            (".gitignore", "file 644 *.log\n/build/\n.env\n"),
            ("app.py", "file 644 x"),
            ("sub", "dir 755 "),
            ("sub/.gitignore", "file 644 local.txt\n"),
            ("sub/kept.txt", "file 644 y"),
        ],
    );
}

#[test]
fn rollwayignore_is_honoured() {
    check(
        &[
            (".rollwayignore", "tests/\n*.md\n"),
            ("app.py", "x"),
            ("README.md", "r"),
            ("tests/t.py", "t"),
        ],
        &[
            (".rollwayignore", "file 644 tests/\n*.md\n"),
            ("app.py", "file 644 x"),
        ],
    );
}

#[test]
fn git_folder_is_never_packed() {
    check(
        &[
            (".git/HEAD", "ref: refs/heads/main"),
            ("vendor/lib/.git", "gitdir: ../x"),
            ("app.py", "x"),
        ],
        &[
            ("app.py", "file 644 x"),
            ("vendor", "dir 755 "),
            ("vendor/lib", "dir 755 "),
        ],
    );
}

#[test]
fn dotfiles_are_packed() {
    check(
        &[(".python-version", "3.12")],
        &[(".python-version", "file 644 3.12")],
    );
}

#[cfg(unix)]
#[test]
fn symlinks_stay_symlinks() {
    let dir = folder(&[("real.txt", "r")]);
    std::os::unix::fs::symlink("real.txt", dir.path().join("alias.txt")).expect("symlink");
    let artifact = pack(dir.path()).expect("pack");
    let listing = listing(&artifact);
    assert_eq!(
        listing.get("alias.txt").map(String::as_str),
        Some("link 777 -> real.txt")
    );
    assert_eq!(artifact.n_files, 2);
}

#[test]
fn same_content_gives_same_digest() {
    let files = [
        ("app.py", "print(1)"),
        ("lib/util.py", "x = 1"),
        ("run*", "#!/bin/sh"),
    ];
    let first = folder(&files);
    let second = folder(&files);
    // Different mtimes, different folder names: the same bytes regardless.
    let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
    std::fs::File::options()
        .write(true)
        .open(second.path().join("app.py"))
        .and_then(|file| file.set_modified(old))
        .expect("set mtime");
    let packed_first = pack(first.path()).expect("pack");
    assert_eq!(pack(first.path()).expect("pack again"), packed_first);
    assert_eq!(
        pack(second.path()).expect("pack other").digest,
        packed_first.digest
    );
    assert_eq!(packed_first.digest.len(), 64);

    let changed = folder(&[
        ("app.py", "print(2)"),
        ("lib/util.py", "x = 1"),
        ("run*", "#!/bin/sh"),
    ]);
    assert_ne!(
        pack(changed.path()).expect("pack changed").digest,
        packed_first.digest
    );
}

#[cfg(unix)]
#[test]
fn executable_bit_changes_the_digest() {
    let plain = folder(&[("run", "#!/bin/sh")]);
    let executable = folder(&[("run*", "#!/bin/sh")]);
    assert_ne!(
        pack(plain.path()).expect("pack").digest,
        pack(executable.path()).expect("pack").digest
    );
}

#[test]
fn long_paths_are_packed() {
    let long = format!("{}/file.txt", "d".repeat(120));
    let dir = folder(&[(long.as_str(), "deep")]);
    let listing = listing(&pack(dir.path()).expect("pack"));
    assert_eq!(
        listing.get(&long).map(String::as_str),
        Some("file 644 deep")
    );
}

#[test]
fn a_file_is_not_a_folder() {
    let dir = folder(&[("app.py", "x")]);
    let path = dir.path().join("app.py");
    let error = pack(&path).expect_err("a file");
    assert_eq!(
        error.to_string(),
        format!("cannot pack `{}`: not a directory", path.display())
    );
}

#[test]
fn debug_leaves_the_bytes_out() {
    let dir = folder(&[("app.py", "x")]);
    let artifact = pack(dir.path()).expect("pack");
    let debug = format!("{artifact:?}");
    assert!(debug.starts_with("Artifact { digest: "), "{debug}");
    assert!(!debug.contains("bytes"), "{debug}");
}

#[test]
fn the_manifest_is_not_part_of_the_artifact() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("app.py"), "print('hi')\n").expect("write");
    std::fs::write(dir.path().join("rollway.toml"), "[app]\nname = \"a\"\n").expect("write");
    let first = pack(dir.path()).expect("pack");
    std::fs::write(
        dir.path().join("rollway.toml"),
        "[app]\nname = \"a\"\n[flags]\nX = true\n",
    )
    .expect("write");
    let second = pack(dir.path()).expect("pack");
    assert_eq!(
        first.digest, second.digest,
        "a config-only change keeps the artifact"
    );
    assert_eq!(first.n_files, 1);
}
