//! Every file in `test_data/err` must fail with exactly its snapshot; every file in `test_data/ok`
//! must parse, and its resolved environments and parity report are snapshots too.

use std::path::Path;

/// The one place these tests call the API: file in, rendered text out.
fn check(path: &Path) -> Result<String, String> {
    let source = std::fs::read_to_string(path).expect("test data is readable");
    let kind = path
        .parent()
        .and_then(Path::file_name)
        .and_then(|name| name.to_str())
        .unwrap_or("?");
    let name = path
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("?");
    let display_path = format!("{kind}/{name}");
    match manifest::parse(&source, &display_path) {
        Ok(manifest) => {
            let resolved = if manifest.environments.is_empty() {
                vec![
                    manifest
                        .resolve("production")
                        .expect("no environments: any name resolves"),
                ]
            } else {
                manifest.resolve_all()
            };
            let mut out = String::new();
            for environment in &resolved {
                out.push_str(&format!("== {} ==\n", environment.environment));
                out.push_str(&serde_json::to_string_pretty(environment).expect("serializable"));
                out.push_str("\nrequired: ");
                out.push_str(&environment.required_config().names().join(", "));
                out.push('\n');
            }
            out.push_str("== parity ==\n");
            out.push_str(&serde_json::to_string_pretty(&manifest.parity()).expect("serializable"));
            out.push('\n');
            Ok(out)
        }
        Err(diagnostics) => Err(diagnostics.render(false)),
    }
}

#[test]
fn err_cases_render_exactly() {
    insta::glob!("../../test_data/err", "*.toml", |path| {
        match check(path) {
            Ok(_) => panic!("{} parsed, but it is an error case", path.display()),
            Err(rendered) => insta::assert_snapshot!(rendered),
        }
    });
}

#[test]
fn ok_cases_resolve() {
    insta::glob!("../../test_data/ok", "*.toml", |path| {
        match check(path) {
            Ok(resolved) => insta::assert_snapshot!(resolved),
            Err(rendered) => panic!("{} failed:\n{rendered}", path.display()),
        }
    });
}
