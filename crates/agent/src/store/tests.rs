//! Tests of the store: numbering, compare-and-set transitions, locks, the event log, reopening.

use super::deployments::new_deployment_id;
use super::*;

use rusqlite::params;

use client::wire::{DeploymentId, DeploymentKind, Strategy};

use crate::tokens::Role;

use client::wire::DeploymentState as S;

fn store() -> Store {
    match Store::open_in_memory() {
        Ok(store) => store,
        Err(error) => panic!("cannot open an in-memory store: {error}"),
    }
}

fn new_release(app: &str, environment: &str) -> NewRelease {
    NewRelease {
        app: app.to_owned(),
        environment: environment.to_owned(),
        artifact: "ab".repeat(32),
        config_json: r#"{"services":{"web":{}}}"#.to_owned(),
        secrets_version: Some("s-1".to_owned()),
        strategy: Strategy::BlueGreen,
        created_by: "ci".to_owned(),
        message: None,
    }
}

fn new_deployment(app: &str, environment: &str, to_release: u64) -> NewDeployment {
    let to_release = ReleaseNumber::new(to_release);
    NewDeployment {
        app: app.to_owned(),
        environment: environment.to_owned(),
        kind: DeploymentKind::Deploy,
        from_release: None,
        to_release,
        strategy: Strategy::BlueGreen,
        data_json: "{}".to_owned(),
        created_by: "ci".to_owned(),
    }
}

fn new_event(kind: &str, deployment_id: Option<&str>) -> NewEvent {
    NewEvent {
        app: Some("logistix".to_owned()),
        environment: Some("production".to_owned()),
        deployment_id: deployment_id.map(DeploymentId::from),
        kind: kind.to_owned(),
        message: format!("{kind} happened"),
        data_json: "{}".to_owned(),
    }
}

/// Creates releases in the given (app, environment) order and checks the numbers they got.
fn check_numbering(creations: &[(&str, &str)], expected: &[u64]) {
    let store = store();
    let numbers: Vec<u64> = creations
        .iter()
        .map(|(app, environment)| {
            store
                .create_release(new_release(app, environment))
                .map(|release| release.number.get())
                .expect("create release")
        })
        .collect();
    assert_eq!(numbers, expected);
}

#[test]
fn release_numbers_are_per_app_and_environment() {
    check_numbering(&[("a", "prod")], &[1]);
    check_numbering(&[("a", "prod"), ("a", "prod"), ("a", "prod")], &[1, 2, 3]);
    check_numbering(
        &[
            ("a", "prod"),
            ("a", "staging"),
            ("b", "prod"),
            ("a", "prod"),
            ("b", "prod"),
        ],
        &[1, 1, 1, 2, 2],
    );
}

#[test]
fn releases_read_back_newest_first_and_only_outcome_changes() {
    let store = store();
    let first = store
        .create_release(new_release("a", "prod"))
        .expect("create");
    let second = store
        .create_release(new_release("a", "prod"))
        .expect("create");
    assert_eq!(first.outcome, ReleaseOutcome::Pending);
    assert_eq!(
        store
            .release("a", "prod", ReleaseNumber::new(1))
            .expect("read"),
        Some(first.clone())
    );
    assert_eq!(
        store
            .release("a", "prod", ReleaseNumber::new(3))
            .expect("read"),
        None
    );
    let numbers: Vec<u64> = store
        .releases("a", "prod")
        .expect("list")
        .iter()
        .map(|release| release.number.get())
        .collect();
    assert_eq!(numbers, [2, 1]);

    store
        .set_release_outcome(
            "a",
            "prod",
            ReleaseNumber::new(2),
            ReleaseOutcome::RolledBack,
        )
        .expect("set outcome");
    let changed = store
        .release("a", "prod", ReleaseNumber::new(2))
        .expect("read")
        .expect("exists");
    assert_eq!(
        changed,
        Release {
            outcome: ReleaseOutcome::RolledBack,
            ..second
        }
    );
    assert!(matches!(
        store.set_release_outcome("a", "prod", ReleaseNumber::new(9), ReleaseOutcome::Live),
        Err(StoreError::ReleaseNotFound { number, .. }) if number == ReleaseNumber::new(9)
    ));

    // The schema refuses any other change, whoever tries.
    let tampered = store.connection().execute(
        "UPDATE releases SET artifact = 'x' WHERE app = 'a' AND number = 1",
        [],
    );
    assert!(tampered.is_err());
}

