use super::constraint;

#[test]
fn constraints_are_read_as_the_engine_reads_them() {
    let cases: &[(&str, Result<&str, &str>)] = &[
        ("node.labels.tier == web", Ok("node.labels.tier == web")),
        ("node.labels.tier==web", Ok("node.labels.tier == web")),
        ("  node.role != manager ", Ok("node.role != manager")),
        ("engine.labels.zone == a", Ok("engine.labels.zone == a")),
        (
            "node.platform.arch == x86_64",
            Ok("node.platform.arch == x86_64"),
        ),
        ("node.labels.tier = web", Err("it has no `==` or `!=`")),
        (
            "node.labels.tier ==",
            Err("nothing to compare `node.labels.tier` with"),
        ),
        ("node.role == a == b", Err("it has more than one operator")),
        ("node.role == a != b", Err("it has both `==` and `!=`")),
        ("node.labels. == a", Err("not an attribute")),
        ("node.tier == web", Err("not an attribute")),
        ("labels.tier == web", Err("not an attribute")),
    ];
    for (text, expected) in cases {
        match (constraint(text), expected) {
            (Ok(normal), Ok(expected)) => assert_eq!(normal, *expected, "{text}"),
            (Err(reason), Err(expected)) => {
                assert!(reason.contains(expected), "{text}: {reason}")
            }
            (got, expected) => panic!("{text}: got {got:?}, expected {expected:?}"),
        }
    }
}
