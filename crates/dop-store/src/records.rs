//! What applications built on the store keep in it besides plans and state (dopc: executions,
//! monitor settings, API tokens), without the store knowing what they are:
//!
//! * [`Records`]: JSON records under string keys in one database (`<store>/dopc`, its name
//!   from the time only dopc used it), read and written like every other database of the store
//!   (opened per operation, batches committed durably, or kept open by a server:
//!   [`Store::hold_databases`]);
//! * documents: small JSON files beside the databases (`<store>/<name>.json`) that a reader
//!   checks with one `stat` and a writer replaces atomically under a lock, for data that other
//!   processes change while a server runs.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::{Batch, Database};
use crate::error::{Result, StoreError};
use crate::layout::{check_name, Layout};
use crate::store::Store;

/// The application records of a store (see the module documentation).
pub struct Records<'a> {
    store: &'a Store,
    path: PathBuf,
}

impl Store {
    /// The application records.
    pub fn records(&self) -> Records<'_> {
        Records {
            store: self,
            path: Layout::new(self.root()).records(),
        }
    }
}

impl Records<'_> {
    /// Runs `work` on the records' database (held open by a server, see
    /// [`Store::hold_databases`]).
    fn with_db<T>(&self, work: impl FnOnce(&dyn Database) -> Result<T>) -> Result<T> {
        work(&*self.store.db(&self.path)?)
    }

    fn decode<T: DeserializeOwned>(&self, key: &[u8], bytes: &[u8]) -> Result<T> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            reason: format!("unreadable record '{}': {e}", String::from_utf8_lossy(key)),
        })
    }

    /// The record under `key`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.with_db(|db| {
            db.get(key.as_bytes())?
                .map(|bytes| self.decode(key.as_bytes(), &bytes))
                .transpose()
        })
    }

    /// Every record whose key starts with `prefix`, in key order, with its key (without the
    /// prefix).
    pub fn scan<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<(String, T)>> {
        self.with_db(|db| {
            db.scan_prefix(prefix.as_bytes())?
                .into_iter()
                .map(|(key, bytes)| {
                    let name = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
                    self.decode(&key, &bytes).map(|v| (name, v))
                })
                .collect()
        })
    }

    /// Writes records (`None` removes one) in one durable step.
    pub fn write<T: Serialize>(&self, records: &[(String, Option<T>)]) -> Result<()> {
        let mut batch = Batch::default();
        for (key, value) in records {
            match value {
                Some(v) => batch.put(key.clone(), serde_json::to_vec(v).unwrap_or_default()),
                None => batch.delete(key.clone()),
            }
        }
        self.with_db(|db| db.commit(batch))
    }

    /// Stores a new record numbered by the counter under `counter` (1, 2, …, never reused),
    /// under the key `key_of(number)`, in one durable step with the counter's move; returns
    /// the number and the record.
    pub fn add_numbered<T: Serialize>(
        &self,
        counter: &str,
        key_of: impl FnOnce(u64) -> String,
        make: impl FnOnce(u64) -> T,
    ) -> Result<(u64, T)> {
        self.with_db(|db| {
            let next = match db.get(counter.as_bytes())? {
                Some(b) => <[u8; 8]>::try_from(b.as_slice())
                    .map(u64::from_be_bytes)
                    .unwrap_or(1),
                None => 1,
            };
            let record = make(next);
            let mut batch = Batch::default();
            batch.put(
                key_of(next),
                serde_json::to_vec(&record).unwrap_or_default(),
            );
            batch.put(counter, (next + 1).to_be_bytes().to_vec());
            db.commit(batch)?;
            Ok((next, record))
        })
    }
}

impl Store {
    /// `<store>/<name>.json`, a document's file (`name` is checked like a plan name).
    pub fn document_path(&self, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        Ok(self.root().join(format!("{name}.json")))
    }

    /// A document (`T::default()` when its file does not exist).
    pub fn read_document<T: DeserializeOwned + Default>(&self, name: &str) -> Result<T> {
        let path = self.document_path(name)?;
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path,
                reason: format!("unreadable document: {e}"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
            Err(e) => Err(StoreError::io(path, e)),
        }
    }

    /// Changes a document under an exclusive lock, then replaces its file atomically (mode
    /// 0600), so that readers see the old or the new document, never a part.
    pub fn update_document<T, R>(&self, name: &str, change: impl FnOnce(&mut T) -> R) -> Result<R>
    where
        T: DeserializeOwned + Serialize + Default,
    {
        let path = self.document_path(name)?;
        let lock_path = path.with_extension("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| StoreError::io(lock_path.clone(), e))?;
        // Writers take turns; released when `lock` is closed.
        lock.lock().map_err(|e| StoreError::io(lock_path, e))?;
        let mut document = self.read_document::<T>(name)?;
        let result = change(&mut document);
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| StoreError::io(tmp.clone(), e))?;
        f.write_all(&serde_json::to_vec_pretty(&document).unwrap_or_default())
            .and_then(|()| f.sync_all())
            .map_err(|e| StoreError::io(tmp.clone(), e))?;
        std::fs::rename(&tmp, &path).map_err(|e| StoreError::io(path, e))?;
        drop(lock);
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn records_are_read_back_by_key_and_prefix_and_numbers_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let records = store.records();
        let (one, _) = records
            .add_numbered("next/x", |n| format!("x/{n:03}"), |n| n * 10)
            .unwrap();
        let (two, _) = records
            .add_numbered("next/x", |n| format!("x/{n:03}"), |n| n * 10)
            .unwrap();
        assert_eq!((one, two), (1, 2));
        records
            .write(&[
                ("x/001".to_string(), None::<u64>),
                ("y/a".to_string(), Some(7)),
            ])
            .unwrap();
        let (three, _) = records
            .add_numbered("next/x", |n| format!("x/{n:03}"), |n| n * 10)
            .unwrap();
        assert_eq!(three, 3, "a removed record's number is not given again");
        assert_eq!(
            records.scan::<u64>("x/").unwrap(),
            vec![("002".to_string(), 20), ("003".to_string(), 30)]
        );
        assert_eq!(records.get::<u64>("y/a").unwrap(), Some(7));
        assert_eq!(records.get::<u64>("y/b").unwrap(), None);
    }

    #[test]
    fn an_unreadable_record_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .records()
            .write(&[("k".to_string(), Some("text"))])
            .unwrap();
        let err = store.records().get::<u64>("k").unwrap_err();
        assert!(err.to_string().contains("unreadable record 'k'"), "{err}");
    }

    #[test]
    fn documents_are_replaced_whole_and_kept_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let empty: BTreeMap<String, u64> = store.read_document("tokens").unwrap();
        assert!(empty.is_empty());
        let n = store
            .update_document("tokens", |d: &mut BTreeMap<String, u64>| {
                d.insert("a".into(), 1);
                d.len()
            })
            .unwrap();
        assert_eq!(n, 1);
        let read: BTreeMap<String, u64> = store.read_document("tokens").unwrap();
        assert_eq!(read.get("a"), Some(&1));
        let path = store.document_path("tokens").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(store.document_path("../x").is_err());
    }
}
