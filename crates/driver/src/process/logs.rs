//! An instance's output files: `output.log` written by the child itself, rotated by copy-truncate.
//!
//! The child's stdout and stderr are the file itself (opened `O_APPEND`), never a pipe the agent
//! holds: when the agent dies, the apps keep writing instead of getting SIGPIPE. Because the
//! child appends, the driver can rotate under it: copy the tail of `output.log` to
//! `output.log.1`, then truncate `output.log` to zero; the child's next write lands at the new
//! end. Lines the child writes between the copy and the truncation are lost, the known price of
//! copy-truncate.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::LogCursor;

/// The live output file, appended to by the instance.
pub(crate) const OUTPUT_LOG: &str = "output.log";
/// The previous output, at most the size limit, replaced at every rotation.
pub(crate) const ROTATED_LOG: &str = "output.log.1";

/// Most bytes one [`read_after`] call returns, so a follower far behind catches up in steps.
pub(crate) const MAX_READ_AFTER_BYTES: u64 = 1024 * 1024;

const TAIL_CHUNK: u64 = 64 * 1024;

/// Opens `output.log` for the child: append-only, created owner-readable only.
pub(crate) fn open_for_child(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// Rotates when `output.log` holds more than `limit` bytes: its last `limit` bytes (from a line
/// start when there is one) replace `output.log.1`, then `output.log` is truncated.
/// Returns whether it rotated.
pub(crate) fn rotate_if_needed(dir: &Path, limit: u64) -> io::Result<bool> {
    let output_path = dir.join(OUTPUT_LOG);
    let mut output = match OpenOptions::new().read(true).write(true).open(&output_path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(error) => return Err(error),
    };
    let len = output.metadata()?.len();
    if len <= limit {
        return Ok(false);
    }
    let start = len - limit;
    output.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    Read::take(&mut output, limit).read_to_end(&mut tail)?;
    // Truncate right after reading, to keep the window in which lines are lost small.
    output.set_len(0)?;
    let kept = if start > 0 {
        match tail.iter().position(|&byte| byte == b'\n') {
            Some(newline) if newline + 1 < tail.len() => &tail[newline + 1..],
            _ => &tail[..],
        }
    } else {
        &tail[..]
    };
    let mut rotated = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join(ROTATED_LOG))?;
    rotated.write_all(kept)?;
    Ok(true)
}

/// The last `n` lines of the instance's output, oldest first, reading `output.log.1` when
/// `output.log` holds fewer. A last line without its newline yet is included.
pub(crate) fn tail(dir: &Path, n: usize) -> io::Result<Vec<String>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut lines = tail_of_file(&dir.join(OUTPUT_LOG), n)?;
    if lines.len() < n {
        let mut older = tail_of_file(&dir.join(ROTATED_LOG), n - lines.len())?;
        older.append(&mut lines);
        lines = older;
    }
    Ok(lines)
}

/// The complete lines of `output.log` after `cursor` (at most [`MAX_READ_AFTER_BYTES`]), and the
/// cursor after them. `None` starts at the end of the last complete line. A file shorter than
/// the cursor was rotated: reading starts again at its beginning.
pub(crate) fn read_after(
    dir: &Path,
    cursor: Option<LogCursor>,
) -> io::Result<(Vec<String>, LogCursor)> {
    let path = dir.join(OUTPUT_LOG);
    let mut file = match File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Ok((Vec::new(), LogCursor::default()));
        }
        Err(error) => return Err(error),
    };
    let len = file.metadata()?.len();
    let Some(cursor) = cursor else {
        let offset = end_of_last_line(&mut file, len)?;
        return Ok((Vec::new(), LogCursor { offset }));
    };
    let offset = if cursor.offset > len {
        0
    } else {
        cursor.offset
    };
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    file.take(MAX_READ_AFTER_BYTES.min(len - offset))
        .read_to_end(&mut bytes)?;
    let consumed = match bytes.iter().rposition(|&byte| byte == b'\n') {
        Some(newline) => newline + 1,
        // One line longer than a whole read: hand it out in pieces rather than stall.
        None if bytes.len() as u64 == MAX_READ_AFTER_BYTES => bytes.len(),
        None => 0,
    };
    let lines = split_lines(&bytes[..consumed]);
    Ok((
        lines,
        LogCursor {
            offset: offset + consumed as u64,
        },
    ))
}

/// The last `n` lines of one file, read backwards in chunks; a missing file has none.
fn tail_of_file(path: &Path, n: usize) -> io::Result<Vec<String>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let len = file.metadata()?.len();
    let mut position = len;
    // Invariant: `suffix` is the file's bytes from `position` to `len`.
    let mut suffix: Vec<u8> = Vec::new();
    while position > 0 {
        let step = TAIL_CHUNK.min(position);
        position -= step;
        file.seek(SeekFrom::Start(position))?;
        let mut chunk = Vec::new();
        Read::take(&mut file, step).read_to_end(&mut chunk)?;
        chunk.append(&mut suffix);
        suffix = chunk;
        // n complete lines need n newlines before the last line's own (optional) newline.
        let body = suffix.strip_suffix(b"\n").unwrap_or(&suffix);
        if body.iter().filter(|&&byte| byte == b'\n').count() >= n {
            break;
        }
    }
    let mut lines = split_lines(&suffix);
    if position > 0 && !lines.is_empty() {
        // The first line was cut by the chunk boundary.
        lines.remove(0);
    }
    let skip = lines.len().saturating_sub(n);
    Ok(lines.split_off(skip))
}

/// Splits on `\n` (dropping a `\r` before it); a trailing newline does not start an empty line.
fn split_lines(bytes: &[u8]) -> Vec<String> {
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|&byte| byte == b'\n')
        .map(|line| String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(line)).into_owned())
        .collect()
}

/// The offset just after the last `\n` of the file (0 when the last chunk holds none).
fn end_of_last_line(file: &mut File, len: u64) -> io::Result<u64> {
    let start = len.saturating_sub(TAIL_CHUNK);
    file.seek(SeekFrom::Start(start))?;
    let mut chunk = Vec::new();
    Read::take(&mut *file, len - start).read_to_end(&mut chunk)?;
    Ok(match chunk.iter().rposition(|&byte| byte == b'\n') {
        Some(newline) => start + newline as u64 + 1,
        None => start,
    })
}

#[cfg(test)]
mod tests;
