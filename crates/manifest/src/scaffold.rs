//! `rollway init`: guessing how an app is built and started, and writing a commented manifest.
//!
//! Pure: the caller reads the folder and hands over what it found ([`ProjectFiles`]); this module
//! only decides. The template it writes always parses.

/// What `rollway init` found in the app folder.
#[derive(Debug, Clone, Default)]
pub struct ProjectFiles {
    /// The folder's name, used for the app name.
    pub folder_name: String,
    /// Names of the files at the top of the folder.
    pub files: Vec<String>,
    /// Contents of `package.json`, when present.
    pub package_json: Option<String>,
    /// Contents of `Cargo.toml`, when present.
    pub cargo_toml: Option<String>,
    /// Python modules holding a `wsgi.py` one level down (Django projects), such as `mysite`.
    pub wsgi_modules: Vec<String>,
}

/// The kind of app that was recognised, and how it is built and started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detected {
    pub kind: &'static str,
    pub build: Option<String>,
    pub run: Option<String>,
    /// Variables the run command needs (such as `PYTHONPATH` for vendored packages).
    pub env: Vec<(String, String)>,
    pub has_dockerfile: bool,
}

pub fn detect(project: &ProjectFiles) -> Detected {
    let has = |name: &str| project.files.iter().any(|file| file == name);
    let has_dockerfile = has("Dockerfile");
    let mut detected = if has("package.json") {
        node(
            project.package_json.as_deref().unwrap_or("{}"),
            has("package-lock.json"),
        )
    } else if has("Cargo.toml") {
        rust(project.cargo_toml.as_deref().unwrap_or(""))
    } else if has("requirements.txt")
        || has("pyproject.toml")
        || has("manage.py")
        || has("app.py")
        || has("main.py")
    {
        python(project, &has)
    } else if has("go.mod") {
        Detected {
            kind: "Go",
            build: Some("go build -o app .".to_owned()),
            run: Some("./app".to_owned()),
            env: Vec::new(),
            has_dockerfile,
        }
    } else if has_dockerfile {
        Detected {
            kind: "Dockerfile",
            build: None,
            run: None,
            env: Vec::new(),
            has_dockerfile,
        }
    } else {
        Detected {
            kind: "unknown",
            build: None,
            run: None,
            env: Vec::new(),
            has_dockerfile,
        }
    };
    detected.has_dockerfile = has_dockerfile;
    detected
}

/// A lowercase name made of letters, digits and `-`, starting with a letter.
pub fn app_name(folder_name: &str) -> String {
    let mut name = String::new();
    for c in folder_name.chars() {
        if c.is_ascii_alphanumeric() {
            name.push(c.to_ascii_lowercase());
        } else if !name.is_empty() && !name.ends_with('-') {
            name.push('-');
        }
    }
    let name = name.trim_start_matches(|c: char| c.is_ascii_digit() || c == '-');
    let name: String = name.trim_end_matches('-').chars().take(63).collect();
    let name = name.trim_end_matches('-').to_owned();
    if name.is_empty() {
        "app".to_owned()
    } else {
        name
    }
}

