//! Edge controls survive a reopen of the store; all off leaves no row.

use super::*;

fn maintenance() -> MaintenanceMode {
    MaintenanceMode {
        page_html: "<p>down</p>".to_owned(),
        message: Some("back at 3".to_owned()),
        custom_page: false,
        allow: vec!["203.0.113.0/24".to_owned()],
        retry_after_s: 60,
        since_ms: 1,
        by: "ops".to_owned(),
    }
}

#[test]
fn edge_controls_outlive_a_reopen_and_clear_to_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.db");
    let on = EnvEdge {
        maintenance: Some(maintenance()),
        pause: Some(Pause {
            until_ms: 9_000,
            since_ms: 1_000,
        }),
    };
    {
        let store = Store::open(&path).expect("store");
        assert_eq!(
            store.env_edge("shop", "production").expect("read"),
            EnvEdge::default()
        );
        store
            .set_env_edge("shop", "production", &on, 1)
            .expect("write");
        let off_pause = EnvEdge {
            pause: None,
            ..on.clone()
        };
        store
            .set_env_edge("shop", "staging", &off_pause, 1)
            .expect("write");
    }
    let store = Store::open(&path).expect("reopen");
    assert_eq!(store.env_edge("shop", "production").expect("read"), on);
    let all = store.env_edges().expect("read all");
    assert_eq!(all.len(), 2);
    assert_eq!(all[&("shop".to_owned(), "staging".to_owned())].pause, None);
    store
        .set_env_edge("shop", "production", &EnvEdge::default(), 2)
        .expect("clear");
    assert_eq!(store.env_edges().expect("read all").len(), 1);
}
