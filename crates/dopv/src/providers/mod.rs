//! The providers dopv has. `libvirt` and `openstack` are cargo features (on by default); a
//! build without one refuses its plans with the feature's name (see
//! [`crate::provider::for_infrastructure`]).

pub mod baremetal;
#[cfg(any(feature = "openstack", feature = "libvirt"))]
pub mod cloudinit;
#[cfg(feature = "libvirt")]
pub mod libvirt;
pub mod local;
#[cfg(feature = "openstack")]
pub mod openstack;

use std::io::Read as _;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How often a wait says that it still waits.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(15);

/// Says, every [`HEARTBEAT_EVERY`] of a long wait, what dopv waits for, how long it has
/// waited, how long it will wait at most and what it saw last, so that an operator watching
/// a deploy at night can tell a slow cloud from a hung tool. Goes to the diagnostics (standard
/// error at the default level), not into the run log.
pub(crate) struct Heartbeat {
    what: String,
    limit: Duration,
    since: Instant,
    next: Instant,
}

impl Heartbeat {
    /// A wait for `what` (`"the server 'web01' to become ACTIVE"`) of at most `limit`.
    pub(crate) fn new(what: impl Into<String>, limit: Duration) -> Heartbeat {
        let now = Instant::now();
        Heartbeat {
            what: what.into(),
            limit,
            since: now,
            next: now + HEARTBEAT_EVERY,
        }
    }

    /// Called on every poll with what the poll saw; speaks when a beat is due.
    pub(crate) fn tick(&mut self, last: &str) {
        if let Some(line) = self.due(Instant::now(), last) {
            tracing::info!("{line}");
        }
    }

    fn due(&mut self, now: Instant, last: &str) -> Option<String> {
        if now < self.next {
            return None;
        }
        self.next = now + HEARTBEAT_EVERY;
        Some(format!(
            "still waiting for {} ({} s so far, at most {} s; last: {last})",
            self.what,
            now.duration_since(self.since).as_secs(),
            self.limit.as_secs()
        ))
    }
}

/// Whether an sshd answers on the address (it sends its banner first). Blocks up to 2 s.
pub(crate) fn ssh_answers(addr: SocketAddr) -> bool {
    match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
        Ok(mut s) => {
            let _ = s.set_read_timeout(Some(Duration::from_millis(1500)));
            let mut banner = [0u8; 4];
            s.read_exact(&mut banner).is_ok() && &banner == b"SSH-"
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_says_what_for_how_long_and_the_last_status_only_when_due() {
        let mut beat = Heartbeat::new(
            "the server 'web01' to become ACTIVE",
            Duration::from_secs(600),
        );
        let start = beat.since;
        assert_eq!(beat.due(start + Duration::from_secs(3), "BUILD"), None);
        assert_eq!(
            beat.due(start + HEARTBEAT_EVERY, "BUILD").as_deref(),
            Some("still waiting for the server 'web01' to become ACTIVE (15 s so far, at most 600 s; last: BUILD)")
        );
        assert_eq!(
            beat.due(start + HEARTBEAT_EVERY + Duration::from_secs(1), "BUILD"),
            None
        );
        assert!(beat.due(start + HEARTBEAT_EVERY * 2, "BUILD").is_some());
    }
}