#[test]
fn release_config_must_be_json() {
    let store = store();
    let release = NewRelease {
        config_json: "not json".to_owned(),
        ..new_release("a", "prod")
    };
    assert!(matches!(
        store.create_release(release),
        Err(StoreError::Sqlite {
            operation: "create a release",
            ..
        })
    ));
    // The failed creation consumed no number.
    let created = store
        .create_release(new_release("a", "prod"))
        .expect("create");
    assert_eq!(created.number, ReleaseNumber::new(1));
}

#[test]
fn current_release_points_at_an_existing_release() {
    let store = store();
    assert_eq!(store.current("a", "prod").expect("read"), None);
    assert!(matches!(
        store.set_current("a", "prod", ReleaseNumber::new(1)),
        Err(StoreError::ReleaseNotFound { number, .. }) if number == ReleaseNumber::new(1)
    ));
    store
        .create_release(new_release("a", "prod"))
        .expect("create");
    store
        .create_release(new_release("a", "prod"))
        .expect("create");
    store
        .create_release(new_release("b", "staging"))
        .expect("create");
    store
        .set_current("a", "prod", ReleaseNumber::new(2))
        .expect("set current");
    store
        .set_current("a", "prod", ReleaseNumber::new(1))
        .expect("set current");
    assert_eq!(
        store.current("a", "prod").expect("read"),
        Some(ReleaseNumber::new(1))
    );
    assert_eq!(
        store.apps().expect("apps"),
        [
            (
                "a".to_owned(),
                "prod".to_owned(),
                Some(ReleaseNumber::new(1))
            ),
            ("b".to_owned(), "staging".to_owned(), None)
        ]
    );
}

/// Runs `(expected, new)` transitions in order on a fresh deployment; each either succeeds or
/// fails with the state it found, and the final state is checked.
fn check_transitions(steps: &[(&str, &str, Result<(), &str>)], final_state: &str) {
    let store = store();
    store
        .create_release(new_release("a", "prod"))
        .expect("create release");
    let deployment = store
        .create_deployment(new_deployment("a", "prod", 1))
        .expect("create deployment");
    for (expected, new, outcome) in steps {
        let result = store.transition(&deployment.id, state(expected), state(new), None, None);
        match (result, outcome) {
            (Ok(moved), Ok(())) => assert_eq!(moved.state.as_str(), *new),
            (Err(StoreError::StateConflict { actual, .. }), Err(found)) => {
                assert_eq!(actual.as_str(), *found)
            }
            (result, outcome) => panic!("{expected} -> {new}: got {result:?}, wanted {outcome:?}"),
        }
    }
    let stored = store
        .deployment(&deployment.id)
        .expect("read")
        .expect("exists");
    assert_eq!(stored.state.as_str(), final_state);
}

/// A state named in a test table.
fn state(name: &str) -> DeploymentState {
    match name.parse() {
        Ok(state) => state,
        Err(error) => panic!("{error}"),
    }
}

#[test]
fn transition_is_compare_and_set() {
    check_transitions(&[("Pending", "Preparing", Ok(()))], "Preparing");
    check_transitions(
        &[
            ("Pending", "Preparing", Ok(())),
            ("Pending", "Preparing", Err("Preparing")),
            ("Preparing", "Starting", Ok(())),
        ],
        "Starting",
    );
    check_transitions(&[("Verifying", "Shifting", Err("Pending"))], "Pending");
}

