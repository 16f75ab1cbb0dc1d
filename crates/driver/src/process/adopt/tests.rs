//! Unit tests of pid files and `/proc/<pid>/stat` parsing.

use super::*;

#[test]
fn parse_stat_reads_state_group_and_start_time() {
    // A command name with spaces and a `)` must not shift the fields.
    let text = "4242 (my (weird) app) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 98765 \
                12345678 500 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
    assert_eq!(
        parse_stat(text),
        Some(ProcStat {
            state: 'S',
            process_group: 4242,
            start_time: 98765,
        })
    );
}

#[test]
fn parse_stat_rejects_truncated_text() {
    assert_eq!(parse_stat("4242 (app) S 1 4242"), None);
    assert_eq!(parse_stat(""), None);
}

#[test]
fn pid_file_round_trip() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("pid");
    let identity = ProcessIdentity {
        pid: 1234,
        start_time: 567,
    };
    write_pid_file(&path, identity).expect("write pid file");
    assert_eq!(read_pid_file(&path).expect("read pid file"), Some(identity));
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|entry| entry.expect("entry").file_name())
        .collect();
    assert_eq!(names, ["pid"], "the temporary file is renamed away");
    remove_pid_file(&path).expect("remove");
    remove_pid_file(&path).expect("removing twice is fine");
    assert_eq!(read_pid_file(&path).expect("read missing pid file"), None);
}

#[test]
fn garbage_pid_files_mean_nothing_runs() {
    for text in ["", "abc", "12", "0 5", "12 34 56", "-3 4"] {
        assert_eq!(parse_pid_file(text), None, "{text:?}");
    }
    assert_eq!(
        parse_pid_file("12 34\n"),
        Some(ProcessIdentity {
            pid: 12,
            start_time: 34
        })
    );
}

#[test]
fn own_process_is_alive_and_a_different_start_time_is_not() {
    let identity = identity_of(std::process::id()).expect("own /proc entry");
    assert!(is_alive(identity));
    assert!(!is_alive(ProcessIdentity {
        start_time: identity.start_time + 1,
        ..identity
    }));
}
