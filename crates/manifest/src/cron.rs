//! `[cron.NAME]`: commands the agent runs on a schedule, in the current release.
//!
//! Schedules are parsed by `croner` (five fields, `@hourly`/`@daily`/`@weekly`/`@monthly`/
//! `@yearly`) and evaluated in a time zone from the system's tz database through `jiff`, so a job
//! at `0 6 * * *` with `tz = "Europe/Paris"` runs at 06:00 Paris time across daylight saving
//! changes. Six fields (seconds first) are accepted only by debug builds with
//! `ROLLWAY_TEST_CRON_SECONDS=1`, so end-to-end tests can see many ticks; a release build always
//! refuses them.

use std::ops::Range;

use serde::Serialize;
use toml::de::DeValue;

use crate::read::{Reader, Value, list};
use crate::schema::Service;
use crate::units::Duration;

/// The variable that lets a debug build accept per-second schedules (six fields).
pub const TEST_SECONDS_VAR: &str = "ROLLWAY_TEST_CRON_SECONDS";

pub(crate) const CRON_KEYS: &[&str] = &[
    "schedule",
    "tz",
    "command",
    "service",
    "timeout",
    "concurrency",
    "catch_up",
];

/// Defaults of a cron job.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);

/// One `[cron.NAME]` job.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CronJob {
    pub name: String,
    pub schedule: CronSchedule,
    /// Run with `sh -c` in the release's folder.
    pub command: String,
    /// The service whose environment (and image, for containers) the job runs with; the first
    /// service when unset. Invariant: names a service of the config.
    pub service: String,
    /// A run still going past this is stopped (SIGTERM, then SIGKILL after the service's
    /// `stop_timeout`) and recorded as timed out.
    pub timeout: Duration,
    pub concurrency: Concurrency,
    /// Whether ticks missed while the agent was down run once when it starts again.
    pub catch_up: bool,
}

/// What happens when a tick comes while the job's previous run still goes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Concurrency {
    /// The tick is recorded as skipped; the running one goes on.
    #[default]
    Forbid,
    /// Both run.
    Allow,
    /// The running one is stopped, the new one runs.
    Replace,
}

impl Concurrency {
    pub const NAMES: [&str; 3] = ["forbid", "allow", "replace"];

    pub fn parse(text: &str) -> Option<Concurrency> {
        match text {
            "forbid" => Some(Concurrency::Forbid),
            "allow" => Some(Concurrency::Allow),
            "replace" => Some(Concurrency::Replace),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Concurrency::Forbid => "forbid",
            Concurrency::Allow => "allow",
            Concurrency::Replace => "replace",
        }
    }
}

/// A parsed schedule and the zone it is read in.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    /// As the manifest wrote it.
    text: String,
    /// An IANA zone name; `UTC` when the manifest gives none.
    tz: String,
    cron: croner::Cron,
    zone: jiff::tz::TimeZone,
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text && self.tz == other.tz
    }
}

impl Serialize for CronSchedule {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// `0 6 * * * (Europe/Paris)`: the schedule as written and its zone.
impl std::fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.text, self.tz)
    }
}

/// Why a schedule or zone was refused (its text is the diagnostic's message tail).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("{0}")]
    Pattern(String),
    #[error(
        "six fields (seconds) are only accepted by test builds; write five: minute hour day month weekday"
    )]
    Seconds,
    #[error("`{0}` is not a time zone of this system's tz database")]
    Zone(String),
}