#[test]
fn transition_keeps_reason_and_data_unless_given() {
    let store = store();
    store
        .create_release(new_release("a", "prod"))
        .expect("create release");
    let deployment = store
        .create_deployment(new_deployment("a", "prod", 1))
        .expect("create deployment");
    assert!(deployment.id.starts_with("d-"));
    let moved = store
        .transition(
            &deployment.id,
            S::Pending,
            S::RollingBack,
            Some("health gate"),
            Some(r#"{"started":["i-1"]}"#),
        )
        .expect("transition");
    let moved = store
        .transition(&moved.id, S::RollingBack, S::RolledBack, None, None)
        .expect("transition");
    assert_eq!(moved.reason.as_deref(), Some("health gate"));
    assert_eq!(moved.data_json, r#"{"started":["i-1"]}"#);
    assert_eq!(store.deployment(&moved.id).expect("read"), Some(moved));
    assert!(matches!(
        store.transition("d-missing", S::Pending, S::Preparing, None, None),
        Err(StoreError::DeploymentNotFound { .. })
    ));
}

#[test]
fn advance_writes_the_move_and_its_event_or_neither() {
    let store = store();
    store
        .create_release(new_release("a", "prod"))
        .expect("create release");
    let deployment = store
        .create_deployment(new_deployment("a", "prod", 1))
        .expect("create deployment");
    let advance = || Advance {
        id: &deployment.id,
        from: S::Pending,
        to: S::Preparing,
        reason: None,
        data_json: "{}",
        event: Some(new_event("preparing", Some(&deployment.id))),
        handled: None,
    };
    let (moved, event) = store.advance(advance()).expect("transition");
    let event = event.expect("the move's event");
    assert_eq!(moved.state.as_str(), "Preparing");
    assert_eq!(event.deployment_id.as_deref(), Some(deployment.id.as_str()));
    let refused = store.advance(advance());
    assert!(matches!(refused, Err(StoreError::StateConflict { .. })));
    assert_eq!(
        store
            .events_for_deployment(&deployment.id, 0)
            .expect("events"),
        [event]
    );
}

#[test]
fn deployments_list_newest_first_and_unfinished_ones() {
    let store = store();
    store
        .create_release(new_release("a", "prod"))
        .expect("create release");
    store
        .create_release(new_release("b", "prod"))
        .expect("create release");
    let ids: Vec<String> = ["a", "a", "a", "b"]
        .iter()
        .map(|app| {
            store
                .create_deployment(new_deployment(app, "prod", 1))
                .expect("create")
                .id
                .into_string()
        })
        .collect();
    store
        .transition(&ids[0], S::Pending, S::Succeeded, None, None)
        .expect("transition");
    store
        .transition(&ids[1], S::Pending, S::Failed, None, None)
        .expect("transition");

    let listed: Vec<String> = store
        .deployments("a", "prod", 2)
        .expect("list")
        .into_iter()
        .map(|deployment| deployment.id.into_string())
        .collect();
    assert_eq!(listed, [ids[2].clone(), ids[1].clone()]);

    let unfinished: Vec<String> = store
        .unfinished_deployments()
        .expect("unfinished")
        .into_iter()
        .map(|deployment| deployment.id.into_string())
        .collect();
    assert_eq!(unfinished, [ids[2].clone(), ids[3].clone()]);
}

#[test]
fn deployment_needs_its_release_and_a_known_kind() {
    let store = store();
    assert!(
        store
            .create_deployment(new_deployment("a", "prod", 1))
            .is_err()
    );
    store
        .create_release(new_release("a", "prod"))
        .expect("create release");
    let created = store
        .create_deployment(new_deployment("a", "prod", 1))
        .expect("create");
    assert_eq!(created.state, INITIAL_STATE);
    // `DeploymentKind` cannot name another kind; the schema refuses one written past it.
    let insert = |id: &str, kind: &str| {
        store.connection().execute(
            "INSERT INTO deployments (id, app, environment, kind, to_release, strategy, state,
                                      data_json, created_by, created_at, updated_at)
                  VALUES (?1, 'a', 'prod', ?2, 1, 'blue-green', 'Pending', '{}', 'ci', 1, 1)",
            params![id, kind],
        )
    };
    assert!(insert("d-1", "deploy").is_ok());
    assert!(insert("d-2", "redeploy").is_err());
}

#[test]
fn deployment_ids_sort_by_creation_time() {
    let earlier = new_deployment_id(999);
    let later = new_deployment_id(1_700_000_000_000);
    assert!(earlier < later, "{earlier} < {later}");
    assert_eq!(earlier.len(), "d-".len() + 13 + 1 + 16);
    assert_ne!(new_deployment_id(5), new_deployment_id(5));
}

#[test]
fn lock_is_refused_while_held_taken_over_after_ttl_and_released() {
    let store = store();
    let ttl_ms = 1_000;
    let first = store
        .acquire_lock("a", "prod", "host-1", "d-1", ttl_ms, 10_000)
        .expect("acquire")
        .expect("free lock");
    assert_eq!(first.expires_at, 11_000);

    // Held: another deployment is told who holds it.
    let refused = store
        .acquire_lock("a", "prod", "host-2", "d-2", ttl_ms, 10_500)
        .expect("acquire");
    assert_eq!(refused, Err(first.clone()));
    // Another (app, environment) is independent.
    assert!(
        store
            .acquire_lock("a", "staging", "host-2", "d-3", ttl_ms, 10_500)
            .expect("acquire")
            .is_ok()
    );

    // The holder's heartbeat pushes the expiry; the same deployment may acquire again.
    let renewed = store
        .heartbeat_lock("a", "prod", "d-1", ttl_ms, 10_900)
        .expect("heartbeat");
    assert_eq!(renewed.as_ref().map(|lock| lock.expires_at), Some(11_900));
    let again = store
        .acquire_lock("a", "prod", "host-1", "d-1", ttl_ms, 11_000)
        .expect("acquire");
    assert_eq!(again.map(|lock| lock.acquired_at), Ok(10_000));
    assert!(
        store
            .acquire_lock("a", "prod", "host-2", "d-2", ttl_ms, 11_500)
            .expect("acquire")
            .is_err()
    );

    // Expired: taken over, and the old holder learns it from its heartbeat.
    let taken = store
        .acquire_lock("a", "prod", "host-2", "d-2", ttl_ms, 12_000)
        .expect("acquire")
        .expect("expired lock");
    assert_eq!(
        (taken.deployment_id.as_str(), taken.acquired_at),
        ("d-2", 12_000)
    );
    assert_eq!(
        store
            .heartbeat_lock("a", "prod", "d-1", ttl_ms, 12_100)
            .expect("heartbeat"),
        None
    );
    assert!(!store.release_lock("a", "prod", "d-1").expect("release"));

    assert!(store.release_lock("a", "prod", "d-2").expect("release"));
    assert_eq!(store.lock("a", "prod").expect("read"), None);
    assert!(
        store
            .acquire_lock("a", "prod", "host-3", "d-4", ttl_ms, 12_200)
            .expect("acquire")
            .is_ok()
    );
}

#[test]
fn force_release_clears_any_lock() {
    let store = store();
    let held = store
        .acquire_lock("a", "prod", "ci job 41", "d-1", 60_000, 0)
        .expect("acquire")
        .expect("free lock");
    assert_eq!(store.lock("a", "prod").expect("read"), Some(held.clone()));
    assert_eq!(
        store.force_release_lock("a", "prod").expect("force"),
        Some(held)
    );
    assert_eq!(store.force_release_lock("a", "prod").expect("force"), None);
}

#[test]
fn event_ids_strictly_increase_and_pages_follow() {
    let store = store();
    let ids: Vec<i64> = (0..5)
        .map(|n| {
            let deployment_id = if n % 2 == 0 { Some("d-1") } else { None };
            store
                .record_event(new_event("step", deployment_id))
                .expect("record")
                .id
        })
        .collect();
    assert!(ids.windows(2).all(|pair| pair[0] < pair[1]), "{ids:?}");

    let page = |after: i64, limit: usize| -> Vec<i64> {
        store
            .events_after(after, limit)
            .expect("events")
            .iter()
            .map(|event| event.id)
            .collect()
    };
    assert_eq!(page(0, 2), ids[..2]);
    assert_eq!(page(ids[1], 10), ids[2..]);
    assert_eq!(page(ids[4], 10), [] as [i64; 0]);

    let for_deployment: Vec<i64> = store
        .events_for_deployment("d-1", ids[0])
        .expect("events")
        .iter()
        .map(|event| event.id)
        .collect();
    assert_eq!(for_deployment, [ids[2], ids[4]]);

    // The audit log cannot be rewritten.
    let connection = store.connection();
    assert!(connection.execute("DELETE FROM events", []).is_err());
    assert!(
        connection
            .execute("UPDATE events SET message = 'x'", [])
            .is_err()
    );
}

#[test]
fn instances_are_upserted_listed_and_removed() {
    let store = store();
    let instance = |instance_id: &str, environment: &str, state: &str| InstanceRecord {
        instance_id: instance_id.into(),
        app: "a".to_owned(),
        environment: environment.to_owned(),
        release: ReleaseNumber::new(1),
        service: "web".to_owned(),
        port: 40_001,
        // A swarm node's address survives the round trip (migration V8_SWARM).
        host: std::net::IpAddr::from([10, 0, 0, 7]),
        state: state.to_owned(),
        warm_until: None,
        updated_at: 5,
    };
    store
        .upsert_instance(&instance("i-2", "prod", "starting"))
        .expect("upsert");
    store
        .upsert_instance(&instance("i-1", "prod", "starting"))
        .expect("upsert");
    store
        .upsert_instance(&instance("i-3", "staging", "healthy"))
        .expect("upsert");
    store
        .upsert_instance(&instance("i-2", "prod", "healthy"))
        .expect("upsert");
    assert_eq!(
        store.instances("a", "prod").expect("list"),
        [
            instance("i-1", "prod", "starting"),
            instance("i-2", "prod", "healthy")
        ]
    );
    assert!(store.remove_instance("i-1").expect("remove"));
    assert!(!store.remove_instance("i-1").expect("remove"));
    assert_eq!(
        store.all_instances().expect("list"),
        [
            instance("i-2", "prod", "healthy"),
            instance("i-3", "staging", "healthy")
        ]
    );
}

#[test]
fn artifacts_are_indexed() {
    let store = store();
    let digest = "cd".repeat(32);
    assert!(!store.artifact_known(&digest).expect("known"));
    store.record_artifact(&digest, 1234, 1).expect("record");
    store
        .record_artifact(&digest, 1234, 2)
        .expect("record again");
    assert!(store.artifact_known(&digest).expect("known"));
}

#[test]
fn tokens_are_found_by_hash_and_revoked_once() {
    let store = store();
    let token = TokenRecord {
        id: "t-1".to_owned(),
        name: "ci".to_owned(),
        role: Role::Deployer,
        hash: "ef".repeat(32),
        created_at: 7,
        revoked_at: None,
    };
    assert_eq!(store.count_tokens().expect("count"), 0);
    store.insert_token(&token).expect("insert");
    assert!(
        store
            .insert_token(&TokenRecord {
                id: "t-2".into(),
                ..token.clone()
            })
            .is_err()
    );
    assert_eq!(
        store.token_by_hash(&token.hash).expect("lookup"),
        Some(token.clone())
    );
    assert_eq!(store.token_by_hash("00").expect("lookup"), None);
    assert!(store.revoke_token("t-1").expect("revoke"));
    assert!(!store.revoke_token("t-1").expect("revoke"));
    assert!(!store.revoke_token("t-9").expect("revoke"));
    let tokens = store.tokens().expect("list");
    assert_eq!(tokens.len(), 1);
    assert!(tokens[0].revoked_at.is_some());
    assert_eq!(store.count_tokens().expect("count"), 1);
}

#[test]
fn every_role_is_stored() {
    let store = store();
    for (idx, role) in Role::ALL.into_iter().enumerate() {
        let token = TokenRecord {
            id: format!("t-{idx}"),
            name: role.to_string(),
            role,
            hash: format!("{idx:064}"),
            created_at: 7,
            revoked_at: None,
        };
        store
            .insert_token(&token)
            .expect("the schema takes every role");
        assert_eq!(
            store.token_by_hash(&token.hash).expect("lookup"),
            Some(token)
        );
    }
}

#[test]
fn migrations_are_valid() {
    assert!(migrations::migrations().validate().is_ok());
}

#[test]
fn file_store_keeps_everything_across_reopens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rollway.db");
    let (release, deployment, event) = {
        let store = Store::open(&path).expect("open");
        let release = store
            .create_release(new_release("a", "prod"))
            .expect("create release");
        store
            .set_current("a", "prod", ReleaseNumber::new(1))
            .expect("set current");
        let deployment = store
            .create_deployment(new_deployment("a", "prod", 1))
            .expect("create");
        let deployment = store
            .transition(&deployment.id, S::Pending, S::Starting, None, None)
            .expect("move");
        let event = store
            .record_event(new_event("started", Some(&deployment.id)))
            .expect("record");
        store
            .acquire_lock("a", "prod", "host", &deployment.id, 1_000, 0)
            .expect("acquire")
            .expect("free");
        (release, deployment, event)
    };
    // Reopening twice: migrations find nothing to do, and everything written is still there.
    for expected_next_number in [2, 3] {
        let store = Store::open(&path).expect("reopen");
        assert_eq!(
            store.schema_version().expect("version") as usize,
            migrations::MIGRATIONS.len()
        );
        assert_eq!(
            store
                .release("a", "prod", ReleaseNumber::new(1))
                .expect("read"),
            Some(release.clone())
        );
        assert_eq!(
            store.current("a", "prod").expect("read"),
            Some(ReleaseNumber::new(1))
        );
        assert_eq!(
            store.unfinished_deployments().expect("unfinished"),
            std::slice::from_ref(&deployment)
        );
        assert_eq!(
            store.events_after(0, 10).expect("events"),
            std::slice::from_ref(&event)
        );
        assert!(store.lock("a", "prod").expect("lock").is_some());
        let created = store
            .create_release(new_release("a", "prod"))
            .expect("create");
        assert_eq!(created.number, ReleaseNumber::new(expected_next_number));
    }
    let connection = Connection::open(&path).expect("raw open");
    let n_pending = migrations::migrations()
        .pending_migrations(&connection)
        .expect("pending");
    assert_eq!(n_pending, 0);
}

