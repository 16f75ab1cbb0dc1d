//! Reading typed values out of the spanned TOML tree, collecting every problem on the way.
//!
//! This is the "raw" layer: it knows TOML value kinds and spans, and turns each mistake into a
//! [`Diagnostic`] that says what was found and what would be accepted. It never stops at the first
//! error (serde's `deny_unknown_fields` would), because users fix manifests faster when they see
//! every problem at once.

use std::ops::{Range, RangeInclusive};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diagnostic::Diagnostic;
use crate::units::{ByteSize, Duration, Ratio, Weight};

pub(crate) type Value<'i> = Spanned<DeValue<'i>>;

/// Collects diagnostics while values are read.
#[derive(Default)]
pub(crate) struct Reader {
    pub(crate) diagnostics: Vec<Diagnostic>,
}

impl Reader {
    pub(crate) fn error(&mut self, diagnostic: Diagnostic) {
        self.diagnostics.push(diagnostic);
    }

    /// Reports every key of `table` that is not in `known`, with a suggestion when one is close.
    pub(crate) fn known_keys(&mut self, table: &DeTable<'_>, known: &[&str], section: &str) {
        for key in table.keys() {
            let name: &str = key.get_ref();
            if known.contains(&name) {
                continue;
            }
            let where_ = if section.is_empty() {
                "at the top level".to_owned()
            } else {
                format!("in `[{section}]`")
            };
            let diagnostic = Diagnostic::new(key.span(), format!("unknown key `{name}` {where_}"))
                .label("unknown key");
            let diagnostic = match suggest(name, known.iter().copied()) {
                Some(close) => diagnostic.help(format!("did you mean `{close}`?")),
                None => diagnostic.help(format!("accepted keys: {}", list(known))),
            };
            self.error(diagnostic);
        }
    }

    /// The value as a table, or a type error naming what the table holds.
    pub(crate) fn table<'a, 'i>(
        &mut self,
        value: &'a Value<'i>,
        key_path: &str,
        help: &str,
    ) -> Option<&'a DeTable<'i>> {
        match value.get_ref() {
            DeValue::Table(table) => Some(table),
            other => {
                self.wrong_type(value.span(), key_path, "a table", other, Some(help));
                None
            }
        }
    }

    pub(crate) fn string(&mut self, value: &Value<'_>, key_path: &str) -> Option<String> {
        match value.get_ref() {
            DeValue::String(text) => Some(text.to_string()),
            other => {
                let help =
                    scalar_text(other).map(|text| format!("write it as a string: `\"{text}\"`"));
                self.wrong_type(value.span(), key_path, "a string", other, help.as_deref());
                None
            }
        }
    }

    /// A non-empty string.
    pub(crate) fn nonempty_string(&mut self, value: &Value<'_>, key_path: &str) -> Option<String> {
        let text = self.string(value, key_path)?;
        if text.trim().is_empty() {
            self.error(
                Diagnostic::new(value.span(), format!("`{key_path}` is empty"))
                    .label("empty string"),
            );
            return None;
        }
        Some(text)
    }

    /// A scalar written as a string, number or boolean, kept as text (environment variable values).
    pub(crate) fn scalar_text(&mut self, value: &Value<'_>, key_path: &str) -> Option<String> {
        match scalar_text(value.get_ref()) {
            Some(text) => Some(text),
            None => {
                self.wrong_type(
                    value.span(),
                    key_path,
                    "a string, number or boolean",
                    value.get_ref(),
                    None,
                );
                None
            }
        }
    }

    pub(crate) fn integer_in(
        &mut self,
        value: &Value<'_>,
        key_path: &str,
        range: RangeInclusive<i64>,
    ) -> Option<i64> {
        let accepted = format!("an integer from {} to {}", range.start(), range.end());
        let number = match value.get_ref() {
            DeValue::Integer(integer) => {
                i64::from_str_radix(integer.as_str(), integer.radix()).ok()
            }
            DeValue::String(text) if text.trim().parse::<i64>().is_ok() => {
                self.wrong_type(
                    value.span(),
                    key_path,
                    "an integer",
                    value.get_ref(),
                    Some(&format!("remove the quotes: `{}`", text.trim())),
                );
                return None;
            }
            other => {
                self.wrong_type(
                    value.span(),
                    key_path,
                    "an integer",
                    other,
                    Some(&format!("accepted: {accepted}")),
                );
                return None;
            }
        };
        match number {
            Some(number) if range.contains(&number) => Some(number),
            _ => {
                self.out_of_range(value, key_path, &accepted);
                None
            }
        }
    }

