//! The decision state machine under concurrency: several pending decisions,
//! from several gate instances, on one shared state, their steps answered in
//! any order, with conflicts, failures and writes whose answer is lost.
//! A model of what a fleet of hosts does to one store.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use proptest::prelude::*;
use sessiongate_core::{
    Answer, Backend, CredentialSet, ErrorCode, Gate, GateConfig, Kind, Kv, KvError, LIMITER_KEY,
    Level, LimitConfig, MemoryKv, Need, Outcome, Pending, Progress, Request, Sites, limiter_log,
};

const TOKEN: &str = "fus_MachineMachineMachineMachineMachine01234";
const N: u32 = 5;
const W_MS: u64 = 10_000;

fn gate() -> Gate {
    Gate::new(config()).unwrap()
}

fn config() -> GateConfig {
    GateConfig {
        credentials: CredentialSet::new(vec![sessiongate_core::fixtures::record(
            TOKEN,
            Kind::Token,
            "t",
            Sites::All,
            Level::Standard,
        )])
        .unwrap()
        .into(),
        limit: LimitConfig {
            requests: N,
            window_seconds: (W_MS / 1000) as u32,
        },
        backend: Backend::Upstream(None),
        ..Default::default()
    }
}

/// How the store, or the way to it, treats one step.
#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    /// The step is not performed; the driver reports a failure.
    Fail,
    /// A write is performed but its answer is lost (a timeout after the
    /// store committed): the driver reports a failure.
    LostAnswer,
    /// A write is not performed and reported as a conflict.
    Conflict,
}

fn fault() -> impl Strategy<Value = Fault> {
    prop_oneof![
        6 => Just(Fault::None),
        1 => Just(Fault::Fail),
        1 => Just(Fault::LostAnswer),
        1 => Just(Fault::Conflict),
    ]
}

/// Performs one step of `pending` on `kv`, as a host with `fault` would.
fn step<'g, 'r>(pending: Pending<'g, 'r>, kv: &mut MemoryKv, fault: Fault) -> Progress<'g, 'r> {
    let failed = || Answer::Failed(KvError("injected".into()));
    match (pending.need(), fault) {
        (Need::Read { .. }, Fault::Fail) => pending.resume(failed()),
        (Need::Read { key }, _) => {
            let entry = kv.get(key).unwrap();
            pending.resume(Answer::Value(entry))
        }
        (Need::Swap { .. } | Need::Create { .. }, Fault::Fail) => pending.resume(failed()),
        (Need::Swap { .. } | Need::Create { .. }, Fault::Conflict) => {
            pending.resume(Answer::Conflict)
        }
        (
            Need::Swap {
                key,
                version,
                value,
            },
            f,
        ) => {
            let written = kv.swap(key, version, value);
            match f {
                Fault::LostAnswer => pending.resume(failed()),
                _ => pending.resume(Answer::written(written)),
            }
        }
        (Need::Create { key, value }, f) => {
            let written = kv.create(key, value);
            match f {
                Fault::LostAnswer => pending.resume(failed()),
                _ => pending.resume(Answer::written(written)),
            }
        }
        (Need::Revoked { .. }, _) => pending.resume(Answer::Revoked(false)),
    }
}

fn max_in_any_window(times: &[u64]) -> usize {
    let mut sorted = times.to_vec();
    sorted.sort_unstable();
    (0..sorted.len())
        .map(|i| {
            let end = sorted[i] + W_MS;
            sorted[i..].iter().take_while(|&&t| t < end).count()
        })
        .max()
        .unwrap_or(0)
}

/// What a test does next.
#[derive(Debug, Clone)]
enum Action {
    /// A request arrives at gate `gate` after `advance` ms, its host's
    /// clock `late` ms behind; `valid`: with the good credential, else a
    /// wrong one from a client the guard counts.
    Arrive {
        gate: usize,
        advance: u64,
        late: u64,
        valid: bool,
    },
    /// One step of the `which`-th pending decision (modulo how many there are).
    Step { which: usize, fault: Fault },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        2 => (0usize..3, 0u64..3_000, 0u64..300, prop::bool::weighted(0.85))
            .prop_map(|(gate, advance, late, valid)| Action::Arrive { gate, advance, late, valid }),
        5 => (any::<usize>(), fault()).prop_map(|(which, fault)| Action::Step { which, fault }),
    ]
}

