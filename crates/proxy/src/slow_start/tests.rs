//! Unit tests of `slow_start`: the states a ramp applies over time, without a proxy.

use std::net::SocketAddr;

use super::*;
use crate::desired::DesiredInstance;

fn instance(id: &str, port: u16) -> DesiredInstance {
    DesiredInstance {
        id: id.to_owned(),
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        ready: true,
    }
}

fn pool(release: &str, weight: u8, ids: &[(&str, u16)]) -> DesiredPool {
    DesiredPool {
        release: release.to_owned(),
        weight,
        instances: ids.iter().map(|(id, port)| instance(id, *port)).collect(),
    }
}

fn state(slow_start_ms: u64, pools: Vec<DesiredPool>) -> DesiredState {
    DesiredState {
        routes: vec![DesiredRoute {
            slow_start_ms,
            pools,
            ..DesiredRoute::new("web")
        }],
    }
}

/// `(release, weight, instance ids)` of the route's pools, sorted by release.
fn pools_of(state: &DesiredState) -> Vec<(String, u8, Vec<String>)> {
    let mut pools: Vec<_> = state.routes[0]
        .pools
        .iter()
        .map(|pool| {
            (
                pool.release.clone(),
                pool.weight,
                pool.instances.iter().map(|i| i.id.clone()).collect(),
            )
        })
        .collect();
    pools.sort();
    pools
}

fn v1() -> DesiredState {
    state(1_000, vec![pool("r1", 100, &[("a", 1), ("b", 2)])])
}

fn v2() -> DesiredState {
    state(1_000, vec![pool("r2", 100, &[("c", 3), ("d", 4)])])
}

#[test]
fn a_release_weighted_in_on_a_serving_route_takes_its_share_in_ten_steps() {
    let start = Instant::now();
    let mut slow = SlowStart::new(Some(v1()));
    let first = slow.receive(v2(), start);
    assert!(slow.ramping());
    assert_eq!(
        pools_of(&first),
        vec![
            ("r1".to_owned(), 90, vec!["a".to_owned(), "b".to_owned()]),
            ("r2".to_owned(), 10, vec!["c".to_owned(), "d".to_owned()]),
        ]
    );
    slow.applied(first, start);
    let mut shares = Vec::new();
    let mut now = start;
    while let Some(due) = slow.next_step(now) {
        assert_eq!(due - now, Duration::from_millis(100), "steps of a tenth");
        now = due;
        let step = slow.current(now);
        shares.push(
            pools_of(&step)
                .iter()
                .map(|(release, weight, _)| format!("{release}:{weight}"))
                .collect::<Vec<_>>()
                .join(" "),
        );
        slow.applied(step, now);
    }
    assert_eq!(
        shares,
        [
            "r1:80 r2:20",
            "r1:70 r2:30",
            "r1:60 r2:40",
            "r1:50 r2:50",
            "r1:40 r2:60",
            "r1:30 r2:70",
            "r1:20 r2:80",
            "r1:10 r2:90",
            "r2:100",
        ]
    );
    assert!(!slow.ramping());
    assert_eq!(now - start, Duration::from_millis(900));
}

/// The first step goes out after the new instances' warm (up to `warm::WARM_BOUND`, as long as this
/// ramp): the ten steps count from there. Counted from the state's arrival, a warm of 800 ms left the
/// next look at 900 ms to jump from the first step to the ninth (seen as the process test's "too few
/// steps" on a loaded machine).
#[test]
fn a_ramps_steps_count_from_its_first_step_applied_not_from_the_states_arrival() {
    let arrived = Instant::now();
    let mut slow = SlowStart::new(Some(v1()));
    let first = slow.receive(v2(), arrived);
    let applied_at = arrived + Duration::from_millis(800);
    slow.applied(first.clone(), applied_at);
    assert_eq!(
        slow.next_step(applied_at),
        Some(applied_at + Duration::from_millis(100))
    );
    let shortly = applied_at + Duration::from_millis(99);
    assert_eq!(slow.current(shortly), first, "still the first step");
    let second = slow.current(applied_at + Duration::from_millis(100));
    assert_eq!(
        pools_of(&second)
            .iter()
            .map(|(release, weight, _)| (release.as_str(), *weight))
            .collect::<Vec<_>>(),
        [("r1", 80), ("r2", 20)]
    );
    slow.applied(second, applied_at + Duration::from_millis(100));
    assert!(
        slow.ramping(),
        "the ramp runs until 900 ms after its first step"
    );
    assert_eq!(slow.current(applied_at + Duration::from_millis(900)), v2());
    assert!(!slow.ramping());
    // A state with the same weights later carries the ramp on without starting its clock again.
    let mut slow = SlowStart::new(Some(v1()));
    let first = slow.receive(v2(), arrived);
    slow.applied(first, arrived);
    let again_at = arrived + Duration::from_millis(450);
    let carried = slow.receive(v2(), again_at);
    slow.applied(carried.clone(), again_at + Duration::from_millis(300));
    assert_eq!(carried, slow.current(again_at));
    assert_eq!(
        slow.next_step(again_at),
        Some(arrived + Duration::from_millis(500))
    );
}

