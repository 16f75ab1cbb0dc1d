//! `rollway init`: a manifest that `check` accepts, and no silent overwrite.

use crate::{rollway, transcript};

#[test]
fn python_folder_gets_a_manifest_that_checks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = dir.path().join("shipping-api");
    std::fs::create_dir(&app).expect("app dir");
    std::fs::write(app.join("app.py"), "print('hi')\n").expect("app.py");
    std::fs::write(app.join("requirements.txt"), "flask\n").expect("requirements");

    let output = rollway(&app, &["init"]);
    insta::assert_snapshot!(transcript(&output, dir.path()));
    let written = std::fs::read_to_string(app.join("rollway.toml")).expect("manifest written");
    assert!(written.contains("name = \"shipping-api\""));
    assert!(written.contains("run = \"python3 app.py\""));
    // A host per app and environment (no route conflicts on a shared agent) and no watch after
    // the switch in development.
    assert!(written.contains("hosts = [\"shipping-api.localhost\"]"));
    assert!(written.contains("analysis = { observe = \"0s\" }"));
    insta::assert_snapshot!("python_folder_manifest", written);

    let check = rollway(&app, &["check"]);
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
}

#[test]
fn existing_manifest_is_not_overwritten() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("rollway.toml"), "# mine\n").expect("write");
    let output = rollway(dir.path(), &["init"]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        std::fs::read_to_string(dir.path().join("rollway.toml")).expect("read"),
        "# mine\n"
    );

    let forced = rollway(dir.path(), &["init", "--force"]);
    assert_eq!(forced.status.code(), Some(0));
    assert_ne!(
        std::fs::read_to_string(dir.path().join("rollway.toml")).expect("read"),
        "# mine\n"
    );
}