/// Keeps a decision that is still pending; records one that is done.
fn finish<'g, 'r>(
    progress: Progress<'g, 'r>,
    pending: &mut Vec<Pending<'g, 'r>>,
    kv: &MemoryKv,
    admitted: &mut Vec<u64>,
    outcomes: &mut Vec<Outcome>,
) {
    match progress {
        Progress::Pending(p) => pending.push(p),
        Progress::Done(d) => {
            if d.outcome == Outcome::Allowed {
                // The write that admitted it was the last to the log.
                let log = limiter_log::decode(kv.value(LIMITER_KEY)).unwrap();
                admitted.push(*log.last().unwrap());
            }
            outcomes.push(d.outcome);
        }
    }
}

/// Runs `actions`, then drives what is still pending to the end without
/// faults. Returns the time of every admission the decisions granted, and
/// every outcome.
fn run(actions: &[Action]) -> (Vec<u64>, Vec<Outcome>, MemoryKv) {
    let gates = [gate(), gate(), gate()];
    let good = format!("Bearer {TOKEN}");
    let bad = "Bearer fus_0000000000000000000000000000000000000000".to_owned();
    let good_values = [good.as_bytes()];
    let bad_values = [bad.as_bytes()];
    let mut kv = MemoryKv::default();
    let mut pending: Vec<Pending<'_, '_>> = Vec::new();
    let mut admitted = Vec::new();
    let mut outcomes = Vec::new();
    let mut clock = 1_800_000_000_000u64;
    let mut finish = |progress, pending: &mut Vec<_>, kv: &MemoryKv| {
        finish(progress, pending, kv, &mut admitted, &mut outcomes)
    };
    let request = |values| Request {
        method: "GET",
        target: "/v1/external/sessions/acme/s",
        authorization: values,
        client: Some("198.51.100.7:4000"),
    };
    let (good_request, bad_request) = (request(&good_values), request(&bad_values));
    for action in actions {
        match *action {
            Action::Arrive {
                gate,
                advance,
                late,
                valid,
            } => {
                clock += advance;
                let req = if valid { &good_request } else { &bad_request };
                let progress = gates[gate].start(req, clock - late);
                finish(progress, &mut pending, &kv);
            }
            Action::Step { which, fault } => {
                if pending.is_empty() {
                    continue;
                }
                let p = pending.swap_remove(which % pending.len());
                let progress = step(p, &mut kv, fault);
                finish(progress, &mut pending, &kv);
            }
        }
    }
    while let Some(p) = pending.pop() {
        let progress = step(p, &mut kv, Fault::None);
        finish(progress, &mut pending, &kv);
    }
    (admitted, outcomes, kv)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Never more than N admissions in any window of W, whatever the
    /// interleaving, the hosts' clocks, the conflicts and the failures,
    /// including writes that landed but whose answer was lost.
    #[test]
    fn never_more_than_n_in_any_window(actions in proptest::collection::vec(action(), 1..300)) {
        let (admitted, outcomes, kv) = run(&actions);
        prop_assert!(max_in_any_window(&admitted) <= N as usize, "{admitted:?}");
        // The log never holds more than the limit either.
        let log = limiter_log::decode(kv.value(LIMITER_KEY)).unwrap();
        prop_assert!(log.len() <= N as usize);
        for outcome in outcomes {
            prop_assert!(matches!(
                outcome,
                Outcome::Allowed
                    | Outcome::Denied(
                        ErrorCode::RateLimited
                            | ErrorCode::LimiterUnavailable
                            | ErrorCode::InvalidCredentials
                    )
            ), "{outcome:?}");
        }
    }

    /// With demand over the limit inside one window and no faults, the
    /// limit is reached exactly, whatever the interleaving of the
    /// decisions' steps: conflicts are retried, nobody is starved.
    #[test]
    fn concurrent_demand_reaches_the_limit_exactly(
        arrivals in proptest::collection::vec((0usize..3, 0u64..100), (N as usize + 1)..20),
        order in proptest::collection::vec(any::<usize>(), 0..400),
    ) {
        let mut actions: Vec<Action> = arrivals
            .iter()
            .map(|&(gate, advance)| Action::Arrive { gate, advance, late: 0, valid: true })
            .collect();
        // Steps interleaved after the arrivals, in any order.
        actions.extend(order.into_iter().map(|which| Action::Step { which, fault: Fault::None }));
        let (admitted, outcomes, _) = run(&actions);
        prop_assert_eq!(admitted.len(), N as usize);
        let refused = outcomes.iter().filter(|o| **o == Outcome::Denied(ErrorCode::RateLimited)).count();
        prop_assert_eq!(refused, arrivals.len() - N as usize);
    }
}

