//! `rollway init`: look at the app folder and write a commented rollway.toml for it.

use std::path::Path;

use anyhow::Context;
use manifest::scaffold::{self, ProjectFiles};

use crate::ExitStatus;
use crate::cli::{Ci, InitArgs};
use crate::printer::Printer;

mod github;

pub fn run(args: &InitArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let target = args.dir.join(manifest::FILE_NAME);
    if let Some(Ci::Github) = args.ci {
        return run_github(args, &target, printer);
    }
    if target.exists() && !args.force {
        printer.error(&format!("`{}` already exists", target.display()));
        printer.hint("run `rollway check` to validate it, or `rollway init --force` to replace it");
        return Ok(ExitStatus::Usage);
    }
    let project = read_project(&args.dir)?;
    let detected = scaffold::detect(&project);
    let text = scaffold::template(&project, &detected);
    std::fs::write(&target, &text)
        .with_context(|| format!("cannot write `{}`", target.display()))?;

    let how = match (&detected.run, detected.has_dockerfile) {
        (Some(run), _) => format!("{} app, started with `{run}`", detected.kind),
        (None, true) => "built from its Dockerfile".to_owned(),
        (None, false) => "app kind not recognised".to_owned(),
    };
    let shown = if args.dir == std::path::Path::new(".") {
        manifest::FILE_NAME.to_owned()
    } else {
        target.display().to_string()
    };
    printer.status("Created", &format!("{shown} ({how})"));
    if detected.run.is_none() && !detected.has_dockerfile {
        printer
            .warning("set `run` under `[services.web]` to the command that serves HTTP on $PORT");
    }
    printer.hint("check the health path under `[services.web]`, then run `rollway check`");
    Ok(ExitStatus::Success)
}

/// `rollway init --ci github`: the workflow (never over an existing one without `--force`), and
/// the manifest when the folder has none.
fn run_github(
    args: &InitArgs,
    manifest_path: &Path,
    printer: Printer,
) -> anyhow::Result<ExitStatus> {
    let workflow_path = args.dir.join(github::WORKFLOW_PATH);
    if workflow_path.exists() && !args.force {
        printer.error(&format!("`{}` already exists", workflow_path.display()));
        printer.hint("compare it with `rollway init --ci github --force` in a scratch copy, or pass `--force` to replace it");
        return Ok(ExitStatus::Usage);
    }
    let project = read_project(&args.dir)?;
    let detected = scaffold::detect(&project);
    if !manifest_path.exists() {
        let text = scaffold::template(&project, &detected);
        std::fs::write(manifest_path, &text)
            .with_context(|| format!("cannot write `{}`", manifest_path.display()))?;
        printer.status("Created", &manifest_path.display().to_string());
    }
    let has_requirements = project.files.iter().any(|file| file == "requirements.txt");
    let text = github::workflow(detected.kind, has_requirements);
    if let Some(parent) = workflow_path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create `{}`", parent.display()))?;
    }
    std::fs::write(&workflow_path, &text)
        .with_context(|| format!("cannot write `{}`", workflow_path.display()))?;
    printer.status(
        "Created",
        &format!(
            "{} (tests on every push, staging from main, production from a v* tag after approval)",
            workflow_path.display()
        ),
    );
    printer.hint("in the repository's settings: environments `staging` and `production` (with required reviewers), secrets ROLLWAY_TOKEN and ROLLWAY_AGENT_FINGERPRINT, variables ROLLWAY_AGENT and ROLLWAY_INSTALL (see the file's header)");
    Ok(ExitStatus::Success)
}

/// Reads what `scaffold::detect` needs: top-level names and a few well-known files.
fn read_project(dir: &Path) -> anyhow::Result<ProjectFiles> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the folder `{}`", dir.display()))?;
    let mut project = ProjectFiles {
        folder_name: std::fs::canonicalize(dir)
            .ok()
            .and_then(|path| {
                path.file_name()
                    .map(|name| name.to_string_lossy().into_owned())
            })
            .unwrap_or_default(),
        ..ProjectFiles::default()
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().join("wsgi.py").is_file() {
            project.wsgi_modules.push(name.clone());
        }
        project.files.push(name);
    }
    project.files.sort();
    project.wsgi_modules.sort();
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    project.package_json = read("package.json");
    project.cargo_toml = read("Cargo.toml");
    Ok(project)
}