#[test]
fn no_ramp_for_a_first_release_a_zero_setting_or_a_weight_change_among_serving_releases() {
    let now = Instant::now();
    // A first release: nothing serves yet.
    let mut slow = SlowStart::new(None);
    assert_eq!(slow.receive(v1(), now), v1());
    assert!(!slow.ramping());
    // Slow start off on the route.
    let mut slow = SlowStart::new(Some(v1()));
    let off = state(0, v2().routes[0].pools.clone());
    assert_eq!(slow.receive(off.clone(), now), off);
    assert!(!slow.ramping());
    // A canary's next step: both releases serve already.
    let both = |w1, w2| {
        state(
            1_000,
            vec![
                pool("r1", w1, &[("a", 1), ("b", 2)]),
                pool("r2", w2, &[("c", 3)]),
            ],
        )
    };
    let mut slow = SlowStart::new(Some(both(90, 10)));
    assert_eq!(slow.receive(both(50, 50), now), both(50, 50));
    assert!(!slow.ramping());
}

#[test]
fn the_same_weights_again_carry_the_ramp_on_and_other_weights_end_it_at_once() {
    let start = Instant::now();
    let mut slow = SlowStart::new(Some(v1()));
    let first = slow.receive(v2(), start);
    slow.applied(first, start);
    let at = start + Duration::from_millis(350);
    let step = slow.current(at);
    slow.applied(step, at);
    // The agent sends the same target again (as after a switch): the ramp goes on where it was.
    let again = slow.receive(v2(), at);
    assert!(slow.ramping());
    assert_eq!(
        pools_of(&again)
            .iter()
            .map(|(r, w, _)| (r.as_str(), *w))
            .collect::<Vec<_>>(),
        [("r1", 60), ("r2", 40)]
    );
    slow.applied(again, at);
    // A rollback: r1 at 100 again. At once, and r2 is left out (drained).
    let back = slow.receive(v1(), at);
    assert!(!slow.ramping());
    assert_eq!(back, v1());
}

#[test]
fn an_instance_that_fails_health_during_the_ramp_leaves_at_once_and_the_ramp_goes_on() {
    let start = Instant::now();
    let mut slow = SlowStart::new(Some(v1()));
    let first = slow.receive(v2(), start);
    slow.applied(first, start);
    // `d` failed its health check: the agent leaves it out, weights unchanged.
    let without_d = state(1_000, vec![pool("r2", 100, &[("c", 3)])]);
    let at = start + Duration::from_millis(500);
    let now_state = slow.receive(without_d.clone(), at);
    assert!(slow.ramping());
    assert_eq!(
        pools_of(&now_state),
        vec![
            ("r1".to_owned(), 40, vec!["a".to_owned(), "b".to_owned()]),
            ("r2".to_owned(), 60, vec!["c".to_owned()]),
        ]
    );
    // Every instance of the new release gone: the weights changed, the state applies as it is.
    let none = state(1_000, vec![pool("r2", 100, &[])]);
    assert_eq!(slow.receive(none.clone(), at), none);
    assert!(!slow.ramping());
}

#[test]
fn a_ramp_past_its_end_when_the_state_comes_again_is_over() {
    let start = Instant::now();
    let mut slow = SlowStart::new(Some(v1()));
    let first = slow.receive(v2(), start);
    slow.applied(first, start);
    // No step was applied (say the proxy was busy); the state comes again after the ramp's time.
    let late = slow.receive(v2(), start + Duration::from_secs(2));
    assert_eq!(late, v2());
    assert!(!slow.ramping());
    assert_eq!(slow.end_ramps(), Some(v2()));
}