    pub(crate) fn duration(&mut self, value: &Value<'_>, key_path: &str) -> Option<Duration> {
        const ACCEPTED: &str =
            "write a duration with a unit, such as `\"500ms\"`, `\"30s\"` or `\"5m\"`";
        match value.get_ref() {
            DeValue::String(text) => match text.parse::<Duration>() {
                Ok(duration) => Some(duration),
                Err(reason) => {
                    self.error(
                        Diagnostic::new(
                            value.span(),
                            format!("`{key_path}` is not a duration: {reason}"),
                        )
                        .label("not a duration")
                        .help(ACCEPTED),
                    );
                    None
                }
            },
            DeValue::Integer(integer) => {
                let help = format!(
                    "durations carry a unit: write `\"{}s\"` for seconds or `\"{}ms\"` for milliseconds",
                    integer.as_str(),
                    integer.as_str()
                );
                self.wrong_type(
                    value.span(),
                    key_path,
                    "a duration",
                    value.get_ref(),
                    Some(&help),
                );
                None
            }
            other => {
                self.wrong_type(value.span(), key_path, "a duration", other, Some(ACCEPTED));
                None
            }
        }
    }

    /// A positive duration (zero would make a timer spin or a wait meaningless).
    pub(crate) fn positive_duration(
        &mut self,
        value: &Value<'_>,
        key_path: &str,
    ) -> Option<Duration> {
        let duration = self.duration(value, key_path)?;
        if duration.0.is_zero() {
            self.out_of_range(value, key_path, "a duration above zero");
            return None;
        }
        Some(duration)
    }

    /// A duration from zero to `max`, such as `"10s"`.
    pub(crate) fn duration_at_most(
        &mut self,
        value: &Value<'_>,
        key_path: &str,
        max: Duration,
    ) -> Option<Duration> {
        let duration = self.duration(value, key_path)?;
        if duration > max {
            self.out_of_range(value, key_path, &format!("from `\"0s\"` to `\"{max}\"`"));
            return None;
        }
        Some(duration)
    }

    /// A positive byte size with a unit, such as `"100MB"` or `"64KiB"`.
    pub(crate) fn byte_size(&mut self, value: &Value<'_>, key_path: &str) -> Option<ByteSize> {
        const ACCEPTED: &str = "write a size with a unit, such as `\"100MB\"` or `\"64KiB\"` (B, kB, MB, GB, KiB, MiB, GiB)";
        match value.get_ref() {
            DeValue::String(text) => match text.parse::<ByteSize>() {
                Ok(size) if size.bytes() > 0 => Some(size),
                Ok(_) => {
                    self.out_of_range(value, key_path, "a size above zero");
                    None
                }
                Err(reason) => {
                    self.error(
                        Diagnostic::new(
                            value.span(),
                            format!("`{key_path}` is not a size: {reason}"),
                        )
                        .label("not a size")
                        .help(ACCEPTED),
                    );
                    None
                }
            },
            other => {
                self.wrong_type(value.span(), key_path, "a size", other, Some(ACCEPTED));
                None
            }
        }
    }

    /// A share from 0 to 1, written `0.01` or `"1%"`.
    pub(crate) fn ratio(&mut self, value: &Value<'_>, key_path: &str) -> Option<Ratio> {
        const ACCEPTED: &str =
            "a share from 0 to 1 such as `0.01`, or a percentage such as `\"1%\"`";
        let parsed = match value.get_ref() {
            DeValue::Float(float) => float
                .as_str()
                .replace('_', "")
                .parse::<f64>()
                .ok()
                .and_then(Ratio::new),
            DeValue::Integer(integer) => integer.as_str().parse::<f64>().ok().and_then(Ratio::new),
            DeValue::String(text) => match Ratio::from_percent(text) {
                Ok(ratio) => Some(ratio),
                Err(reason) => {
                    self.error(
                        Diagnostic::new(
                            value.span(),
                            format!("`{key_path}` is not a ratio: {reason}"),
                        )
                        .label("not a ratio")
                        .help(format!("accepted: {ACCEPTED}")),
                    );
                    return None;
                }
            },
            other => {
                self.wrong_type(
                    value.span(),
                    key_path,
                    "a ratio",
                    other,
                    Some(&format!("accepted: {ACCEPTED}")),
                );
                return None;
            }
        };
        if parsed.is_none() {
            self.out_of_range(value, key_path, ACCEPTED);
        }
        parsed
    }

