//! How a caller stops a run: the levels dopi's signals escalate through, which dopc's cancel
//! uses too.

/// What a run is asked to do about its work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stop {
    /// Carry on.
    #[default]
    No,
    /// Start nothing new; let running work finish (1st signal, or a cancel).
    Graceful,
    /// Terminate running commands' process groups (2nd signal, or a forceful cancel).
    Terminate,
    /// Kill them (3rd signal).
    Kill,
}

/// One step of the escalation that SIGINT and SIGTERM drive: the level the n-th signal asks
/// for, and what the run log says about it.
#[derive(Clone, Copy, Debug)]
pub struct Escalation {
    /// The level asked for.
    pub level: Stop,
    /// How the log rates it.
    pub severity: dop_core::Level,
    /// What the log says.
    pub message: &'static str,
}

/// A run's stop level: raised by signals and by the caller's requests (dopc's cancel), never
/// lowered. dopi and dopv both stop through it; each decides what a level means for its work
/// (dopi: terminate, then kill, the commands' process groups; dopv: drop the node actions under
/// way at `Terminate`).
///
/// It holds the channel's sender for as long as the run holds it, so the run's receivers never
/// see a closed channel (a caller that goes away leaves the level where it was).
#[derive(Clone, Debug)]
pub struct RunStop {
    level: std::sync::Arc<tokio::sync::watch::Sender<Stop>>,
}

impl Default for RunStop {
    fn default() -> Self {
        RunStop::new()
    }
}

impl RunStop {
    /// A run not asked to stop.
    pub fn new() -> RunStop {
        RunStop {
            level: std::sync::Arc::new(tokio::sync::watch::channel(Stop::No).0),
        }
    }

    /// The level asked for so far.
    pub fn level(&self) -> Stop {
        *self.level.borrow()
    }

    /// True once any stop was asked for.
    pub fn asked(&self) -> bool {
        self.level() != Stop::No
    }

    /// A receiver of the level, for work that waits for it.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Stop> {
        self.level.subscribe()
    }

    /// Raises the level to `level` if it is higher; true when it rose.
    pub fn raise(&self, level: Stop) -> bool {
        self.level.send_if_modified(|current| {
            let raise = level > *current;
            if raise {
                *current = level;
            }
            raise
        })
    }

    /// Follows the caller's requests for as long as the caller can make them (spawned on the
    /// current tokio runtime).
    pub fn follow(&self, mut external: tokio::sync::watch::Receiver<Stop>) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                this.raise(*external.borrow_and_update());
                if external.changed().await.is_err() {
                    break;
                }
            }
        });
    }

    /// Raises the level one step of `steps` per SIGINT or SIGTERM, saying so in `log`. The
    /// handlers are in place when this returns (so no signal finds the default action that
    /// ends the process); the counting runs on the current tokio runtime.
    pub fn escalate_on_signals(
        &self,
        steps: &'static [Escalation],
        log: std::sync::Arc<crate::ExecutionLog>,
    ) {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        let this = self.clone();
        tokio::spawn(async move {
            for step in steps {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                log.event(
                    step.severity,
                    dop_core::EventKind::Message,
                    None,
                    None,
                    step.message.to_string(),
                    serde_json::Map::new(),
                );
                this.raise(step.level);
            }
        });
    }
}

/// Waits until `level` reaches `at_least` (or the run's stop goes away).
pub async fn reached(level: &mut tokio::sync::watch::Receiver<Stop>, at_least: Stop) -> bool {
    level.wait_for(|l| *l >= at_least).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_level_only_rises_and_outlives_the_caller() {
        let stop = RunStop::new();
        let mut seen = stop.subscribe();
        let (caller, external) = tokio::sync::watch::channel(Stop::No);
        stop.follow(external);
        caller.send(Stop::Terminate).unwrap();
        assert!(reached(&mut seen, Stop::Terminate).await);
        assert!(
            !stop.raise(Stop::Graceful),
            "a lower level does not lower it"
        );
        assert_eq!(stop.level(), Stop::Terminate);
        drop(caller);
        tokio::task::yield_now().await;
        // The caller is gone; the run's receivers still see an open channel at the same level.
        assert!(!seen.has_changed().unwrap());
        assert!(stop.raise(Stop::Kill));
        assert_eq!(*seen.borrow_and_update(), Stop::Kill);
    }
}
