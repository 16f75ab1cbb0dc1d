use super::*;

fn project(folder: &str, files: &[&str]) -> ProjectFiles {
    ProjectFiles {
        folder_name: folder.to_owned(),
        files: files.iter().map(|file| (*file).to_owned()).collect(),
        ..ProjectFiles::default()
    }
}

/// The one helper: a project in, the guessed run command out, and the template must parse.
fn check(project: ProjectFiles, kind: &str, run: Option<&str>) {
    let detected = detect(&project);
    assert_eq!(detected.kind, kind);
    assert_eq!(detected.run.as_deref(), run);
    let text = template(&project, &detected);
    if let Err(diagnostics) = crate::parse(&text, "rollway.toml") {
        panic!("template does not parse:\n{text}\n{diagnostics}");
    }
}

#[test]
fn python_app() {
    check(
        project("logistix", &["app.py", "migrate.py"]),
        "Python",
        Some("python3 app.py"),
    );
}

#[test]
fn django_app_uses_gunicorn_and_vendored_requirements() {
    let mut django = project("My Site", &["manage.py", "requirements.txt"]);
    django.wsgi_modules = vec!["mysite".to_owned()];
    let detected = detect(&django);
    assert_eq!(
        detected.env,
        vec![("PYTHONPATH".to_owned(), ".deps".to_owned())]
    );
    check(
        django,
        "Python",
        Some("python3 -m gunicorn mysite.wsgi --bind 127.0.0.1:$PORT"),
    );
}

#[test]
fn node_app_with_start_script() {
    let mut node = project("web", &["package.json", "package-lock.json"]);
    node.package_json =
        Some(r#"{"scripts": {"start": "node server.js", "build": "tsc"}}"#.to_owned());
    assert_eq!(
        detect(&node).build.as_deref(),
        Some("npm ci && npm run build")
    );
    check(node, "Node", Some("npm start"));
}

#[test]
fn rust_app_runs_its_release_binary() {
    let mut rust = project("api", &["Cargo.toml", "Dockerfile"]);
    rust.cargo_toml = Some("[package]\nname = \"shop-api\"\n".to_owned());
    assert!(detect(&rust).has_dockerfile);
    check(rust, "Rust", Some("./target/release/shop-api"));
}

#[test]
fn dockerfile_only() {
    check(project("svc", &["Dockerfile"]), "Dockerfile", None);
}

#[test]
fn unknown_folder_still_gets_a_valid_template() {
    check(project("123 Stuff!", &[]), "unknown", None);
}

#[test]
fn app_names_are_slugs() {
    assert_eq!(app_name("My Site"), "my-site");
    assert_eq!(app_name("123 Stuff!"), "stuff");
    assert_eq!(app_name("___"), "app");
    assert_eq!(app_name("logistix"), "logistix");
}

#[test]
fn the_template_routes_a_host_and_does_not_watch_in_development() {
    let project = project("Shop API", &["app.py"]);
    let text = template(&project, &detect(&project));
    let manifest = crate::parse(&text, "rollway.toml").expect("the template parses");
    let development = manifest.resolve("development").expect("development");
    assert_eq!(development.config.routes[0].hosts, ["shop-api.localhost"]);
    assert!(development.config.analysis.observe.as_std().is_zero());
    assert_eq!(development.warnings("shop-api"), []);
    let production = manifest.resolve("production").expect("production");
    assert_eq!(production.config.routes[0].hosts, ["shop-api.example.com"]);
    assert!(!production.config.analysis.observe.as_std().is_zero());
}
