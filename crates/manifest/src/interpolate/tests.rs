use super::*;

#[test]
fn references_are_collected_once_in_order() {
    assert_eq!(
        references("postgres://${DB_USER}:${DB_PASS}@db/${DB_USER}"),
        Ok(vec!["DB_USER".to_owned(), "DB_PASS".to_owned()])
    );
    assert_eq!(references("plain $5 and $$HOME"), Ok(vec![]));
}

#[test]
fn broken_references_are_errors() {
    assert_eq!(
        references("${OPEN"),
        Err("`${` is not closed with `}`".to_owned())
    );
    assert!(references("${1BAD}").is_err());
    assert!(references("${}").is_err());
}

#[test]
fn interpolation_fills_in_and_names_every_missing_value() {
    let lookup = |name: &str| (name == "A").then(|| "1".to_owned());
    assert_eq!(interpolate("x=${A} $$", lookup), Ok("x=1 $".to_owned()));
    assert_eq!(
        interpolate("${B}${A}${C}${B}", lookup),
        Err(Unresolved::Missing(vec!["B".to_owned(), "C".to_owned()]))
    );
}

#[test]
fn env_names() {
    assert!(is_env_name("DATABASE_URL"));
    assert!(is_env_name("_x1"));
    assert!(!is_env_name("1X"));
    assert!(!is_env_name("A-B"));
    assert!(!is_env_name(""));
}
