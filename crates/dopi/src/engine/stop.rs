//! Stop requests as one level that only rises: SIGINT and SIGTERM escalate it (stop starting
//! work, terminate, kill), and so do the caller's requests (dopc's cancel).

use dop_core::{EventKind, Level};
use std::sync::Arc;

use tokio::sync::watch;

use dop_run::logs::ExecutionLog;
use dop_run::Stop;

/// Raises the run's stop level to the caller's, while the caller can still ask; the caller's
/// requests only ever raise the level.
pub(super) async fn raise_with(
    mut external: watch::Receiver<Stop>,
    stop: Arc<watch::Sender<Stop>>,
) {
    loop {
        let level = *external.borrow_and_update();
        stop.send_if_modified(|current| {
            let raise = level > *current;
            if raise {
                *current = level;
            }
            raise
        });
        if external.changed().await.is_err() {
            break;
        }
    }
}

/// Counts SIGINT/SIGTERM: 1st graceful stop, 2nd terminate, 3rd kill.
pub(super) async fn escalate_on_signals(stop: Arc<watch::Sender<Stop>>, log: Arc<ExecutionLog>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    for level in [Stop::Graceful, Stop::Terminate, Stop::Kill] {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        let message = match level {
            Stop::Graceful => "signal received: no new commands start; running ones finish (again to terminate them)",
            Stop::Terminate => "second signal: terminating the running commands (again to kill them)",
            _ => "third signal: killing the running commands",
        };
        log.event(
            Level::Warn,
            EventKind::Message,
            None,
            None,
            message.to_string(),
            serde_json::Map::new(),
        );
        let _ = stop.send(level);
    }
}
