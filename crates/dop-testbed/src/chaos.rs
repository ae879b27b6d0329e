//! What the fault-injection tests (`tests/chaos.rs` of dopi, dopv and dopc; `cargo xtask
//! chaos`) share: how many kill points to use, a seeded generator for the moments, and a wait
//! for the processes a killed tool left behind.
//!
//! The bounded form (the test suite) and the full form (`cargo xtask chaos`) differ only in
//! `DOP_CHAOS_KILLS`; `DOP_CHAOS_SEED` replays a run's moments (each test prints its seed).

use std::path::Path;
use std::time::{Duration, Instant};

/// Kill points per tool in the test suite's bounded form.
pub const BOUNDED_KILLS: usize = 50;

/// The kill points to use: `DOP_CHAOS_KILLS`, else [`BOUNDED_KILLS`].
pub fn kills() -> usize {
    std::env::var("DOP_CHAOS_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(BOUNDED_KILLS)
}

/// A small seeded generator (xorshift64*): the moments of a run, replayable from its seed.
#[derive(Clone, Debug)]
pub struct Moments {
    state: u64,
    /// The seed, to print so a failing run can be replayed with `DOP_CHAOS_SEED`.
    pub seed: u64,
}

impl Moments {
    /// Seeded from `DOP_CHAOS_SEED`, else from the clock (printed by the caller).
    pub fn from_env() -> Moments {
        let seed = std::env::var("DOP_CHAOS_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        Moments {
            state: seed | 1,
            seed,
        }
    }

    /// The next number.
    pub fn next_number(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_number() % n.max(1)
    }

    /// A moment up to `max` from now.
    pub fn up_to(&mut self, max: Duration) -> Duration {
        Duration::from_micros(self.below(max.as_micros() as u64 + 1))
    }
}

/// The pids of the processes whose command line contains `needle` (a test's unique directory
/// marks the commands its tool started).
pub fn processes_mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.to_string_lossy().into_owned();
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            (pid != me && String::from_utf8_lossy(&cmdline).contains(&needle)).then_some(pid)
        })
        .collect()
}

/// Waits (at most `limit`) until no process mentions `needle`: the commands a killed tool left
/// running have ended. Returns those still there at the limit.
pub fn wait_for_leftovers(needle: &Path, limit: Duration) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let left = processes_mentioning(needle);
        if left.is_empty() || start.elapsed() >= limit {
            return left;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_replay_from_their_seed_and_stay_in_range() {
        let mut a = Moments {
            state: 43,
            seed: 42,
        };
        let mut b = a.clone();
        let first: Vec<u64> = (0..20).map(|_| a.below(10)).collect();
        assert_eq!(first, (0..20).map(|_| b.below(10)).collect::<Vec<_>>());
        assert!(first.iter().all(|n| *n < 10));
        assert!(first.iter().any(|n| *n != first[0]));
        assert!(a.up_to(Duration::from_millis(3)) <= Duration::from_millis(3));
    }

    #[test]
    fn leftovers_are_found_by_their_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("marker");
        std::fs::write(&marker, "").unwrap();
        // A process that names the marker and never forks (a shell running `sleep` would fork,
        // and for a moment that fork is a second process mentioning the marker).
        let mut child = std::process::Command::new("tail")
            .args(["-f", "-s", "30"])
            .arg(&marker)
            .spawn()
            .unwrap();
        // Until the child has exec'd tail, its command line is still this test's.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut found = processes_mentioning(&marker);
        while found.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
            found = processes_mentioning(&marker);
        }
        assert_eq!(found, [child.id()]);
        assert_eq!(
            wait_for_leftovers(&marker, Duration::from_millis(20)),
            [child.id()]
        );
        let _ = child.kill();
        let _ = child.wait();
        assert!(wait_for_leftovers(&marker, Duration::from_secs(5)).is_empty());
    }
}