/// The first read of a decision is the guard's, and a wrong credential's
/// failure reuses it: the update is one write, not a read and a write.
#[test]
fn a_wrong_credential_costs_one_read_and_one_write() {
    let g = gate();
    let bad = "Bearer fus_0000000000000000000000000000000000000000";
    let values = [bad.as_bytes()];
    let req = Request {
        method: "GET",
        target: "/me",
        authorization: &values,
        client: Some("198.51.100.7:4000"),
    };
    let mut kv = MemoryKv::default();
    let mut needs = Vec::new();
    let mut progress = g.start(&req, 1_000);
    while let Progress::Pending(p) = progress {
        needs.push(
            format!("{:?}", p.need())
                .split(' ')
                .next()
                .unwrap()
                .to_owned(),
        );
        progress = step(p, &mut kv, Fault::None);
    }
    assert_eq!(needs, ["Read", "Create"]);
    let Progress::Done(d) = progress else {
        unreachable!()
    };
    assert_eq!(d.outcome, Outcome::Denied(ErrorCode::InvalidCredentials));
}

/// While the log is known full, a 429 reads nothing; once the oldest
/// admission expires, the gate reads again and admits.
#[test]
fn a_full_log_is_remembered_until_it_frees() {
    let g = gate();
    let good = format!("Bearer {TOKEN}");
    let values = [good.as_bytes()];
    let req = Request {
        method: "GET",
        target: "/v1/external/sessions/acme/s",
        authorization: &values,
        client: None,
    };
    let mut kv = MemoryKv::default();
    for t in 0..N as u64 {
        assert_eq!(g.decide(&req, t, &mut kv).outcome, Outcome::Allowed);
    }
    match g.start(&req, 5_000) {
        Progress::Done(d) => assert_eq!(d.outcome, Outcome::Denied(ErrorCode::RateLimited)),
        Progress::Pending(p) => panic!("a full log was read again: {:?}", p.need()),
    }
    assert!(matches!(g.start(&req, W_MS), Progress::Pending(_)));
    assert_eq!(g.decide(&req, W_MS, &mut kv).outcome, Outcome::Allowed);
}

/// A revocation list that cannot be asked fails closed, as the limiter
/// does: admitting could let a revoked credential through. With
/// `fail_open`, the decision goes on.
#[test]
fn an_unanswered_revocation_check_fails_closed_unless_fail_open() {
    let good = format!("Bearer {TOKEN}");
    let values = [good.as_bytes()];
    let req = Request {
        method: "GET",
        target: "/me",
        authorization: &values,
        client: None,
    };
    let outcome = |fail_open: bool| {
        let mut config = GateConfig {
            credentials: gate().credentials().clone().into(),
            fail_open,
            ..Default::default()
        };
        config.limit.requests = N;
        let g = Gate::new(config).unwrap().with_revocation_list();
        let Progress::Pending(p) = g.start(&req, 1_000) else {
            panic!("a gate with a revocation list asks it");
        };
        assert!(matches!(p.need(), Need::Revoked { .. }));
        match p.resume(Answer::Failed(KvError("down".into()))) {
            Progress::Done(d) => d.outcome,
            Progress::Pending(p) => panic!("/me needs nothing more: {:?}", p.need()),
        }
    };
    assert_eq!(
        outcome(false),
        Outcome::Denied(ErrorCode::LimiterUnavailable)
    );
    assert_eq!(outcome(true), Outcome::Allowed);
}

