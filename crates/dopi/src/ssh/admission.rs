//! Admission of new SSH logins: how many handshakes may be in progress at once towards one
//! target host (a node's address, or the first jump host of its chain), adapted to how the host
//! copes, and the pause before trying a login again.
//!
//! A shared sshd (one host serving many nodes, a bastion, a jump host) does the expensive part of
//! every login: a process per connection, key exchange, the user's lookup. Given more logins than
//! it can serve, it gets slow, and stock OpenSSH drops unauthenticated connections beyond
//! `MaxStartups` (10 pending). Piling on makes every login slower and more of them dropped, so
//! the limit backs off the way TCP does (additive increase, multiplicative decrease): it grows
//! while logins are quick compared to the quickest seen, and halves when the host drops one or
//! takes far longer than that. Retries wait a random time (full jitter) so that logins dropped
//! together do not come back together.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Logins a target host starts with at once, before it has shown how it copes.
const INITIAL_LIMIT: f64 = 16.0;
/// Never more logins in progress at once towards one host.
const MAX_LIMIT: f64 = 512.0;
/// A login this many times slower than the quickest seen means the host is overloaded.
const SLOW_FACTOR: u32 = 4;
/// Below this, a login is never "slow" (scheduling noise on a quick host).
const SLOW_FLOOR: Duration = Duration::from_millis(250);

/// How one login attempt went, for the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Logged in, in this time.
    Done(Duration),
    /// The host dropped the connection or did not answer in time: overloaded.
    Dropped,
    /// Anything else (refused credentials, a changed key): says nothing about the load.
    Neutral,
}

#[derive(Debug)]
struct Limit {
    limit: f64,
    in_progress: usize,
    quickest: Option<Duration>,
    /// No second decrease before this: the logins already under way when the host showed
    /// trouble report the same trouble, once.
    calm_until: Option<Instant>,
}

impl Limit {
    fn new() -> Limit {
        Limit {
            limit: INITIAL_LIMIT,
            in_progress: 0,
            quickest: None,
            calm_until: None,
        }
    }

    fn admits(&self) -> bool {
        (self.in_progress as f64) < self.limit.floor().max(1.0)
    }

    fn decrease(&mut self, now: Instant) {
        if self.calm_until.is_some_and(|t| now < t) {
            return;
        }
        self.limit = (self.limit / 2.0).max(1.0);
        let pause = self.quickest.unwrap_or(SLOW_FLOOR).max(SLOW_FLOOR) * 2;
        self.calm_until = Some(now + pause);
    }

    fn record(&mut self, outcome: Outcome, now: Instant) {
        match outcome {
            Outcome::Done(took) => {
                let quickest = *self.quickest.get_or_insert(took);
                self.quickest = Some(quickest.min(took));
                if took > (quickest * SLOW_FACTOR).max(SLOW_FLOOR) {
                    self.decrease(now);
                } else {
                    // One more per login in the limit's worth of quick logins; quicker while
                    // the limit is small.
                    self.limit = (self.limit + (4.0 / self.limit).max(0.1)).min(MAX_LIMIT);
                }
            }
            Outcome::Dropped => self.decrease(now),
            Outcome::Neutral => {}
        }
    }
}

/// A login admitted towards a host; report how it went with [`Permit::done`] (a permit dropped
/// without a report counts as neutral).
pub struct Permit {
    host: Arc<Host>,
    started: Instant,
    reported: bool,
}

impl Permit {
    /// How long this login has taken so far.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Reports how the login went and lets the next one in.
    pub fn done(mut self, outcome: Outcome) {
        self.reported = true;
        self.host.finish(outcome);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.reported {
            self.host.finish(Outcome::Neutral);
        }
    }
}

struct Host {
    limit: Mutex<Limit>,
    freed: Notify,
}

impl Host {
    fn finish(&self, outcome: Outcome) {
        let mut limit = self.limit.lock().unwrap_or_else(|p| p.into_inner());
        limit.in_progress -= 1;
        limit.record(outcome, Instant::now());
        drop(limit);
        self.freed.notify_waiters();
    }
}

/// The run's admission of logins, by target host.
#[derive(Default)]
pub struct Admission {
    hosts: Mutex<HashMap<String, Arc<Host>>>,
}

