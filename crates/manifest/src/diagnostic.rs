//! Manifest diagnostics: what went wrong, where (file:line:col) and what would be accepted.
//!
//! Validation collects every problem before anything is rendered; rendering (annotate-snippets,
//! the renderer rustc and cargo use) is the only place that turns them into text.

use std::fmt;
use std::ops::Range;

use annotate_snippets::{AnnotationKind, Group, Level, Renderer, Snippet};
use serde::Serialize;

/// One problem in a manifest, anchored to a byte range of its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Byte range in the source the problem points at.
    pub span: Range<usize>,
    /// One sentence, lowercase, values in backticks, no trailing period.
    pub message: String,
    /// A short label under the caret.
    pub label: String,
    /// What would be accepted, or how to fix it.
    pub help: Option<String>,
}

impl Diagnostic {
    pub(crate) fn new(span: Range<usize>, message: impl Into<String>) -> Self {
        Diagnostic {
            span,
            message: message.into(),
            label: String::new(),
            help: None,
        }
    }

    pub(crate) fn label(mut self, label: impl Into<String>) -> Self {
        self.label = label.into();
        self
    }

    pub(crate) fn help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }
}

/// Every problem found in one manifest file, with the source needed to render them.
#[derive(Debug, Clone)]
pub struct Diagnostics {
    path: String,
    source: String,
    // Invariant: sorted by span start, no two entries with the same span and message.
    items: Vec<Diagnostic>,
}

/// A diagnostic located by line and column, for `--json` output and for tests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocatedDiagnostic {
    pub file: String,
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub help: Option<String>,
}

impl Diagnostics {
    pub(crate) fn new(path: &str, source: &str, mut items: Vec<Diagnostic>) -> Self {
        items.sort_by(|a, b| {
            (a.span.start, a.span.end, &a.message).cmp(&(b.span.start, b.span.end, &b.message))
        });
        items.dedup_by(|a, b| a.span == b.span && a.message == b.message);
        Diagnostics {
            path: path.to_owned(),
            source: source.to_owned(),
            items,
        }
    }

    pub fn items(&self) -> &[Diagnostic] {
        &self.items
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    /// Every diagnostic with its 1-based line and column (columns count characters).
    pub fn located(&self) -> Vec<LocatedDiagnostic> {
        self.items
            .iter()
            .map(|diagnostic| {
                let (line, column) = line_column(&self.source, diagnostic.span.start);
                LocatedDiagnostic {
                    file: self.path.clone(),
                    line,
                    column,
                    message: diagnostic.message.clone(),
                    help: diagnostic.help.clone(),
                }
            })
            .collect()
    }

    /// Renders every diagnostic, with colour when `styled` is true.
    pub fn render(&self, styled: bool) -> String {
        let renderer = if styled {
            Renderer::styled()
        } else {
            Renderer::plain()
        };
        let mut out = String::new();
        for diagnostic in &self.items {
            let span = clamp_span(&self.source, diagnostic.span.clone());
            let mut group: Group<'_> = Level::ERROR.primary_title(&diagnostic.message).element(
                Snippet::source(&self.source)
                    .path(&self.path)
                    .annotation(AnnotationKind::Primary.span(span).label(&diagnostic.label)),
            );
            if let Some(help) = &diagnostic.help {
                group = group.element(Level::HELP.message(help));
            }
            out.push_str(&renderer.render(&[group]));
            out.push_str("\n\n");
        }
        let n = self.items.len();
        out.push_str(&format!(
            "error: `{}` has {} {}\n",
            self.path,
            n,
            if n == 1 { "error" } else { "errors" }
        ));
        out
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(false))
    }
}

impl std::error::Error for Diagnostics {}

/// 1-based line and character column of a byte offset.
pub(crate) fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(source, offset.min(source.len()));
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = source[line_start..offset].chars().count() + 1;
    (line, column)
}

/// Keeps a span inside the source and on character boundaries, so rendering never panics.
fn clamp_span(source: &str, span: Range<usize>) -> Range<usize> {
    let start = floor_char_boundary(source, span.start.min(source.len()));
    let end = floor_char_boundary(source, span.end.min(source.len())).max(start);
    start..end
}

fn floor_char_boundary(source: &str, mut index: usize) -> usize {
    while index > 0 && !source.is_char_boundary(index) {
        index -= 1;
    }
    index
}
