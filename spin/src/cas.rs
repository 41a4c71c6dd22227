//! The gate's [`Kv`] (read with a version, write if the version still
//! holds, create if absent) on the stores Spin ships, through
//! `wasi:keyvalue`'s handle-based compare-and-swap and `increment`.
//!
//! It does not take a store's swap at its word, because Spin's stores do not
//! all keep it (read in Spin's `crates/key-value-{spin,redis}/src/store.rs`):
//!
//! - **SQLite** (the default): a swap of a present key is an `UPDATE … WHERE
//!   value = old` (a compare of values, not versions), and a swap of a key
//!   that was absent is an insert-or-overwrite, so two writers who both saw
//!   it absent both "win".
//! - **Redis**: `WATCH`, `GET`, then `MULTI SET EXEC` and `UNWATCH <key>`.
//!   Redis refuses that `UNWATCH` (it takes no arguments) and Spin reports
//!   the error as a failed swap, so every swap "fails", written or not; and
//!   were that mended, an `EXEC` aborted by the `WATCH` is a nil reply that
//!   Spin's client (redis-rs) reads as success. The report says nothing.
//!
//! What this relies on instead, on every store: `increment` is atomic
//! (SQLite: a transaction on Spin's one connection; Redis: `INCRBY`); a
//! swap of a present key never overwrites a value other than the one its
//! handle read (SQLite compares; Redis's `WATCH` aborts); a read sees the
//! writes before it. Not on what a swap reports.
//!
//! - Every write is a [`Record`] with a fresh tag, so values never repeat
//!   (a value compare is as good as a version) and a writer learns what its
//!   swap did by reading the key back: its write landed if the record there
//!   is it or was built on it, however many writes came between (a record
//!   names every write of its horizon). A read-back too late to tell is a
//!   store error (503), never a guess either way.
//! - A key's first value is written only by the holder of a claim: a round
//!   of [`ROUND_MS`] whose counter (`<key>.claim.<round>`) it incremented
//!   first, in a round that follows one nobody claimed in. So two creators
//!   of one key are at least a round apart: a creator has a round to write,
//!   and one that died holding a claim delays the key by two rounds at most.
//!
//! Generic over [`CasBucket`] so the protocol is tested natively against
//! models of each store; the component plugs the real imports in.

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;

use sessiongate_core::{Entry, Kv, KvError, Version};

use crate::record::{Landing, Record, Tags};

/// How long a claim to create a key lasts: a creator must write within it,
/// and instance clocks must agree within it.
pub const ROUND_MS: u64 = 5_000;

/// A key-value bucket with `wasi:keyvalue`'s operations.
pub trait CasBucket {
    /// What `swap` needs to know the read it follows.
    type Handle;
    /// Starts a CAS on `key`: a handle and the value it saw.
    fn begin(&mut self, key: &str) -> Result<(Self::Handle, Option<Vec<u8>>), String>;
    /// Writes `value` if the key still holds what `handle` saw, and says
    /// whether it did: a report that is not trusted either way. `Err` is a
    /// store that could not be asked.
    fn swap(&mut self, handle: Self::Handle, value: &[u8]) -> Result<bool, String>;
    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, String>;
    /// Adds `delta` to the counter at `key` (absent: 0), atomically.
    fn increment(&mut self, key: &str, delta: i64) -> Result<i64, String>;
    fn delete(&mut self, key: &str) -> Result<(), String>;
    /// Lets other instances run a moment (a creator, to finish).
    fn pause(&mut self) {}
}

/// How often a request that finds a key being created looks again before it
/// gives up this attempt (the gate makes several).
const CREATION_LOOKS: usize = 10;

/// An open CAS handle: the version number it was handed out as, and the
/// stored bytes its read found (`None`: absent).
struct Open<H> {
    version: Version,
    handle: H,
    stored: Option<Vec<u8>>,
}

/// [`Kv`] over a [`CasBucket`] for one request at `now_ms`: each `get`
/// opens a CAS handle and hands out a fresh version number naming it; a
/// swap with that number goes through the handle. A swap with any other
/// number is a conflict, so a stale read can never write.
pub struct CasKv<'t, B: CasBucket> {
    bucket: B,
    open: HashMap<String, Open<B::Handle>>,
    issued: Version,
    now_ms: u64,
    tags: &'t mut Tags,
}

