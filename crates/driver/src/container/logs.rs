//! A container's or a Swarm task's output through the engine's logs API: the last `n` lines, and
//! the lines after a cursor (the engine's timestamp of the last line handed out).
//!
//! Every line is asked for with its timestamp (`2026-11-23T04:10:32.123456789Z text`); the
//! timestamp is stripped before the line is handed out and only kept as the cursor.

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::query_parameters::LogsOptions;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;

use super::engine::EngineError;

/// Most lines one `logs_after` call returns, so a follower far behind catches up in steps.
pub(crate) const MAX_LINES_AFTER: usize = 10_000;

/// One line of output and the engine's timestamp of it (nanoseconds since the Unix epoch; 0 when
/// the engine sent none that parses).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TimedLine {
    pub(crate) nanos: u64,
    pub(crate) line: String,
}

/// Whose output is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// A container of the engine's own host, by name or id.
    Container(String),
    /// A Swarm task, by id: the manager's task logs endpoint reads it from whichever node runs
    /// (or ran) the task, so it works for tasks on every node of the swarm.
    Task(String),
}

impl Source {
    fn stream(
        &self,
        docker: &Docker,
        options: LogsOptions,
    ) -> BoxStream<'static, Result<LogOutput, bollard::errors::Error>> {
        match self {
            Source::Container(name) => docker.logs(name, Some(options)).boxed(),
            Source::Task(id) => docker.task_logs(id, Some(options)).boxed(),
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Container(name) => write!(f, "container `{name}`"),
            Source::Task(id) => write!(f, "task `{id}`"),
        }
    }
}

/// The last `n` lines of the source's stdout and stderr, oldest first.
pub(crate) async fn tail(
    docker: &Docker,
    source: &Source,
    n: usize,
) -> Result<Vec<TimedLine>, EngineError> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let options = LogsOptions {
        stdout: true,
        stderr: true,
        timestamps: true,
        tail: n.to_string(),
        ..LogsOptions::default()
    };
    let mut lines = collect(docker, source, options, usize::MAX, 0).await?;
    let skip = lines.len().saturating_sub(n);
    Ok(lines.split_off(skip))
}

/// The lines stamped after `after_nanos` (at most [`MAX_LINES_AFTER`]), oldest first.
///
/// The engine's `since` filter takes whole seconds, so it is given the cursor's second and the
/// lines of that second up to the cursor are dropped here. Two lines stamped in the very same
/// nanosecond as the cursor line would lose the second one; the engine stamps at nanosecond
/// resolution, so this does not happen in practice.
pub(crate) async fn after(
    docker: &Docker,
    source: &Source,
    after_nanos: u64,
) -> Result<Vec<TimedLine>, EngineError> {
    let since = i32::try_from(after_nanos / 1_000_000_000).unwrap_or(i32::MAX);
    let options = LogsOptions {
        stdout: true,
        stderr: true,
        timestamps: true,
        since,
        ..LogsOptions::default()
    };
    collect(docker, source, options, MAX_LINES_AFTER, after_nanos).await
}

/// Follows the output of a running container until it ends, handing each line to `on_line`.
pub(crate) async fn follow(
    docker: &Docker,
    container: &str,
    on_line: &mut (dyn FnMut(&str) + Send),
) -> Result<(), EngineError> {
    let options = LogsOptions {
        follow: true,
        stdout: true,
        stderr: true,
        ..LogsOptions::default()
    };
    let mut stream = docker.logs(container, Some(options));
    let mut joiner = LineJoiner::new(false);
    while let Some(output) = stream.next().await {
        for line in joiner.push(&output?) {
            on_line(&line);
        }
    }
    for line in joiner.finish() {
        on_line(&line);
    }
    Ok(())
}

/// A follower's next read of `source`'s output, on the driver's runtime: with no cursor, no
/// lines and a cursor at the last line there is ("from now"); else the lines after `cursor` and a
/// cursor at the last of them. `None` when the driver is shutting down. The container and swarm
/// drivers' `logs_after` both read this way.
pub(crate) fn read_after(
    bridge: &super::engine::Bridge,
    docker: &Docker,
    source: &Source,
    cursor: Option<crate::LogCursor>,
) -> Result<(Vec<String>, crate::LogCursor), EngineError> {
    let docker = docker.clone();
    let name = source.clone();
    bridge
        .run(async move {
            match cursor {
                None => tail(&docker, &name, 1).await.map(|lines| {
                    let offset = lines.last().map_or(0, |line| line.nanos);
                    (Vec::new(), crate::LogCursor { offset })
                }),
                Some(cursor) => after(&docker, &name, cursor.offset).await.map(|lines| {
                    let offset = lines.last().map_or(cursor.offset, |line| line.nanos);
                    (
                        lines.into_iter().map(|line| line.line).collect(),
                        crate::LogCursor { offset },
                    )
                }),
            }
        })
        .unwrap_or_else(|| Err(EngineError::other("the driver is shutting down".into())))
}

