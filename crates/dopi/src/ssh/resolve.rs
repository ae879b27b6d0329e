//! Name resolution for the run's connections, off the async workers and once per name.
//!
//! `getaddrinfo` blocks, and a resolver that does not answer blocks it for its whole timeout
//! (5 s by default, per try). Called on the runtime's workers, two such lookups froze every
//! handshake of the run: their deadlines passed while nobody could read the servers' answers, and
//! every node in flight failed at once with "no answer". Lookups run on threads of their own (at
//! most [`LOOKUPS_AT_ONCE`]), not on the runtime's blocking pool: a runtime waits for its blocking
//! tasks when it shuts down, so a lookup still hanging when the run was over kept the command
//! from exiting for seconds. They are bounded by the connect timeout, and their answers (names
//! that do not resolve too) are kept for a while, so retries and reconnects do not ask again.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long an answer is kept (a name fixed in DNS mid-run is seen again after this).
const KEEP: Duration = Duration::from_secs(60);
/// Lookups in progress at once; more wait (a node's addresses do not wait for its name).
const LOOKUPS_AT_ONCE: usize = 64;

type Answer = Result<Vec<IpAddr>, String>;

/// One name's lookup: made by the first task that needs it while the others wait.
type Entry = Arc<tokio::sync::Mutex<Option<(Instant, Answer)>>>;

/// The run's resolver: every name looked up at most once per [`KEEP`].
pub struct Resolver {
    names: Mutex<HashMap<String, Entry>>,
    lookups: Arc<tokio::sync::Semaphore>,
}

impl Default for Resolver {
    fn default() -> Resolver {
        Resolver {
            names: Mutex::default(),
            lookups: Arc::new(tokio::sync::Semaphore::new(LOOKUPS_AT_ONCE)),
        }
    }
}

impl Resolver {
    /// The socket addresses of `host` (a name or an IP literal) on `port`, or why there are
    /// none. A lookup that takes longer than `timeout` counts as failed.
    pub async fn resolve(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<Vec<SocketAddr>, String> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let entry = self
            .names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(host.to_string())
            .or_default()
            .clone();
        let mut kept = entry.lock().await;
        let answer = match kept.as_ref() {
            Some((at, answer)) if at.elapsed() < KEEP => answer.clone(),
            _ => {
                let answer = self.lookup(host, timeout).await;
                *kept = Some((Instant::now(), answer.clone()));
                answer
            }
        };
        answer.map(|ips| {
            ips.into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect()
        })
    }
}

impl Resolver {
    /// Asks the system's resolver on a thread of its own; the answer is dropped if nobody
    /// waits for it any more.
    async fn lookup(&self, host: &str, timeout: Duration) -> Answer {
        let Ok(place) = self.lookups.clone().acquire_owned().await else {
            return Err(format!("cannot resolve {host}: the resolver is closed"));
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let name = host.to_string();
        let spawned = std::thread::Builder::new()
            .name("dop-resolve".into())
            .spawn(move || {
                let answer = (name.as_str(), 0).to_socket_addrs();
                drop(place);
                let _ = tx.send(answer);
            });
        if let Err(e) = spawned {
            return Err(format!(
                "cannot resolve {host}: no thread for the lookup: {e}"
            ));
        }
        match tokio::time::timeout(timeout, rx).await {
            Err(_) => Err(format!(
                "cannot resolve {host}: no answer from the resolver within {} s",
                timeout.as_secs_f64()
            )),
            Ok(Err(_)) => Err(format!("cannot resolve {host}: the lookup thread ended")),
            Ok(Ok(Err(e))) => Err(format!("cannot resolve {host}: {e}")),
            Ok(Ok(Ok(addrs))) => {
                let mut ips: Vec<IpAddr> = Vec::new();
                for a in addrs {
                    if !ips.contains(&a.ip()) {
                        ips.push(a.ip());
                    }
                }
                if ips.is_empty() {
                    Err(format!("{host} has no address"))
                } else {
                    Ok(ips)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literals_need_no_lookup_and_answers_are_kept() {
        let r = Resolver::default();
        let got = r
            .resolve("127.0.0.9", 22, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(got, vec!["127.0.0.9:22".parse().unwrap()]);
        assert!(
            r.names.lock().unwrap().is_empty(),
            "a literal is not looked up"
        );
        let first = r.resolve("localhost", 2222, Duration::from_secs(5)).await;
        assert!(first.as_ref().unwrap().iter().all(|a| a.port() == 2222));
        assert_eq!(r.names.lock().unwrap().len(), 1);
        // The second answer is the kept one (the same, and no new entry).
        let again = r.resolve("localhost", 2222, Duration::from_secs(5)).await;
        assert_eq!(first, again);
        assert_eq!(r.names.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_name_that_does_not_resolve_is_an_error_that_says_which() {
        let r = Resolver::default();
        let e = r
            .resolve("no-such-node.invalid", 22, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(e.contains("no-such-node.invalid"), "{e}");
    }
}