#[cfg(unix)]
#[test]
fn file_store_is_private_and_in_wal_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rollway.db");
    std::fs::write(&path, b"").expect("create empty file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let store = Store::open(&path).expect("open");
    let mode = std::fs::metadata(&path)
        .expect("metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let journal_mode: String = store
        .connection()
        .pragma_query_value(None, "journal_mode", |row| row.get(0))
        .expect("journal mode");
    assert_eq!(journal_mode, "wal");
    let foreign_keys: bool = store
        .connection()
        .pragma_query_value(None, "foreign_keys", |row| row.get(0))
        .expect("foreign keys");
    assert!(foreign_keys);
}

#[test]
fn open_names_the_file_it_could_not_create() {
    let error = match Store::open(Path::new("/nonexistent-dir/rollway.db")) {
        Ok(_) => panic!("opened a store in a missing directory"),
        Err(error) => error,
    };
    assert_eq!(
        error.to_string(),
        "cannot create store file `/nonexistent-dir/rollway.db`"
    );
}

#[test]
fn concurrent_writers_never_share_a_release_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rollway.db");
    // Two handles on one file (two connections, as a second process would have), each shared
    // by two threads.
    let stores = [
        Store::open(&path).expect("open"),
        Store::open(&path).expect("open again"),
    ];
    let mut numbers: Vec<u64> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..4)
            .map(|thread_idx| {
                let store = stores[thread_idx % 2].clone();
                scope.spawn(move || {
                    (0..25)
                        .map(|_| {
                            store
                                .create_release(new_release("a", "prod"))
                                .expect("create")
                                .number
                                .get()
                        })
                        .collect::<Vec<u64>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|thread| thread.join().expect("thread"))
            .collect()
    });
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=100).collect::<Vec<u64>>());
}