    pub(crate) fn weight(&mut self, value: &Value<'_>, key_path: &str) -> Option<Weight> {
        let number = self.integer_in(value, key_path, 0..=100)?;
        Weight::new(number)
    }

    /// An array of strings; each element is checked.
    pub(crate) fn string_array(
        &mut self,
        value: &Value<'_>,
        key_path: &str,
    ) -> Option<Vec<Spanned<String>>> {
        let items = match value.get_ref() {
            DeValue::Array(items) => items,
            DeValue::String(text) => {
                self.wrong_type(
                    value.span(),
                    key_path,
                    "an array of strings",
                    value.get_ref(),
                    Some(&format!("write a list: `[\"{text}\"]`")),
                );
                return None;
            }
            other => {
                self.wrong_type(value.span(), key_path, "an array of strings", other, None);
                return None;
            }
        };
        let mut strings = Vec::with_capacity(items.len());
        let mut ok = true;
        for (idx, item) in items.iter().enumerate() {
            match self.string(item, &format!("{key_path}[{idx}]")) {
                Some(text) => strings.push(Spanned::new(item.span(), text)),
                None => ok = false,
            }
        }
        ok.then_some(strings)
    }

    pub(crate) fn missing(&mut self, span: Range<usize>, key_path: &str, help: &str) {
        self.error(
            Diagnostic::new(span, format!("missing `{key_path}`"))
                .label(format!("`{key_path}` is required"))
                .help(help.to_owned()),
        );
    }

    pub(crate) fn invalid(
        &mut self,
        span: Range<usize>,
        message: impl Into<String>,
        label: &str,
        help: impl Into<String>,
    ) {
        self.error(Diagnostic::new(span, message).label(label).help(help));
    }

    fn wrong_type(
        &mut self,
        span: Range<usize>,
        key_path: &str,
        expected: &str,
        found: &DeValue<'_>,
        help: Option<&str>,
    ) {
        let diagnostic = Diagnostic::new(
            span,
            format!("`{key_path}` must be {expected}, found {}", describe(found)),
        )
        .label(format!("expected {expected}"));
        self.error(match help {
            Some(help) => diagnostic.help(help),
            None => diagnostic,
        });
    }

    fn out_of_range(&mut self, value: &Value<'_>, key_path: &str, accepted: &str) {
        let shown = scalar_text(value.get_ref()).unwrap_or_else(|| describe(value.get_ref()));
        self.error(
            Diagnostic::new(
                value.span(),
                format!("`{key_path}` is out of range: `{shown}`"),
            )
            .label("out of range")
            .help(format!("accepted: {accepted}")),
        );
    }
}

/// The closest of `candidates` to `name`, when it is close enough to be a likely typo: at most
/// one edit per three characters (a transposition counts as one), as cargo and rustc judge it.
pub(crate) fn suggest<'a>(
    name: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .map(|candidate| (strsim::damerau_levenshtein(name, candidate), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// `a`, `b`, `c` as a backticked list.
pub(crate) fn list(items: &[&str]) -> String {
    items
        .iter()
        .map(|item| format!("`{item}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a value is, for "found ..." in messages.
fn describe(value: &DeValue<'_>) -> String {
    match value {
        DeValue::String(text) => format!("the string `\"{text}\"`"),
        DeValue::Integer(integer) => format!("the integer `{}`", integer.as_str()),
        DeValue::Float(float) => format!("the float `{}`", float.as_str()),
        DeValue::Boolean(flag) => format!("the boolean `{flag}`"),
        DeValue::Datetime(datetime) => format!("the datetime `{datetime}`"),
        DeValue::Array(_) => "an array".to_owned(),
        DeValue::Table(_) => "a table".to_owned(),
    }
}

fn scalar_text(value: &DeValue<'_>) -> Option<String> {
    match value {
        DeValue::String(text) => Some(text.to_string()),
        DeValue::Integer(integer) => Some(integer.as_str().to_owned()),
        DeValue::Float(float) => Some(float.as_str().to_owned()),
        DeValue::Boolean(flag) => Some(flag.to_string()),
        _ => None,
    }
}
