//! All terminal output goes through the [`Printer`]: data on stdout, people's messages on stderr.
//!
//! Status lines are cargo-style: a right-aligned verb in a 12-column gutter. Colour only when
//! stderr is a terminal and `NO_COLOR` is unset; nothing depends on colour to be understood.

use std::io::{IsTerminal, Write};

use anstyle::{AnsiColor, Effects, Style};

#[derive(Debug, Clone, Copy)]
pub struct Printer {
    quiet: bool,
    color: bool,
}

const VERB: Style = AnsiColor::Green.on_default().effects(Effects::BOLD);
const ERROR: Style = AnsiColor::Red.on_default().effects(Effects::BOLD);
const HINT: Style = AnsiColor::Cyan.on_default().effects(Effects::BOLD);
const WARNING: Style = AnsiColor::Yellow.on_default().effects(Effects::BOLD);

impl Printer {
    pub fn new(quiet: bool) -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
        Printer {
            quiet,
            color: !no_color && std::io::stderr().is_terminal(),
        }
    }

    pub fn color(&self) -> bool {
        self.color
    }

    /// `     Checked rollway.toml` on stderr.
    pub fn status(&self, verb: &str, message: &str) {
        if !self.quiet {
            self.stderr(&format!(
                "{} {message}",
                self.paint(VERB, &format!("{verb:>12}"))
            ));
        }
    }

    pub fn warning(&self, message: &str) {
        if !self.quiet {
            self.stderr(&format!("{}: {message}", self.paint(WARNING, "warning")));
        }
    }

    /// `error: ...`, always printed.
    pub fn error(&self, message: &str) {
        self.stderr(&format!("{}: {message}", self.paint(ERROR, "error")));
    }

    /// A blank line then `hint: ...`, always printed.
    pub fn hint(&self, message: &str) {
        self.stderr(&format!("\n{}: {message}", self.paint(HINT, "hint")));
    }

    /// Text that is already rendered (diagnostics), to stderr.
    pub fn raw_stderr(&self, text: &str) {
        let mut stderr = std::io::stderr().lock();
        let _ = stderr.write_all(text.as_bytes());
    }

    /// The command's data, to stdout, also under `--quiet`.
    pub fn data(&self, text: &str) -> std::io::Result<()> {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(text.as_bytes())?;
        if !text.ends_with('\n') {
            stdout.write_all(b"\n")?;
        }
        stdout.flush()
    }

    fn stderr(&self, line: &str) {
        let mut stderr = std::io::stderr().lock();
        let _ = writeln!(stderr, "{line}");
    }

    fn paint(&self, style: Style, text: &str) -> String {
        if self.color {
            format!("{style}{text}{style:#}")
        } else {
            text.to_owned()
        }
    }
}