/// Reads a (non-following) logs stream into timed lines newer than `after_nanos`, stopping after
/// `limit` lines.
async fn collect(
    docker: &Docker,
    source: &Source,
    options: LogsOptions,
    limit: usize,
    after_nanos: u64,
) -> Result<Vec<TimedLine>, EngineError> {
    let mut stream = source.stream(docker, options);
    let mut joiner = LineJoiner::new(true);
    let mut lines = Vec::new();
    let mut finished = false;
    while !finished {
        let raws = match stream.next().await {
            Some(output) => joiner.push(&output?),
            None => {
                finished = true;
                joiner.finish()
            }
        };
        for raw in raws {
            let line = parse_timed(&raw);
            if line.nanos > after_nanos || after_nanos == 0 {
                lines.push(line);
                if lines.len() >= limit {
                    return Ok(lines);
                }
            }
        }
    }
    Ok(lines)
}

/// A longest line kept whole; a longer one is handed out in pieces of this size.
const MAX_JOINED_LINE: usize = 1024 * 1024;

/// Whole lines from the engine's output frames. A frame is normally one line with its newline,
/// but the engine splits a line longer than 16 KiB over several frames (and a process may write
/// part of a line before the rest): the pieces are joined per stream until the newline, so a
/// secret that straddles two frames is still whole when the caller scrubs the line. With
/// `timed`, each frame starts with the engine's timestamp: a continuation's is dropped and the
/// line keeps its first.
pub(crate) struct LineJoiner {
    timed: bool,
    /// The unfinished line of stdout (0) and of stderr (1).
    pending: [Vec<u8>; 2],
}

impl LineJoiner {
    pub(crate) fn new(timed: bool) -> LineJoiner {
        LineJoiner {
            timed,
            pending: [Vec::new(), Vec::new()],
        }
    }

    /// The lines that `output` finishes, oldest first.
    pub(crate) fn push(&mut self, output: &LogOutput) -> Vec<String> {
        let (stream, bytes) = match output {
            LogOutput::StdOut { message } | LogOutput::Console { message } => (0, message),
            LogOutput::StdErr { message } => (1, message),
            LogOutput::StdIn { .. } => return Vec::new(),
        };
        let pending = &mut self.pending[stream];
        let mut bytes: &[u8] = bytes;
        if self.timed && !pending.is_empty() {
            // `STAMP text`: the continuation's own stamp goes.
            if let Some(space) = bytes.iter().position(|&byte| byte == b' ')
                && std::str::from_utf8(&bytes[..space])
                    .ok()
                    .and_then(parse_rfc3339_nanos)
                    .is_some()
            {
                bytes = &bytes[space + 1..];
            }
        }
        let mut lines = Vec::new();
        for piece in bytes.split_inclusive(|&byte| byte == b'\n') {
            pending.extend_from_slice(piece);
            if piece.ends_with(b"\n") || pending.len() >= MAX_JOINED_LINE {
                lines.push(line_text(pending));
                pending.clear();
            }
        }
        lines
    }

    /// What is left unfinished when the output ends.
    pub(crate) fn finish(&mut self) -> Vec<String> {
        self.pending
            .iter_mut()
            .filter(|pending| !pending.is_empty())
            .map(|pending| {
                let line = line_text(pending);
                pending.clear();
                line
            })
            .collect()
    }
}

/// A line's text without its `\n` or `\r\n`.
fn line_text(bytes: &[u8]) -> String {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    String::from_utf8_lossy(bytes.strip_suffix(b"\r").unwrap_or(bytes)).into_owned()
}

/// Splits `2026-11-23T04:10:32.123456789Z text` into its timestamp and text; a line without a
/// timestamp that parses keeps all its text and gets 0.
pub(crate) fn parse_timed(raw: &str) -> TimedLine {
    if let Some((stamp, text)) = raw.split_once(' ')
        && let Some(nanos) = parse_rfc3339_nanos(stamp)
    {
        return TimedLine {
            nanos,
            line: text.to_owned(),
        };
    }
    if let Some(nanos) = parse_rfc3339_nanos(raw) {
        // An empty line: the timestamp alone.
        return TimedLine {
            nanos,
            line: String::new(),
        };
    }
    TimedLine {
        nanos: 0,
        line: raw.to_owned(),
    }
}

/// Nanoseconds since the Unix epoch of a UTC RFC 3339 timestamp as the engine writes them
/// (`2026-11-23T04:10:32.123456789Z`, any number of fraction digits).
pub(crate) fn parse_rfc3339_nanos(stamp: &str) -> Option<u64> {
    let stamp = stamp.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut date_parts = date.splitn(3, '-');
    let year: i64 = date_parts.next()?.parse().ok()?;
    let month: u32 = date_parts.next()?.parse().ok()?;
    let day: u32 = date_parts.next()?.parse().ok()?;
    let (clock, fraction) = match time.split_once('.') {
        Some((clock, fraction)) => (clock, fraction),
        None => (time, ""),
    };
    let mut clock_parts = clock.splitn(3, ':');
    let hour: u64 = clock_parts.next()?.parse().ok()?;
    let minute: u64 = clock_parts.next()?.parse().ok()?;
    let second: u64 = clock_parts.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    if second > 60 || !fraction.chars().all(|c| c.is_ascii_digit()) || fraction.len() > 9 {
        return None;
    }
    let fraction_nanos: u64 = if fraction.is_empty() {
        0
    } else {
        fraction.parse::<u64>().ok()? * 10u64.pow(9 - fraction.len() as u32)
    };
    let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second;
    seconds
        .checked_mul(1_000_000_000)?
        .checked_add(fraction_nanos)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}
