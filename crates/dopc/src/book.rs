//! Every execution, held in memory as it is in the store.
//!
//! A server is the only writer of its executions, so the queue, the execution lists, the
//! monitor and the metrics read them here instead of decoding the whole history from the store
//! at every request. Before, each finished execution re-read every execution ever kept to find
//! the waiting ones, and each list request did too: the soak benchmark saw event latency grow
//! 4.6x in ten minutes as the history grew to 2 900 executions. Writes go to the store first
//! (durable), then here. Writers take turns on a lock of their own, so the two never disagree
//! in order; readers only wait for the in-memory update, never for a commit's flush (they see
//! an execution's new state once it is durable).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use dop_store::{Store, StoreError};
use dopc_client::api::ExecutionPage;

use crate::execution::Execution;
use crate::records::{self, Kind};

/// The executions of a server's store.
pub struct ExecutionBook {
    store: Arc<Store>,
    /// Held by a writer from its store commit to its in-memory update.
    writing: Mutex<()>,
    all: Mutex<BTreeMap<u64, Execution>>,
}

impl ExecutionBook {
    /// Reads every execution of the store once.
    pub fn load(store: Arc<Store>) -> Result<ExecutionBook, StoreError> {
        let all = records::list::<Execution>(&store, Kind::Execution)?
            .into_iter()
            .map(|e| (e.id, e))
            .collect();
        Ok(ExecutionBook {
            store,
            writing: Mutex::new(()),
            all: Mutex::new(all),
        })
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, Execution>> {
        self.all.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn writer(&self) -> MutexGuard<'_, ()> {
        self.writing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One execution.
    pub fn get(&self, id: u64) -> Option<Execution> {
        self.lock().get(&id).cloned()
    }

    /// The executions `keep` accepts, oldest first.
    pub fn list(&self, keep: impl Fn(&Execution) -> bool) -> Vec<Execution> {
        self.lock().values().filter(|e| keep(e)).cloned().collect()
    }

    /// One page of the executions `keep` accepts, oldest first: only the page is cloned, and
    /// with a limit the history is walked from the page's end only as far as the page.
    pub fn page(&self, keep: impl Fn(&Execution) -> bool, page: &ExecutionPage) -> Vec<Execution> {
        let all = self.lock();
        page.select(all.values().filter(|e| keep(e)), |e| e.id)
            .into_iter()
            .cloned()
            .collect()
    }

    /// True when any execution satisfies `test`.
    pub fn any(&self, test: impl Fn(&Execution) -> bool) -> bool {
        self.lock().values().any(test)
    }

    /// Stores a new execution under the next number and returns it.
    pub fn add(&self, make: impl FnOnce(u64) -> Execution) -> Result<Execution, StoreError> {
        let _writer = self.writer();
        let (_, e) = records::add_execution(&self.store, make)?;
        self.lock().insert(e.id, e.clone());
        Ok(e)
    }

    /// Writes executions (`None` removes one) in one durable step.
    pub fn write(&self, changes: &[(u64, Option<Execution>)]) -> Result<(), StoreError> {
        let _writer = self.writer();
        let records: Vec<(String, Option<&Execution>)> = changes
            .iter()
            .map(|(id, e)| (id.to_string(), e.as_ref()))
            .collect();
        records::write(&self.store, Kind::Execution, &records)?;
        let mut all = self.lock();
        for (id, e) in changes {
            match e {
                Some(e) => all.insert(*id, e.clone()),
                None => all.remove(id),
            };
        }
        Ok(())
    }

    /// Writes one execution.
    pub fn save(&self, e: &Execution) -> Result<(), StoreError> {
        self.write(&[(e.id, Some(e.clone()))])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::execution::{ExecOptions, Status, Task};

    fn make(id: u64, plan: &str) -> Execution {
        Execution {
            id,
            plan: plan.into(),
            task: Task::Run,
            status: Status::New,
            options: ExecOptions::default(),
            created_by: "test".into(),
            reason: None,
            created_at: String::new(),
            started_at: None,
            finished_at: None,
            log_id: format!("dopc-{id}"),
            cancel_requests: 0,
            result: Default::default(),
            error: None,
        }
    }

    #[test]
    fn the_book_and_the_store_agree_after_adds_writes_and_removals() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let book = ExecutionBook::load(store.clone()).unwrap();
        let a = book.add(|id| make(id, "a")).unwrap();
        let b = book.add(|id| make(id, "b")).unwrap();
        assert_eq!((a.id, b.id), (1, 2));
        let mut done = a.clone();
        done.status = Status::Done;
        book.save(&done).unwrap();
        book.write(&[(b.id, None)]).unwrap();
        let c = book.add(|id| make(id, "a")).unwrap();
        assert_eq!(c.id, 3, "numbers are never reused");
        let stored: Vec<Execution> = records::list(&store, Kind::Execution).unwrap();
        assert_eq!(stored, book.list(|_| true));
        assert_eq!(book.get(1).unwrap().status, Status::Done);
        assert!(book.get(2).is_none());
        assert_eq!(book.list(|e| e.plan == "a").len(), 2);
        // A server started later reads the same.
        let again = ExecutionBook::load(store).unwrap();
        assert_eq!(again.list(|_| true), book.list(|_| true));
    }

    #[test]
    fn a_page_holds_the_same_executions_as_the_filtered_list() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let book = ExecutionBook::load(store).unwrap();
        for i in 0..30 {
            book.add(|id| make(id, if i % 3 == 0 { "a" } else { "b" }))
                .unwrap();
        }
        let of_a = |e: &Execution| e.plan == "a";
        let ids = |v: Vec<Execution>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
        let page = |limit, before, since| ExecutionPage {
            limit,
            before,
            since,
        };
        assert_eq!(
            ids(book.page(of_a, &page(None, None, None))),
            ids(book.list(of_a))
        );
        assert_eq!(
            ids(book.page(of_a, &page(Some(3), None, None))),
            [22, 25, 28]
        );
        assert_eq!(
            ids(book.page(of_a, &page(Some(2), Some(22), None))),
            [16, 19]
        );
        assert_eq!(ids(book.page(of_a, &page(Some(2), None, Some(4)))), [7, 10]);
        assert_eq!(
            ids(book.page(of_a, &page(Some(9), Some(11), Some(1)))),
            [4, 7, 10]
        );
        assert!(book.page(of_a, &page(Some(5), Some(1), None)).is_empty());
    }
}