impl<'t, B: CasBucket> CasKv<'t, B> {
    pub fn new(bucket: B, now_ms: u64, tags: &'t mut Tags) -> Self {
        CasKv {
            bucket,
            open: HashMap::new(),
            issued: 0,
            now_ms,
            tags,
        }
    }

    /// Opens a CAS handle on `key` under a new version number.
    fn open(&mut self, key: &str) -> Result<Open<B::Handle>, KvError> {
        let (handle, stored) = self.bucket.begin(key).map_err(KvError)?;
        self.issued += 1;
        Ok(Open {
            version: self.issued,
            handle,
            stored,
        })
    }

    /// Writes `value` through `open`'s handle as a record built on what it
    /// read, and reads it back: whether it landed, whatever the store said.
    fn write(&mut self, key: &str, open: Open<B::Handle>, value: &[u8]) -> Result<bool, KvError> {
        let tag = self.tags.draw();
        let base = open.stored.as_deref().map_or(Record::NONE, Record::parse);
        let (record, write) = base.next(tag, self.now_ms, value);
        let _reported = self.bucket.swap(open.handle, &record).map_err(KvError)?;
        let now = self.bucket.get(key).map_err(KvError)?;
        match now
            .as_deref()
            .map_or(Landing::Lost, |stored| Record::parse(stored).landing(write))
        {
            Landing::Landed => Ok(true),
            Landing::Lost => Ok(false),
            Landing::Unknown => Err(KvError(format!(
                "cannot tell whether a write to {key} landed: more writes followed it \
                 before it was read back than its record names"
            ))),
        }
    }

    /// Claims the right to create `key` in this round: nobody claimed in the
    /// round before, and this is the round's first claim.
    fn claim(&mut self, key: &str) -> Result<Option<String>, KvError> {
        let round = self.now_ms / ROUND_MS;
        let previous = format!("{key}.claim.{}", round.wrapping_sub(1));
        if self.bucket.get(&previous).map_err(KvError)?.is_some() {
            return Ok(None);
        }
        let claim = format!("{key}.claim.{round}");
        let first = self.bucket.increment(&claim, 1).map_err(KvError)? == 1;
        Ok(first.then_some(claim))
    }
}