#[test]
fn deployment_kinds_strategies_and_states_round_trip_as_their_names() {
    let store = store();
    store
        .create_release(new_release("a", "prod"))
        .expect("create release");
    for kind in DeploymentKind::ALL {
        for strategy in Strategy::ALL {
            let created = store
                .create_deployment(NewDeployment {
                    kind,
                    strategy,
                    ..new_deployment("a", "prod", 1)
                })
                .expect("create");
            let stored: (String, String, String) = store
                .connection()
                .query_row(
                    "SELECT kind, strategy, state FROM deployments WHERE id = ?1",
                    params![created.id.as_str()],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .expect("raw row");
            assert_eq!(
                stored,
                (
                    kind.as_str().to_owned(),
                    strategy.as_str().to_owned(),
                    "Pending".to_owned()
                )
            );
            let read = store.deployment(&created.id).expect("read");
            assert_eq!(read, Some(created));
        }
    }
    for state in DeploymentState::ALL {
        let created = store
            .create_deployment(new_deployment("a", "prod", 1))
            .expect("create");
        let moved = store
            .transition(&created.id, S::Pending, state, None, None)
            .expect("transition");
        assert_eq!(moved.state, state);
        let read = store
            .deployment(&created.id)
            .expect("read")
            .expect("exists");
        assert_eq!(read.state, state);
        let unfinished = store
            .unfinished_deployments()
            .expect("unfinished")
            .iter()
            .any(|deployment| deployment.id == created.id);
        assert_eq!(unfinished, !state.is_terminal(), "{state}");
    }
    let release = store
        .release("a", "prod", ReleaseNumber::new(1))
        .expect("read release");
    assert_eq!(
        release.map(|release| release.strategy),
        Some(Strategy::BlueGreen)
    );
}

#[test]
fn a_stored_name_no_enum_knows_is_a_read_error() {
    let store = store();
    store
        .create_release(new_release("a", "prod"))
        .expect("create release");
    let created = store
        .create_deployment(new_deployment("a", "prod", 1))
        .expect("create");
    store
        .connection()
        .execute(
            "UPDATE deployments SET state = 'Exploded' WHERE id = ?1",
            params![created.id.as_str()],
        )
        .expect("raw write");
    let error = store.deployment(&created.id).expect_err("unknown state");
    assert!(
        crate::report::chain(&error).contains("unknown deployment state `Exploded`"),
        "{}",
        crate::report::chain(&error)
    );
}
