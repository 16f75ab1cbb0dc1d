//! Unit tests of log rotation, tails and cursors on plain files.

use std::path::Path;

use super::*;

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("write log file");
}

fn append(dir: &Path, text: &str) {
    let mut file = open_for_child(&dir.join(OUTPUT_LOG)).expect("open output.log");
    file.write_all(text.as_bytes()).expect("append");
}

fn numbered(range: std::ops::Range<usize>) -> String {
    range.map(|i| format!("line {i}\n")).collect()
}

#[test]
fn tail_of_one_file() {
    let dir = tempfile::tempdir().expect("temporary directory");
    write(dir.path(), OUTPUT_LOG, "a\nb\r\nc\n");
    assert_eq!(tail(dir.path(), 2).expect("tail"), ["b", "c"]);
    assert_eq!(tail(dir.path(), 10).expect("tail"), ["a", "b", "c"]);
    assert_eq!(tail(dir.path(), 0).expect("tail"), Vec::<String>::new());
}

#[test]
fn tail_includes_an_unfinished_last_line() {
    let dir = tempfile::tempdir().expect("temporary directory");
    write(dir.path(), OUTPUT_LOG, "a\nb\npartial");
    assert_eq!(tail(dir.path(), 2).expect("tail"), ["b", "partial"]);
}

#[test]
fn tail_reads_the_rotated_file_when_needed() {
    let dir = tempfile::tempdir().expect("temporary directory");
    write(dir.path(), ROTATED_LOG, "old 1\nold 2\n");
    write(dir.path(), OUTPUT_LOG, "new 1\n");
    assert_eq!(tail(dir.path(), 2).expect("tail"), ["old 2", "new 1"]);
    assert_eq!(
        tail(dir.path(), 5).expect("tail"),
        ["old 1", "old 2", "new 1"]
    );
}

#[test]
fn tail_of_missing_files_is_empty() {
    let dir = tempfile::tempdir().expect("temporary directory");
    assert_eq!(tail(dir.path(), 3).expect("tail"), Vec::<String>::new());
}

#[test]
fn tail_across_chunk_boundaries() {
    let dir = tempfile::tempdir().expect("temporary directory");
    // About 10 chunks of text, so the backwards reader crosses several boundaries.
    write(dir.path(), OUTPUT_LOG, &numbered(0..70_000));
    let lines = tail(dir.path(), 20_000).expect("tail");
    assert_eq!(lines.len(), 20_000);
    assert_eq!(lines[0], "line 50000");
    assert_eq!(lines[19_999], "line 69999");
}

#[test]
fn rotation_keeps_the_line_aligned_tail_within_the_limit() {
    let dir = tempfile::tempdir().expect("temporary directory");
    append(dir.path(), &numbered(0..100));
    assert!(rotate_if_needed(dir.path(), 64).expect("rotate"));
    let rotated = std::fs::read_to_string(dir.path().join(ROTATED_LOG)).expect("read");
    assert!(rotated.len() <= 64, "{rotated:?}");
    assert!(rotated.starts_with("line "), "{rotated:?}");
    assert!(rotated.ends_with("line 99\n"), "{rotated:?}");
    assert_eq!(
        std::fs::metadata(dir.path().join(OUTPUT_LOG))
            .expect("stat")
            .len(),
        0
    );
    // Appending continues at the start of the truncated file.
    append(dir.path(), "after\n");
    assert_eq!(
        std::fs::read_to_string(dir.path().join(OUTPUT_LOG)).expect("read"),
        "after\n"
    );
    assert_eq!(tail(dir.path(), 2).expect("tail"), ["line 99", "after"]);
}

#[test]
fn no_rotation_below_the_limit_or_without_a_file() {
    let dir = tempfile::tempdir().expect("temporary directory");
    assert!(!rotate_if_needed(dir.path(), 64).expect("rotate"));
    append(dir.path(), "short\n");
    assert!(!rotate_if_needed(dir.path(), 64).expect("rotate"));
    assert!(!dir.path().join(ROTATED_LOG).exists());
}

#[test]
fn cursor_follows_complete_lines() {
    let dir = tempfile::tempdir().expect("temporary directory");
    append(dir.path(), "before\n");
    let (lines, cursor) = read_after(dir.path(), None).expect("read");
    assert!(lines.is_empty());
    append(dir.path(), "one\ntwo\nthr");
    let (lines, cursor) = read_after(dir.path(), Some(cursor)).expect("read");
    assert_eq!(lines, ["one", "two"]);
    append(dir.path(), "ee\n");
    let (lines, cursor) = read_after(dir.path(), Some(cursor)).expect("read");
    assert_eq!(lines, ["three"]);
    let (lines, _) = read_after(dir.path(), Some(cursor)).expect("read");
    assert!(lines.is_empty());
}

#[test]
fn cursor_starts_over_after_rotation() {
    let dir = tempfile::tempdir().expect("temporary directory");
    append(dir.path(), &numbered(0..10));
    let (_, cursor) = read_after(dir.path(), None).expect("read");
    assert!(rotate_if_needed(dir.path(), 10).expect("rotate"));
    append(dir.path(), "fresh\n");
    let (lines, _) = read_after(dir.path(), Some(cursor)).expect("read");
    assert_eq!(lines, ["fresh"]);
}
