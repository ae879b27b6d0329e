//! History that does not grow without bound: `[retention]` of `dopc.toml` keeps the newest
//! finished executions of each plan (`keep_per_plan`, 1000 by default) and, when set, only
//! those that finished within `keep_days`; the rest are removed with their logs, once when the
//! server starts and then every `interval_secs`. Waiting and running executions are never
//! removed.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::book::ExecutionBook;
use crate::execution::Execution;

/// `[retention]` of `dopc.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// The finished executions kept per plan, newest first; none: no limit by count.
    pub keep_per_plan: Option<usize>,
    /// Finished executions older than this many days are removed; none: no limit by age.
    pub keep_days: Option<u64>,
    /// How often the limits are applied, in seconds.
    pub interval_secs: u64,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            keep_per_plan: Some(1000),
            keep_days: None,
            interval_secs: 600,
        }
    }
}

impl Retention {
    /// The limits as the run logs' retention states them (the verdict is shared with
    /// `dopi logs prune`).
    fn policy(&self) -> dop_run::retention::Retention {
        dop_run::retention::Retention {
            keep_per_plan: self.keep_per_plan,
            older_than: self
                .keep_days
                .map(|d| Duration::from_secs(d.saturating_mul(86_400))),
        }
    }

    /// The ids of the executions the limits remove (finished ones only).
    pub fn expired(&self, executions: &[Execution], now_ms: u64) -> Vec<u64> {
        let mut by_plan: BTreeMap<&str, Vec<&Execution>> = BTreeMap::new();
        for e in executions.iter().filter(|e| e.status.is_final()) {
            by_plan.entry(e.plan.as_str()).or_default().push(e);
        }
        let policy = self.policy();
        let mut expired = Vec::new();
        for finished in by_plan.values_mut() {
            finished.sort_by_key(|e| std::cmp::Reverse(e.id));
            for (rank, e) in finished.iter().enumerate() {
                let age = e
                    .finished_at
                    .as_deref()
                    .and_then(dop_store::parse_rfc3339)
                    .and_then(|at| now_ms.checked_sub(at))
                    .map(Duration::from_millis);
                if policy.verdict(rank, age).is_some() {
                    expired.push(e.id);
                }
            }
        }
        expired.sort_unstable();
        expired
    }

    /// Removes the expired executions (in one durable write) and then their logs; returns
    /// them.
    pub fn apply(
        &self,
        book: &ExecutionBook,
        log_dir: &Path,
        now_ms: u64,
    ) -> Result<Vec<Execution>, dop_store::StoreError> {
        let expired = self.expired(&book.list(|_| true), now_ms);
        let removed: Vec<Execution> = expired.iter().filter_map(|id| book.get(*id)).collect();
        if removed.is_empty() {
            return Ok(removed);
        }
        let changes: Vec<(u64, Option<Execution>)> = expired.iter().map(|id| (*id, None)).collect();
        book.write(&changes)?;
        for e in &removed {
            remove_logs(log_dir, e);
        }
        Ok(removed)
    }

    /// The pause between two applications.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_secs.max(1))
    }
}

/// Removes an execution's log directory (`<log_dir>/<plan>/<log_id>/`); one already gone is
/// fine, any other failure is logged (the execution is removed either way).
pub fn remove_logs(log_dir: &Path, e: &Execution) {
    let dir = log_dir.join(&e.plan).join(&e.log_id);
    if let Err(err) = std::fs::remove_dir_all(&dir) {
        if err.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %err, "cannot remove an execution's logs");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::execution::{ExecOptions, Status, Task};

    const DAY_MS: u64 = 86_400_000;

    fn execution(id: u64, plan: &str, status: Status, finished_ms: Option<u64>) -> Execution {
        Execution {
            id,
            plan: plan.into(),
            task: Task::Run,
            status,
            options: ExecOptions::default(),
            created_by: "test".into(),
            reason: None,
            created_at: String::new(),
            started_at: None,
            finished_at: finished_ms.map(dop_store::rfc3339),
            log_id: format!("dopc-{id}"),
            cancel_requests: 0,
            result: Default::default(),
            error: None,
        }
    }

    #[test]
    fn the_newest_finished_ones_are_kept_per_plan_and_waiting_ones_always() {
        let now = 100 * DAY_MS;
        let all = vec![
            execution(1, "a", Status::Done, Some(now - 50 * DAY_MS)),
            execution(2, "a", Status::Failed, Some(now - 3 * DAY_MS)),
            execution(3, "b", Status::Done, Some(now - 60 * DAY_MS)),
            execution(4, "a", Status::Cancelled, Some(now - DAY_MS)),
            execution(5, "a", Status::Queued, None),
            execution(6, "a", Status::Running, None),
        ];
        let count = Retention {
            keep_per_plan: Some(2),
            keep_days: None,
            interval_secs: 1,
        };
        assert_eq!(
            count.expired(&all, now),
            vec![1],
            "a keeps 4 and 2; b keeps 3"
        );
        let age = Retention {
            keep_per_plan: None,
            keep_days: Some(30),
            interval_secs: 1,
        };
        assert_eq!(age.expired(&all, now), vec![1, 3]);
        let both = Retention {
            keep_per_plan: Some(1),
            keep_days: Some(2),
            interval_secs: 1,
        };
        assert_eq!(both.expired(&all, now), vec![1, 2, 3]);
        let none = Retention {
            keep_per_plan: None,
            keep_days: None,
            interval_secs: 1,
        };
        assert!(none.expired(&all, now).is_empty());
    }

    #[test]
    fn applying_removes_the_records_and_their_logs_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(dop_store::Store::open(&dir.path().join("store")).unwrap());
        let logs = dir.path().join("logs");
        let book = ExecutionBook::load(store.clone()).unwrap();
        let now = 10 * DAY_MS;
        for (status, finished) in [
            (Status::Done, Some(now - 3 * DAY_MS)),
            (Status::Done, Some(now - DAY_MS)),
            (Status::Queued, None),
        ] {
            let e = book
                .add(|id| execution(id, "web", status, finished))
                .unwrap();
            std::fs::create_dir_all(logs.join("web").join(&e.log_id)).unwrap();
            std::fs::write(logs.join("web").join(&e.log_id).join("all.log"), "x").unwrap();
        }
        let policy = Retention {
            keep_per_plan: Some(1),
            keep_days: None,
            interval_secs: 1,
        };
        let removed = policy.apply(&book, &logs, now).unwrap();
        assert_eq!(removed.iter().map(|e| e.id).collect::<Vec<_>>(), vec![1]);
        assert!(!logs.join("web/dopc-1").exists(), "its logs went with it");
        assert!(logs.join("web/dopc-2").exists());
        assert!(logs.join("web/dopc-3").exists());
        // In the store too: a server started later does not see it.
        let again = ExecutionBook::load(store).unwrap();
        let ids: Vec<u64> = again.list(|_| true).iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![2, 3]);
        assert!(policy.apply(&again, &logs, now).unwrap().is_empty());
    }
}