impl CronSchedule {
    /// Parses `text` read in zone `tz` (`None`: UTC).
    pub fn parse(text: &str, tz: Option<&str>) -> Result<CronSchedule, ScheduleError> {
        let seconds_allowed = seconds_allowed();
        let fields = text.split_whitespace().count();
        if fields == 6 && !text.trim_start().starts_with('@') && !seconds_allowed {
            return Err(ScheduleError::Seconds);
        }
        if !text.trim_start().starts_with('@') && fields != 5 && fields != 6 {
            return Err(ScheduleError::Pattern(format!(
                "found {fields} field(s), expected five: minute hour day month weekday"
            )));
        }
        let parser = croner::parser::CronParser::builder()
            .seconds(if seconds_allowed {
                croner::parser::Seconds::Optional
            } else {
                croner::parser::Seconds::Disallowed
            })
            .year(croner::parser::Year::Disallowed)
            .build();
        let cron = parser
            .parse(text)
            .map_err(|error| ScheduleError::Pattern(lowercase_first(&error.to_string())))?;
        let tz_name = tz.unwrap_or("UTC");
        let zone = jiff::tz::TimeZone::get(tz_name)
            .map_err(|_| ScheduleError::Zone(tz_name.to_owned()))?;
        Ok(CronSchedule {
            text: text.to_owned(),
            tz: tz_name.to_owned(),
            cron,
            zone,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn tz(&self) -> &str {
        &self.tz
    }

    /// The first tick strictly after `after_ms` (unix milliseconds), `None` if there is none.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let at = jiff::Timestamp::from_millisecond(after_ms).ok()?;
        let zoned = at.to_zoned(self.zone.clone());
        let next = self.cron.find_next_occurrence(&zoned, false).ok()?;
        Some(next.timestamp().as_millisecond())
    }

    /// The last tick at or before `at_ms`, `None` if there is none.
    pub fn last_at_or_before(&self, at_ms: i64) -> Option<i64> {
        let at = jiff::Timestamp::from_millisecond(at_ms).ok()?;
        let zoned = at.to_zoned(self.zone.clone());
        let previous = self.cron.find_previous_occurrence(&zoned, true).ok()?;
        Some(previous.timestamp().as_millisecond())
    }
}

/// Whether six-field (per-second) schedules are accepted: debug builds with the test variable.
fn seconds_allowed() -> bool {
    cfg!(debug_assertions) && std::env::var(TEST_SECONDS_VAR).is_ok_and(|value| value == "1")
}

fn lowercase_first(text: &str) -> String {
    let text = text.trim_end_matches('.');
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// Reads `[cron]`: every job, in manifest order.
pub(crate) fn cron_jobs(
    reader: &mut Reader,
    value: Option<&Value<'_>>,
    services: &[Service],
) -> Vec<CronJob> {
    let Some(value) = value else {
        return Vec::new();
    };
    let Some(table) = reader.table(
        value,
        "cron",
        "write `[cron.NAME]` followed by `schedule = \"0 6 * * *\"` and `command = \"...\"`",
    ) else {
        return Vec::new();
    };
    let mut jobs = Vec::new();
    for (key, value) in table.iter() {
        let name: &str = key.get_ref();
        if !crate::validate::is_name(name) {
            reader.invalid(
                key.span(),
                format!("`{name}` is not a valid cron job name"),
                "invalid name",
                "accepted: lowercase letters, digits, `-` and `_`, starting with a letter",
            );
            continue;
        }
        if let Some(job) = cron_job(reader, name, value, key.span(), services) {
            jobs.push(job);
        }
    }
    jobs
}

fn cron_job(
    reader: &mut Reader,
    name: &str,
    value: &Value<'_>,
    key_span: Range<usize>,
    services: &[Service],
) -> Option<CronJob> {
    let section = format!("cron.{name}");
    let table = reader.table(
        value,
        &section,
        &format!("write `[{section}]` followed by `schedule = \"0 6 * * *\"`"),
    )?;
    reader.known_keys(table, CRON_KEYS, &section);
    let tz_value = table.get("tz");
    let tz = tz_value.and_then(|value| reader.nonempty_string(value, &format!("{section}.tz")));
    let schedule = match table.get("schedule") {
        None => {
            reader.missing(
                key_span.clone(),
                &format!("{section}.schedule"),
                "add `schedule = \"0 6 * * *\"` (minute hour day month weekday) or `\"@daily\"`",
            );
            None
        }
        Some(schedule_value) => {
            let text = reader.nonempty_string(schedule_value, &format!("{section}.schedule"));
            match text.map(|text| CronSchedule::parse(&text, tz.as_deref())) {
                None => None,
                Some(Ok(schedule)) => Some(schedule),
                Some(Err(ScheduleError::Zone(zone))) => {
                    let span = tz_value.map_or_else(|| schedule_value.span(), |tz| tz.span());
                    reader.invalid(
                        span,
                        format!("`{section}.tz` is not a time zone: `{zone}`"),
                        "unknown time zone",
                        "write an IANA zone name such as `\"UTC\"` or `\"Europe/Paris\"`",
                    );
                    None
                }
                Some(Err(error)) => {
                    reader.invalid(
                        schedule_value.span(),
                        format!("`{section}.schedule` is not a schedule: {error}"),
                        "not a schedule",
                        "accepted: five fields `minute hour day month weekday` such as `\"*/5 * * * *\"`, or `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`",
                    );
                    None
                }
            }
        }
    };
    let command = match table.get("command") {
        Some(value) => reader.nonempty_string(value, &format!("{section}.command")),
        None => {
            reader.missing(
                key_span.clone(),
                &format!("{section}.command"),
                "add `command = \"python3 reports.py\"` (run with `sh -c` in the release's folder)",
            );
            None
        }
    };
    let service = match table.get("service") {
        None => services.first().map(|service| service.name.clone()),
        Some(value) => {
            let name = reader.nonempty_string(value, &format!("{section}.service"))?;
            if services.iter().any(|service| service.name == name) {
                Some(name)
            } else {
                let names: Vec<&str> = services
                    .iter()
                    .map(|service| service.name.as_str())
                    .collect();
                reader.invalid(
                    value.span(),
                    format!("`{section}.service` names no service: `{name}`"),
                    "unknown service",
                    format!("declared services: {}", list(&names)),
                );
                None
            }
        }
    };
    let timeout = match table.get("timeout") {
        Some(value) => reader.positive_duration(value, &format!("{section}.timeout"))?,
        None => DEFAULT_TIMEOUT,
    };
    let concurrency = match table.get("concurrency") {
        None => Concurrency::default(),
        Some(value) => {
            let text = reader.string(value, &format!("{section}.concurrency"))?;
            match Concurrency::parse(&text) {
                Some(concurrency) => concurrency,
                None => {
                    reader.invalid(
                        value.span(),
                        format!("`{section}.concurrency` is not a policy: `{text}`"),
                        "unknown policy",
                        format!("accepted: {}", list(&Concurrency::NAMES)),
                    );
                    return None;
                }
            }
        }
    };
    let catch_up = match table.get("catch_up") {
        None => true,
        Some(value) => match value.get_ref() {
            DeValue::Boolean(flag) => *flag,
            _ => {
                reader.invalid(
                    value.span(),
                    format!("`{section}.catch_up` must be a boolean"),
                    "expected a boolean",
                    "write `catch_up = true` or `catch_up = false`",
                );
                return None;
            }
        },
    };
    Some(CronJob {
        name: name.to_owned(),
        schedule: schedule?,
        command: command?,
        service: service?,
        timeout,
        concurrency,
        catch_up,
    })
}

#[cfg(test)]
mod tests;