impl Admission {
    /// Waits until a login towards `host` may start.
    pub async fn admit(&self, host: &str) -> Permit {
        let host = self
            .hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(host.to_string())
            .or_insert_with(|| {
                Arc::new(Host {
                    limit: Mutex::new(Limit::new()),
                    freed: Notify::new(),
                })
            })
            .clone();
        loop {
            // Registered before looking, so a login that finishes in between still wakes us.
            let freed = host.freed.notified();
            {
                let mut limit = host.limit.lock().unwrap_or_else(|p| p.into_inner());
                if limit.admits() {
                    limit.in_progress += 1;
                    break;
                }
            }
            freed.await;
        }
        Permit {
            host,
            started: Instant::now(),
            reported: false,
        }
    }
}

/// A random number: each `RandomState` has its own keys, seeded from the system's randomness
/// per thread, so no two calls, threads or processes draw the same sequence. Unpredictable to
/// the nodes, not a cryptographic generator.
pub fn random_u64() -> u64 {
    static DRAWS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(DRAWS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.finish()
}

/// A random number in `0..n` (0 when `n` is 0).
fn random_below(n: u64) -> u64 {
    match n {
        0 => 0,
        n => random_u64() % n,
    }
}

/// The pause before retry number `attempt` (from 1): a random time up to an exponentially
/// growing ceiling (100 ms, 200 ms, … capped at `cap`), "full jitter", so that logins that
/// failed together spread out instead of coming back together.
pub fn backoff(attempt: u32, cap: Duration) -> Duration {
    let ceiling = Duration::from_millis(100u64 << attempt.min(10)).min(cap);
    let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(ms / 4 + random_below(ms - ms / 4))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn quick_logins_raise_the_limit_and_slow_or_dropped_ones_halve_it_once_per_calm() {
        let mut l = Limit::new();
        let t0 = Instant::now();
        for _ in 0..40 {
            l.record(Outcome::Done(ms(20)), t0);
        }
        let raised = l.limit;
        assert!(raised > INITIAL_LIMIT + 5.0, "{raised}");
        // Far slower than the quickest login: the host is overloaded.
        l.record(Outcome::Done(ms(900)), t0);
        assert!((l.limit - raised / 2.0).abs() < 1e-9, "{}", l.limit);
        // The other logins that were under way report the same trouble: no second halving.
        l.record(Outcome::Dropped, t0 + ms(10));
        l.record(Outcome::Done(ms(900)), t0 + ms(20));
        assert!((l.limit - raised / 2.0).abs() < 1e-9, "{}", l.limit);
        // Later trouble halves it again, down to one login at a time and no further.
        for i in 1..40 {
            l.record(Outcome::Dropped, t0 + ms(1000 * i));
        }
        assert!((l.limit - 1.0).abs() < 1e-9, "{}", l.limit);
        // Neutral outcomes change nothing; slow logins under the floor are not trouble.
        l.record(Outcome::Neutral, t0 + ms(100_000));
        assert!((l.limit - 1.0).abs() < 1e-9);
        l.record(Outcome::Done(SLOW_FLOOR), t0 + ms(100_000));
        assert!(l.limit > 1.0);
    }

    #[tokio::test]
    async fn admission_waits_for_a_free_place_and_dropped_permits_free_it() {
        let admission = Arc::new(Admission::default());
        let mut held = Vec::new();
        for _ in 0..INITIAL_LIMIT as usize {
            held.push(admission.admit("h").await);
        }
        let waiting = {
            let admission = admission.clone();
            tokio::spawn(async move { admission.admit("h").await })
        };
        // Another host is not held up by this one.
        let other = tokio::time::timeout(ms(500), admission.admit("other")).await;
        assert!(other.is_ok());
        tokio::time::sleep(ms(50)).await;
        assert!(
            !waiting.is_finished(),
            "the limit holds the next login back"
        );
        held.pop().unwrap().done(Outcome::Done(ms(10)));
        let admitted = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        let _in_progress = admitted.expect("a finished login lets the next one in");
        drop(held);
        let hosts = admission.hosts.lock().unwrap();
        let limit = hosts["h"].limit.lock().unwrap();
        assert_eq!(
            limit.in_progress, 1,
            "dropped permits gave their places back"
        );
        assert!(
            limit.limit > INITIAL_LIMIT,
            "a quick login raised the limit"
        );
    }

    #[test]
    fn backoff_is_random_within_a_growing_ceiling() {
        let cap = Duration::from_secs(5);
        let draws: Vec<Duration> = (0..64).map(|_| backoff(3, cap)).collect();
        assert!(
            draws.iter().all(|d| *d >= ms(200) && *d < ms(800)),
            "{draws:?}"
        );
        let distinct: std::collections::BTreeSet<_> = draws.iter().collect();
        assert!(distinct.len() > 32, "{distinct:?}");
        assert!(backoff(30, cap) <= cap);
        assert!(backoff(1, cap) < ms(200));
    }
}