/// The commented `rollway.toml` for the folder.
pub fn template(project: &ProjectFiles, detected: &Detected) -> String {
    let name = app_name(&project.folder_name);
    let mut out = String::new();
    out.push_str(&format!(
        "# rollway.toml for `{name}`, written by `rollway init` ({} app detected).\n\
         # Check it with `rollway check`; every key is described in docs/manifest.md.\n\n",
        detected.kind
    ));
    out.push_str(&format!("[app]\nname = \"{name}\"\n\n"));
    match &detected.build {
        Some(build) => out.push_str(&format!(
            "# Runs on the agent inside the unpacked release, before anything starts.\n[build]\ncommand = {}\n\n",
            quote(build)
        )),
        None => out.push_str("# [build]\n# command = \"make\"    # runs on the agent inside the unpacked release\n\n"),
    }
    out.push_str("[services.web]\n");
    match (&detected.run, detected.has_dockerfile) {
        (Some(run), true) => {
            out.push_str(&format!("run = {}   # must listen on 127.0.0.1:$PORT\n", quote(run)));
            out.push_str("# A Dockerfile is here too: for the container driver, replace `run` with\n# dockerfile = \"Dockerfile\"\n");
        }
        (Some(run), false) => out.push_str(&format!("run = {}   # must listen on 127.0.0.1:$PORT\n", quote(run))),
        (None, true) => out.push_str("dockerfile = \"Dockerfile\"   # built and run by the container driver\n"),
        (None, false) => out.push_str(
            "# Rollway could not tell how this app starts: write the command that serves HTTP on $PORT.\nrun = \"./start\"\n",
        ),
    }
    out.push_str(
        "replicas = 1\n\
         # Traffic only reaches instances whose health path answers 200; make sure the app serves it.\n\
         health = { path = \"/health\", interval = \"1s\", timeout = \"2s\", healthy = 2, unhealthy = 3 }\n\
         drain = \"30s\"                # time for in-flight requests to finish when an instance leaves\n",
    );
    if !detected.env.is_empty() {
        let pairs: Vec<String> = detected
            .env
            .iter()
            .map(|(key, value)| format!("{key} = {}", quote(value)))
            .collect();
        out.push_str(&format!("env = {{ {} }}\n", pairs.join(", ")));
    }
    out.push_str(
        &"\n\
         # Once per deploy, before any new instance starts (migrations). With `backup`, the database\n\
         # named by that variable is backed up first.\n\
         # [release]\n\
         # command = \"./migrate\"\n\
         # backup = \"DATABASE_URL\"\n\
         \n\
         [strategy]\n\
         kind = \"blue-green\"          # blue-green | rolling | canary\n\
         # steps = [{ weight = 5, pause = \"30s\" }, { weight = 25, pause = \"1m\" }, { weight = 100 }]   # canary only\n\
         \n\
         # The new release's real traffic is watched; a release above these bounds is rolled back.\n\
         [analysis]\n\
         max_error_rate = 0.01         # share of 5xx answers\n\
         # max_p99 = \"800ms\"\n\
         \n\
         # Which requests reach `web`. Every app and environment on one agent needs its own host;\n\
         # `*.localhost` names reach this machine from a browser, no DNS needed.\n\
         [routes.web]\n\
         hosts = [\"{name}.localhost\"]\n\
         \n\
         [env]                         # every environment\n\
         LOG_LEVEL = \"info\"\n\
         \n\
         [environments.development]\n\
         env = { LOG_LEVEL = \"debug\" }\n\
         analysis = { observe = \"0s\" }   # no watch after the switch while developing\n\
         \n\
         [environments.production]\n\
         routes = { web = { hosts = [\"{name}.example.com\"] } }   # your domain\n\
         # Secrets are set with `rollway secrets set NAME` and must exist before a deploy starts.\n\
         secrets = []\n\
         \n\
         # [alerts]\n\
         # webhook = \"SLACK_WEBHOOK_URL\"   # the name of a secret holding the URL, never the URL\n"
            .replace("{name}", &name),
    );
    out
}

fn node(package_json: &str, has_lock: bool) -> Detected {
    let has_script = |script: &str| {
        let needle = format!("\"{script}\"");
        package_json
            .find("\"scripts\"")
            .is_some_and(|start| package_json[start..].contains(&needle))
    };
    let install = if has_lock { "npm ci" } else { "npm install" };
    let build = if has_script("build") {
        format!("{install} && npm run build")
    } else {
        format!("{install} --omit=dev")
    };
    let run = if has_script("start") {
        "npm start".to_owned()
    } else {
        "node index.js".to_owned()
    };
    Detected {
        kind: "Node",
        build: Some(build),
        run: Some(run),
        env: vec![("NODE_ENV".to_owned(), "production".to_owned())],
        has_dockerfile: false,
    }
}

fn rust(cargo_toml: &str) -> Detected {
    let binary = toml::from_str::<toml::Table>(cargo_toml)
        .ok()
        .and_then(|table| {
            table
                .get("package")
                .and_then(|package| package.get("name"))
                .and_then(|name| name.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "app".to_owned());
    Detected {
        kind: "Rust",
        build: Some("cargo build --release --locked".to_owned()),
        run: Some(format!("./target/release/{binary}")),
        env: Vec::new(),
        has_dockerfile: false,
    }
}

fn python(project: &ProjectFiles, has: &dyn Fn(&str) -> bool) -> Detected {
    let (build, env) = if has("requirements.txt") {
        (
            Some("python3 -m pip install --quiet -r requirements.txt --target .deps".to_owned()),
            vec![("PYTHONPATH".to_owned(), ".deps".to_owned())],
        )
    } else {
        (None, Vec::new())
    };
    let run = if has("manage.py") {
        let module = project.wsgi_modules.first().map_or("app", String::as_str);
        format!("python3 -m gunicorn {module}.wsgi --bind 127.0.0.1:$PORT")
    } else if has("app.py") {
        "python3 app.py".to_owned()
    } else if has("main.py") {
        "python3 main.py".to_owned()
    } else {
        format!(
            "python3 -m {}",
            app_name(&project.folder_name).replace('-', "_")
        )
    };
    Detected {
        kind: "Python",
        build,
        run: Some(run),
        env,
        has_dockerfile: false,
    }
}

/// A TOML basic string.
fn quote(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests;