/// Two wrong credentials from one client at once, with one failure allowed:
/// both pass the guard's check before either is counted, and the count
/// decides. The first is told 401; the second finds the budget used up by
/// then and is held (429), so the client gets exactly its allowance.
#[test]
fn concurrent_failures_get_exactly_the_allowance() {
    let g = Gate::new(GateConfig {
        guard: sessiongate_core::GuardConfig {
            failures: 1,
            window_seconds: 60,
        },
        ..config()
    })
    .unwrap();
    let bad = "Bearer fus_0000000000000000000000000000000000000000";
    let values = [bad.as_bytes()];
    let req = Request {
        method: "GET",
        target: "/me",
        authorization: &values,
        client: Some("198.51.100.7:4000"),
    };
    let mut kv = MemoryKv::default();
    let (Progress::Pending(first), Progress::Pending(second)) =
        (g.start(&req, 1_000), g.start(&req, 1_000))
    else {
        panic!("both read the guard's bucket first");
    };
    // Both guard checks read the empty bucket.
    let first = step(first, &mut kv, Fault::None);
    let second = step(second, &mut kv, Fault::None);
    let finish = |mut progress: Progress<'_, '_>, kv: &mut MemoryKv| loop {
        match progress {
            Progress::Done(d) => break d.outcome,
            Progress::Pending(p) => progress = step(p, kv, Fault::None),
        }
    };
    assert_eq!(
        finish(first, &mut kv),
        Outcome::Denied(ErrorCode::InvalidCredentials)
    );
    assert_eq!(
        finish(second, &mut kv),
        Outcome::Denied(ErrorCode::RateLimited)
    );
}

/// A host that replays a decision (it cannot keep the `Pending` across
/// callbacks) follows the answers it recorded, even when another request
/// has since taught the gate that the window is full: the write it made is
/// an admission, and stays one.
#[test]
fn a_replay_follows_its_answers_past_the_memo() {
    let g = gate();
    let auth = format!("Bearer {TOKEN}");
    let values = [auth.as_bytes()];
    let req = Request {
        method: "GET",
        target: "/v1/external/sessions/acme/s",
        authorization: &values,
        client: None,
    };
    let mut kv = MemoryKv::default();
    // One decision, step by step, its answers recorded.
    let mut answers = Vec::new();
    let mut progress = g.start(&req, 1_000);
    while let Progress::Pending(p) = progress {
        let answer = p.need().perform(&mut kv).into_owned();
        answers.push(answer.clone());
        progress = p.resume(answer);
    }
    let Progress::Done(first) = progress else {
        unreachable!()
    };
    assert_eq!(first.outcome, Outcome::Allowed);
    // The rest of the window fills; one more is refused, and remembered.
    for _ in 1..N {
        assert_eq!(g.decide(&req, 1_000, &mut kv).outcome, Outcome::Allowed);
    }
    let refused = g.decide(&req, 1_000, &mut kv);
    assert_eq!(refused.outcome, Outcome::Denied(ErrorCode::RateLimited));
    assert!(
        matches!(g.start(&req, 1_000), Progress::Done(_)),
        "the memo answers"
    );
    // The replay of the first decision is still the admission it was.
    let Progress::Done(replayed) = g.replay(&req, 1_000, &answers) else {
        panic!("the answers finish it");
    };
    assert_eq!(replayed.outcome, Outcome::Allowed);
}
