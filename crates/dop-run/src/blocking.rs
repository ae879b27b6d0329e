//! Where a run's blocking work goes, and the runtime a command line run works on.
//!
//! dopi and dopv are async libraries: dopc awaits their runs as tasks on its own runtime, next
//! to the requests it serves, and the command lines build one runtime in their `run` command.
//! Store work (sled opens, commits, the run lock's fsync), file trees and provider SDK calls
//! block, so they go to the runtime's blocking pool through [`off_workers`] and never hold an
//! async worker that a websocket subscriber or another execution is waiting for.

/// Runs `work` on the runtime's blocking pool and waits for it without holding an async worker.
/// A panic in `work` goes on in the caller, as if it had been called directly.
pub async fn off_workers<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        Err(e) => match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            // Only a runtime that shuts down cancels a blocking task; the run goes with it.
            Err(e) => panic!("blocking work of a run was cancelled: {e}"),
        },
    }
}

/// The runtime of a run started from the command line: two async workers (the work is waiting
/// on nodes and providers, not computing) and the blocking pool for the store and providers.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("dop-run")
        .enable_all()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_work_runs_off_the_async_workers_and_returns_its_value() {
        let rt = runtime().unwrap();
        let (worker, pool) = rt.block_on(async {
            let worker = std::thread::current().id();
            let pool = off_workers(|| std::thread::current().id()).await;
            (worker, pool)
        });
        assert_ne!(worker, pool, "the work ran on the caller's thread");
        assert_eq!(rt.block_on(off_workers(|| 6 * 7)), 42);
    }

    #[test]
    fn a_panic_in_blocking_work_reaches_the_caller_with_its_message() {
        let rt = runtime().unwrap();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.block_on(off_workers(|| -> u8 { panic!("the store broke") }))
        }));
        let panic = caught.expect_err("the panic was lost");
        assert_eq!(panic.downcast_ref::<&str>(), Some(&"the store broke"));
    }
}
