use std::path::Path;

use super::*;

#[test]
fn targets_parse_and_never_show_the_password() {
    let workdir = Path::new("/srv/app");
    let cases = [
        ("sqlite:data/app.db", "sqlite:/srv/app/data/app.db"),
        ("sqlite:///var/lib/app.db", "sqlite:/var/lib/app.db"),
        (
            "postgres://shop:s3cr%40t@db.internal:5433/shop",
            "postgres://shop@db.internal:5433/shop",
        ),
        ("postgresql://db/shop?sslmode=require", "postgres://db/shop"),
    ];
    for (url, shown) in cases {
        let target = Target::parse(url, workdir).expect(url);
        assert_eq!(target.display(), shown);
        assert!(!format!("{target:?}").contains("s3cr"), "{url}");
    }
    let Ok(Target::Postgres { url }) = Target::parse("postgres://shop:s3cr%40t@db/shop", workdir)
    else {
        panic!("postgres URL");
    };
    assert_eq!(url.password.as_deref(), Some("s3cr@t"));
}

#[test]
fn unknown_schemes_say_what_is_accepted() {
    let error = Target::parse("mysql://db/shop", Path::new("/"))
        .expect_err("mysql is not supported")
        .to_string();
    assert!(
        error.contains("`mysql`") && error.contains("sqlite:PATH"),
        "{error}"
    );
    assert!(Target::parse("postgres://db", Path::new("/")).is_err());
}

#[test]
fn sqlite_copy_gives_back_the_same_rows() {
    let dir = tempfile::tempdir().expect("temp dir");
    let live = dir.path().join("live.db");
    let copy = dir.path().join("copy.db");
    let connection = rusqlite::Connection::open(&live).expect("open");
    connection
        .execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t (v) VALUES ('a'), ('b');")
        .expect("seed");
    sqlite_copy(&live, &copy).expect("backup");
    connection
        .execute_batch("DROP TABLE t; CREATE TABLE u (x);")
        .expect("change");
    sqlite_copy(&copy, &live).expect("restore");
    let n: i64 = connection
        .query_row("SELECT COUNT(*) FROM t", [], |row| row.get(0))
        .expect("t is back");
    assert_eq!(n, 2);
    let u: i64 = connection
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'u'",
            [],
            |row| row.get(0),
        )
        .expect("schema");
    assert_eq!(u, 0, "the restore replaced the schema too");
}