impl<B: CasBucket> Kv for CasKv<'_, B> {
    fn get(&mut self, key: &str) -> Result<Option<Entry<'_>>, KvError> {
        let open = self.open(key)?;
        let open = match self.open.entry(key.to_owned()) {
            MapEntry::Occupied(mut held) => {
                held.insert(open);
                held.into_mut()
            }
            MapEntry::Vacant(free) => free.insert(open),
        };
        Ok(open.stored.as_deref().map(|stored| Entry {
            value: Cow::Borrowed(Record::parse(stored).value),
            version: open.version,
        }))
    }

    fn swap(&mut self, key: &str, version: Version, value: &[u8]) -> Result<bool, KvError> {
        match self.open.remove(key) {
            Some(open) if open.version == version && open.stored.is_some() => {
                self.write(key, open, value)
            }
            _ => Ok(false),
        }
    }

    /// Only under a claim, and only if the key is still absent once claimed.
    fn create(&mut self, key: &str, value: &[u8]) -> Result<bool, KvError> {
        self.open.remove(key);
        let Some(claim) = self.claim(key)? else {
            // Someone else is creating it: a moment for them to finish (on a
            // host whose store calls never yield, a burst of requests could
            // otherwise spend every attempt before the creator writes).
            for _ in 0..CREATION_LOOKS {
                self.bucket.pause();
                if self.bucket.get(key).map_err(KvError)?.is_some() {
                    break;
                }
            }
            return Ok(false);
        };
        let created = match self.open(key) {
            Ok(open) if open.stored.is_none() => self.write(key, open, value),
            Ok(_) => Ok(false),
            Err(e) => Err(e),
        };
        // The claim has done its work either way; a creator after this one
        // finds the key (or, if this write failed, may try).
        let _ = self.bucket.delete(&claim);
        created
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::{Arc, Condvar, Mutex, MutexGuard};

    use proptest::prelude::*;
    use sessiongate_core::{
        Backend, ErrorCode, Gate, GateConfig, GuardConfig, LimitConfig, Outcome, Request,
    };

    use super::*;

    /// How a modelled store keeps `wasi:keyvalue`'s swap.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Semantics {
        /// Versions; an absent key stays absent until one writer creates it.
        Strict,
        /// Spin's SQLite store: values compared; absent-key swap overwrites.
        SpinSqlite,
        /// Spin's Redis store: strict, but what a swap reports is noise (on a
        /// real Redis, always failure; with `UNWATCH` mended, always success).
        SpinRedis,
    }

    const ALL: [Semantics; 3] = [
        Semantics::Strict,
        Semantics::SpinSqlite,
        Semantics::SpinRedis,
    ];

    /// Each key's value and how many writes it has seen.
    type Entries = HashMap<String, (Vec<u8>, u64)>;

    /// The store, shared by every instance, and whose turn it is: each
    /// operation waits for its instance's turn, so a seed fixes the order
    /// in which concurrent instances' operations interleave.
    struct World {
        semantics: Semantics,
        entries: Mutex<(Entries, Turns)>,
        turn: Condvar,
    }

    struct Turns {
        current: usize,
        done: Vec<bool>,
        pick: Tags,
        schedule: Schedule,
    }

    /// How the next turn is picked from a seed.
    #[derive(Debug, Clone, Copy)]
    struct Schedule {
        seed: u64,
        /// Fair: any running instance, each turn. In runs: the instance
        /// whose turn it is mostly keeps it, so one request often runs to
        /// its end while another waits between two of its calls (as a
        /// request does on Spin's SQLite store, its calls queued on one
        /// connection behind a burst of others).
        in_runs: bool,
    }

    impl Schedule {
        fn fair(seed: u64) -> Schedule {
            Schedule {
                seed,
                in_runs: false,
            }
        }
    }

    impl Turns {
        fn advance(&mut self) {
            let keep = self.schedule.in_runs && !self.pick.draw().is_multiple_of(8);
            if keep && !self.done[self.current] {
                return;
            }
            let alive: Vec<usize> = (0..self.done.len()).filter(|i| !self.done[*i]).collect();
            if !alive.is_empty() {
                self.current = alive[(self.pick.draw() % alive.len() as u64) as usize];
            }
        }
    }

    impl World {
        fn new(semantics: Semantics, instances: usize, schedule: Schedule) -> Arc<World> {
            let mut turns = Turns {
                current: 0,
                done: vec![false; instances],
                pick: Tags::new(schedule.seed),
                schedule,
            };
            turns.advance();
            Arc::new(World {
                semantics,
                entries: Mutex::new((Entries::new(), turns)),
                turn: Condvar::new(),
            })
        }

        /// Runs `op` on the store in instance `me`'s turn.
        fn step<T>(&self, me: usize, op: impl FnOnce(&mut Entries) -> T) -> T {
            let mut guard = self.entries.lock().unwrap();
            while guard.1.current != me {
                guard = self.turn.wait(guard).unwrap();
            }
            let out = op(&mut guard.0);
            self.pass(guard);
            out
        }

        fn pass(&self, mut guard: MutexGuard<'_, (Entries, Turns)>) {
            guard.1.advance();
            drop(guard);
            self.turn.notify_all();
        }

        fn finish(&self, me: usize) {
            let mut guard = self.entries.lock().unwrap();
            guard.1.done[me] = true;
            self.pass(guard);
        }
    }

    /// One instance's view of the world.
    struct Bucket {
        world: Arc<World>,
        me: usize,
    }

    /// What a handle saw: the value and the key's write count.
    type Seen = (String, Option<Vec<u8>>, u64);

    impl CasBucket for Bucket {
        type Handle = Seen;

        fn begin(&mut self, key: &str) -> Result<(Seen, Option<Vec<u8>>), String> {
            self.world.step(self.me, |e| {
                let (value, writes) = e.get(key).map_or((None, 0), |(v, w)| (Some(v.clone()), *w));
                Ok(((key.to_owned(), value.clone(), writes), value))
            })
        }

        fn swap(&mut self, (key, seen, writes): Seen, value: &[u8]) -> Result<bool, String> {
            let semantics = self.world.semantics;
            // A coin the write's random tag throws.
            let noise = value.iter().fold(0u8, |h, b| h.rotate_left(3) ^ b) & 1 == 1;
            self.world.step(self.me, |e| {
                let current = e.get(&key).cloned();
                let wins = match semantics {
                    Semantics::Strict | Semantics::SpinRedis => {
                        current.as_ref().map_or(0, |(_, w)| *w) == writes
                    }
                    Semantics::SpinSqlite => match &seen {
                        None => true,
                        Some(old) => current.as_ref().is_some_and(|(v, _)| v == old),
                    },
                };
                if wins {
                    let writes = current.map_or(0, |(_, w)| w) + 1;
                    e.insert(key, (value.to_vec(), writes));
                }
                Ok(match semantics {
                    Semantics::SpinRedis => noise,
                    _ => wins,
                })
            })
        }

        fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, String> {
            self.world
                .step(self.me, |e| Ok(e.get(key).map(|(v, _)| v.clone())))
        }

        fn increment(&mut self, key: &str, delta: i64) -> Result<i64, String> {
            self.world.step(self.me, |e| {
                let (value, writes) = e
                    .get(key)
                    .cloned()
                    .unwrap_or((0i64.to_le_bytes().to_vec(), 0));
                let bytes: [u8; 8] = value
                    .try_into()
                    .map_err(|_| format!("{key}: not a counter"))?;
                let next = i64::from_le_bytes(bytes) + delta;
                e.insert(key.to_owned(), (next.to_le_bytes().to_vec(), writes + 1));
                Ok(next)
            })
        }

        fn delete(&mut self, key: &str) -> Result<(), String> {
            self.world.step(self.me, |e| {
                e.remove(key);
                Ok(())
            })
        }
    }

    /// The adapter before claims and records: a create is a swap through
    /// the handle that saw the key absent, and a swap's word is taken.
    struct Trusting(Bucket, HashMap<String, (Version, Seen)>, Version);

    impl Kv for Trusting {
        fn get(&mut self, key: &str) -> Result<Option<Entry<'_>>, KvError> {
            let (seen, value) = self.0.begin(key).map_err(KvError)?;
            self.2 += 1;
            self.1.insert(key.to_owned(), (self.2, seen));
            Ok(value.map(|v| Entry {
                value: Cow::Owned(v),
                version: self.2,
            }))
        }
        fn swap(&mut self, key: &str, version: Version, value: &[u8]) -> Result<bool, KvError> {
            match self.1.remove(key) {
                Some((v, seen)) if v == version => self.0.swap(seen, value).map_err(KvError),
                _ => Ok(false),
            }
        }
        fn create(&mut self, key: &str, value: &[u8]) -> Result<bool, KvError> {
            match self.1.remove(key) {
                Some((_, seen)) if seen.1.is_none() => self.0.swap(seen, value).map_err(KvError),
                _ => Ok(false),
            }
        }
    }

    const TOKEN: &str = "fus_0123456789012345678901234567890123456789";
    const NOW: u64 = 1_000_000;

    fn gate(requests: u32, failures: u32) -> Gate {
        Gate::new(GateConfig {
            credentials: sessiongate_core::fixtures::token_set(TOKEN, "t")
                .unwrap()
                .into(),
            limit: LimitConfig {
                requests,
                window_seconds: 60,
            },
            guard: GuardConfig {
                failures,
                window_seconds: 60,
            },
            backend: Backend::Stub,
            ..Default::default()
        })
        .unwrap()
    }

    fn request<'a>(auth: &'a [&'a [u8]], client: Option<&'a str>) -> Request<'a> {
        Request {
            method: "GET",
            target: "/v1/external/sessions/acme/s",
            authorization: auth,
            client,
        }
    }

    /// `instances` instances, each deciding `each` requests at once on one
    /// fresh store; the outcomes of all of them.
    fn run(
        semantics: Semantics,
        schedule: Schedule,
        instances: usize,
        each: usize,
        gate: impl Fn() -> Gate + Sync,
        trusting: bool,
        token: &str,
    ) -> Vec<Outcome> {
        let world = World::new(semantics, instances, schedule);
        let seed = schedule.seed;
        let auth = format!("Bearer {token}");
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..instances)
                .map(|me| {
                    let world = world.clone();
                    let (gate, auth) = (gate(), auth.clone());
                    s.spawn(move || {
                        let values = [auth.as_bytes()];
                        let req = request(&values, Some("203.0.113.9"));
                        let mut tags = Tags::new(seed ^ (me as u64) << 32);
                        let mut outcomes = Vec::new();
                        for i in 0..each {
                            let bucket = Bucket {
                                world: world.clone(),
                                me,
                            };
                            let now = NOW + i as u64;
                            let outcome = if trusting {
                                let mut kv = Trusting(bucket, HashMap::new(), 0);
                                gate.decide(&req, now, &mut kv).outcome
                            } else {
                                let mut kv = CasKv::new(bucket, now, &mut tags);
                                gate.decide(&req, now, &mut kv).outcome
                            };
                            outcomes.push(outcome);
                        }
                        world.finish(me);
                        outcomes
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        })
    }

    fn admitted(outcomes: &[Outcome]) -> usize {
        outcomes.iter().filter(|o| **o == Outcome::Allowed).count()
    }

    fn refused_as(outcomes: &[Outcome], code: ErrorCode) -> usize {
        outcomes
            .iter()
            .filter(|o| **o == Outcome::Denied(code))
            .count()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Demand over the limit on a fresh store, any interleaving, every
        /// store's semantics: exactly the limit is admitted.
        #[test]
        fn a_fresh_store_admits_exactly_the_limit(
            seed: u64,
            instances in 2usize..7,
            limit in 1u32..8,
        ) {
            let each = limit as usize / instances + 2;
            for semantics in ALL {
                let outcomes = run(semantics, Schedule::fair(seed), instances, each, || gate(limit, 0), false, TOKEN);
                prop_assert_eq!(admitted(&outcomes), limit as usize, "{:?}: {:?}", semantics, outcomes);
            }
        }

        /// Wrong credentials from one client at once on a fresh store: it is
        /// told 401 exactly `failures` times, then held.
        #[test]
        fn a_fresh_store_counts_every_failure(seed: u64, instances in 2usize..6, failures in 1u32..6) {
            let each = failures as usize / instances + 2;
            let wrong = "fus_9999999999999999999999999999999999999999";
            for semantics in ALL {
                let outcomes = run(semantics, Schedule::fair(seed), instances, each, || gate(100, failures), false, wrong);
                prop_assert_eq!(
                    refused_as(&outcomes, ErrorCode::InvalidCredentials),
                    failures as usize,
                    "{:?}: {:?}", semantics, outcomes
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(6))]

        /// Real Spin's shape: many more concurrent requests than the limit,
        /// and a limit above the 16 writes a record once named, so a
        /// request's read-back can come after more writes than that.
        #[test]
        fn a_burst_over_a_limit_of_twenty_admits_exactly_twenty(seed: u64) {
            for semantics in ALL {
                let outcomes = run(semantics, Schedule { seed, in_runs: true }, 60, 1, || gate(20, 0), false, TOKEN);
                prop_assert_eq!(admitted(&outcomes), 20, "{:?}: {:?}", semantics, outcomes);
            }
        }
    }

    /// The model tells the stores apart: taking the swap at its word is
    /// exact on the strict store only. On Spin's SQLite semantics racing
    /// creators over-admit; on its Redis semantics a write reported lost is
    /// retried on top of itself (fewer admitted) and a lost one reported won
    /// is admitted (more).
    #[test]
    fn trusting_the_swap_is_exact_only_on_a_strict_store() {
        for semantics in ALL {
            let counts: BTreeSet<usize> = (0..64)
                .map(|seed| {
                    admitted(&run(
                        semantics,
                        Schedule::fair(seed),
                        5,
                        3,
                        || gate(4, 0),
                        true,
                        TOKEN,
                    ))
                })
                .collect();
            match semantics {
                Semantics::Strict => assert_eq!(counts, BTreeSet::from([4]), "strict"),
                Semantics::SpinSqlite => {
                    assert!(counts.iter().any(|n| *n > 4), "SQLite: {counts:?}")
                }
                Semantics::SpinRedis => {
                    assert!(counts.iter().any(|n| *n != 4), "Redis: {counts:?}")
                }
            }
        }
    }

    /// A bucket whose next read after a swap comes only once `overtake`
    /// has run: other instances' writes landing between a write and its
    /// read-back, as on Spin's SQLite store, where every request's calls
    /// queue on one connection and a burst can put any number of them
    /// between one request's swap and its read.
    struct Overtaken<'o> {
        bucket: Bucket,
        swapped: bool,
        overtake: Option<Box<dyn FnOnce() + 'o>>,
    }

    impl CasBucket for Overtaken<'_> {
        type Handle = Seen;
        fn begin(&mut self, key: &str) -> Result<(Seen, Option<Vec<u8>>), String> {
            self.bucket.begin(key)
        }
        fn swap(&mut self, seen: Seen, value: &[u8]) -> Result<bool, String> {
            self.swapped = true;
            self.bucket.swap(seen, value)
        }
        fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, String> {
            if self.swapped
                && let Some(overtake) = self.overtake.take()
            {
                overtake();
            }
            self.bucket.get(key)
        }
        fn increment(&mut self, key: &str, delta: i64) -> Result<i64, String> {
            self.bucket.increment(key, delta)
        }
        fn delete(&mut self, key: &str) -> Result<(), String> {
            self.bucket.delete(key)
        }
    }

    /// Real Spin's fault, reproduced: one request's admission lands, then
    /// more admissions than a record once named (16) land before its
    /// read-back. Its write is in the log: it must be told so, not retry
    /// into a full log and answer 429.
    #[test]
    fn a_write_overtaken_by_any_number_of_writes_before_its_read_back_landed() {
        for semantics in ALL {
            for overtakers in [1usize, 15, 16, 17, 19, 40, 200] {
                let limit = overtakers as u32 + 2;
                let world = World::new(semantics, 1, Schedule::fair(0));
                let gate = gate(limit, 0);
                let auth = format!("Bearer {TOKEN}");
                let values = [auth.as_bytes()];
                let req = request(&values, Some("203.0.113.9"));
                let bucket = || Bucket {
                    world: world.clone(),
                    me: 0,
                };
                let admit = |now: u64, seed: u64| {
                    let mut tags = Tags::new(seed);
                    let mut kv = CasKv::new(bucket(), now, &mut tags);
                    gate.decide(&req, now, &mut kv).outcome
                };
                // The key exists before the burst.
                assert_eq!(admit(NOW, 1), Outcome::Allowed);
                let overtaking = std::cell::RefCell::new(Vec::new());
                let overtaken = Overtaken {
                    bucket: bucket(),
                    swapped: false,
                    overtake: Some(Box::new(|| {
                        for i in 0..overtakers {
                            let outcome = admit(NOW + 2 + i as u64, 100 + i as u64);
                            overtaking.borrow_mut().push(outcome);
                        }
                    })),
                };
                let mut tags = Tags::new(2);
                let mut kv = CasKv::new(overtaken, NOW + 1, &mut tags);
                let outcome = gate.decide(&req, NOW + 1, &mut kv).outcome;
                assert_eq!(
                    outcome,
                    Outcome::Allowed,
                    "{semantics:?}, overtaken by {overtakers}"
                );
                assert_eq!(admitted(&overtaking.borrow()), overtakers, "{semantics:?}");
                // Every admission is in the log, so it is full now.
                assert_eq!(
                    admit(NOW + 1_000, 7),
                    Outcome::Denied(ErrorCode::RateLimited),
                    "{semantics:?}"
                );
            }
        }
    }

    /// More writes between a write and its read-back than its record
    /// names (thousands in a moment): the gate is told the store failed,
    /// and answers 503, neither admitting nor refusing on a guess.
    #[test]
    fn a_read_back_too_late_to_tell_is_a_store_error() {
        let world = World::new(Semantics::SpinSqlite, 1, Schedule::fair(0));
        let bucket = || Bucket {
            world: world.clone(),
            me: 0,
        };
        let mut tags = Tags::new(1);
        assert_eq!(
            CasKv::new(bucket(), NOW, &mut tags).create("k", b"a"),
            Ok(true)
        );
        let overtaken = Overtaken {
            bucket: bucket(),
            swapped: false,
            // A record far ahead of the write in the key's history (its
            // number is bytes 4..12), naming only its own write.
            overtake: Some(Box::new(|| {
                world.step(0, |e| {
                    let (stored, writes) = e.get_mut("k").unwrap();
                    let sequence = u64::from_le_bytes(stored[4..12].try_into().unwrap());
                    let mut far = b"SGR2".to_vec();
                    far.extend_from_slice(&(sequence + 5_000).to_le_bytes());
                    far.extend_from_slice(&1u32.to_le_bytes());
                    far.extend_from_slice(&[9; 16]);
                    far.extend_from_slice(b"c");
                    *stored = far;
                    *writes += 5_000;
                })
            })),
        };
        let mut kv = CasKv::new(overtaken, NOW, &mut tags);
        let version = kv.get("k").unwrap().unwrap().version;
        let answer = kv.swap("k", version, b"b");
        assert!(
            answer
                .as_ref()
                .is_err_and(|e| e.0.contains("cannot tell whether a write to k landed")),
            "{answer:?}"
        );
    }

    #[test]
    fn a_claim_is_one_instances_per_round_and_lapses() {
        let world = World::new(Semantics::SpinSqlite, 1, Schedule::fair(0));
        let mut tags = Tags::new(1);
        let bucket = || Bucket {
            world: world.clone(),
            me: 0,
        };
        // Someone claimed this round and died before writing.
        bucket().increment("k.claim.200", 1).unwrap();
        let at = |ms: u64| ms + 200 * ROUND_MS;
        assert_eq!(
            CasKv::new(bucket(), at(10), &mut tags).create("k", b"a"),
            Ok(false)
        );
        // The next round follows a claimed one: still no.
        let next = at(ROUND_MS + 10);
        assert_eq!(
            CasKv::new(bucket(), next, &mut tags).create("k", b"a"),
            Ok(false)
        );
        // The round after follows an unclaimed one: created, claim cleared.
        let later = at(2 * ROUND_MS + 10);
        let mut kv = CasKv::new(bucket(), later, &mut tags);
        assert_eq!(kv.create("k", b"a"), Ok(true));
        assert_eq!(
            kv.get("k").unwrap().map(|e| e.value.into_owned()),
            Some(b"a".to_vec())
        );
        assert_eq!(bucket().get("k.claim.202"), Ok(None));
        // It exists now: no second creation.
        assert_eq!(
            CasKv::new(bucket(), later, &mut tags).create("k", b"b"),
            Ok(false)
        );
    }

    #[test]
    fn a_version_not_from_the_last_read_never_writes() {
        let world = World::new(Semantics::Strict, 1, Schedule::fair(0));
        let mut tags = Tags::new(1);
        let mut store = CasKv::new(Bucket { world, me: 0 }, NOW, &mut tags);
        assert_eq!(store.create("k", b"0"), Ok(true));
        let first = store.get("k").unwrap().unwrap().version;
        let second = store.get("k").unwrap().unwrap().version;
        assert_ne!(first, second);
        assert_eq!(store.swap("k", first, b"x"), Ok(false));
        // The handle was spent by the failed attempt: read again to write.
        assert_eq!(store.swap("k", second, b"x"), Ok(false));
        assert_eq!(store.swap("other", 1, b"x"), Ok(false));
    }

    #[test]
    fn a_swap_that_did_not_land_is_a_conflict_whatever_the_store_said() {
        let world = World::new(Semantics::SpinRedis, 1, Schedule::fair(0));
        let (mut ta, mut tb) = (Tags::new(1), Tags::new(2));
        let bucket = || Bucket {
            world: world.clone(),
            me: 0,
        };
        let mut a = CasKv::new(bucket(), NOW, &mut ta);
        assert_eq!(a.create("k", b"0"), Ok(true));
        let va = a.get("k").unwrap().unwrap().version;
        let mut b = CasKv::new(bucket(), NOW, &mut tb);
        let vb = b.get("k").unwrap().unwrap().version;
        assert_eq!(b.swap("k", vb, b"b"), Ok(true));
        assert_eq!(
            a.swap("k", va, b"a"),
            Ok(false),
            "Redis said yes; it did not write"
        );
        assert_eq!(a.get("k").unwrap().unwrap().value, &b"b"[..]);
    }

    #[test]
    fn store_failures_reach_the_gate_as_errors() {
        struct Down;
        impl CasBucket for Down {
            type Handle = ();
            fn begin(&mut self, _: &str) -> Result<((), Option<Vec<u8>>), String> {
                Err("store down".into())
            }
            fn swap(&mut self, (): (), _: &[u8]) -> Result<bool, String> {
                Err("store down".into())
            }
            fn get(&mut self, _: &str) -> Result<Option<Vec<u8>>, String> {
                Err("store down".into())
            }
            fn increment(&mut self, _: &str, _: i64) -> Result<i64, String> {
                Err("store down".into())
            }
            fn delete(&mut self, _: &str) -> Result<(), String> {
                Err("store down".into())
            }
        }
        let mut tags = Tags::new(1);
        let auth = format!("Bearer {TOKEN}");
        let values = [auth.as_bytes()];
        let outcome = gate(20, 0)
            .decide(
                &request(&values, None),
                NOW,
                &mut CasKv::new(Down, NOW, &mut tags),
            )
            .outcome;
        assert_eq!(outcome, Outcome::Denied(ErrorCode::LimiterUnavailable));
    }
}
