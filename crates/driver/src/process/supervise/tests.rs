//! Unit tests of the restart backoff and the child's environment.

use std::path::PathBuf;

use super::*;

fn backoff() -> Backoff {
    Backoff::new(
        Duration::from_millis(100),
        Duration::from_secs(30),
        Duration::from_secs(60),
    )
}

#[test]
fn backoff_doubles_up_to_the_maximum() {
    let mut backoff = backoff();
    let delays: Vec<u128> = (0..12)
        .map(|_| backoff.next_delay(Duration::from_secs(1)).as_millis())
        .collect();
    assert_eq!(
        delays,
        [
            100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000
        ]
    );
}

#[test]
fn backoff_resets_after_a_clean_run() {
    let mut backoff = backoff();
    for _ in 0..5 {
        backoff.next_delay(Duration::ZERO);
    }
    assert_eq!(
        backoff.next_delay(Duration::from_secs(59)),
        Duration::from_millis(3200)
    );
    assert_eq!(
        backoff.next_delay(Duration::from_secs(60)),
        Duration::from_millis(100)
    );
    assert_eq!(
        backoff.next_delay(Duration::ZERO),
        Duration::from_millis(200)
    );
}

#[test]
fn child_env_is_the_spec_env_plus_port_and_a_few_agent_variables() {
    let spec = InstanceSpec {
        instance_id: "app-web-1".into(),
        workdir: PathBuf::from("/"),
        command: "true".into(),
        env: vec![("DATABASE_URL".into(), "postgres://secret".into())],
        port: 4321,
        stop_timeout: Duration::from_secs(1),
        image: None,
        confinement: crate::Confinement::default(),
        cluster: None,
    };
    let env = child_env(&spec);
    let names: Vec<&str> = env
        .iter()
        .map(|(name, _)| name.to_str().expect("utf-8 name"))
        .collect();
    assert!(
        names.iter().all(
            |name| crate::confine::PASSED_THROUGH_VARIABLES.contains(name)
                || ["DATABASE_URL", "PORT"].contains(name)
        ),
        "{names:?}"
    );
    assert_eq!(
        env.last(),
        Some(&(OsString::from("PORT"), OsString::from("4321")))
    );
    assert!(env.contains(&("DATABASE_URL".into(), "postgres://secret".into())));
}
