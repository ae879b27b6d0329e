//! dopc's records in the store: executions (by number) in `<store>/dopc`, a database opened
//! per operation like every other of the store; and the API tokens (by the SHA-256 of the
//! token) in `<store>/dopc-tokens.json`, a small file a server checks on every request with
//! one `stat` (re-read only when it changed), and `dopc token …` rewrites while a server runs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::Batch;
use crate::error::{Result, StoreError};
use crate::store::Store;

/// The kinds of records dopc keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Executions, keyed by their number.
    Execution,
    /// Monitor settings set through the API, keyed by plan name.
    Monitor,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Execution => "execution/",
            Kind::Monitor => "monitor/",
        }
    }
}

/// The key an execution number is stored under (zero-padded, so key order is number order).
fn key(kind: Kind, name: &str) -> String {
    match (kind, name.parse::<u64>()) {
        (Kind::Execution, Ok(n)) => format!("{}{n:020}", kind.prefix()),
        _ => format!("{}{name}", kind.prefix()),
    }
}

const NEXT_EXECUTION: &[u8] = b"next/execution";

impl Store {
    fn server_db(&self) -> Result<Box<dyn crate::backend::Database + '_>> {
        let path = crate::layout::Layout::new(self.root()).server();
        self.backend_open(&path)
    }

    /// One record.
    pub fn server_get<T: DeserializeOwned>(&self, kind: Kind, name: &str) -> Result<Option<T>> {
        let db = self.server_db()?;
        db.get(key(kind, name).as_bytes())?
            .map(|bytes| self.server_decode(&bytes))
            .transpose()
    }

    /// Every record of a kind, in key order (executions: by number).
    pub fn server_list<T: DeserializeOwned>(&self, kind: Kind) -> Result<Vec<T>> {
        let db = self.server_db()?;
        db.scan_prefix(kind.prefix().as_bytes())?
            .into_iter()
            .map(|(_, bytes)| self.server_decode(&bytes))
            .collect()
    }

    /// Every record of a kind with its key (without the kind's prefix).
    pub fn server_list_keyed<T: DeserializeOwned>(&self, kind: Kind) -> Result<Vec<(String, T)>> {
        let db = self.server_db()?;
        db.scan_prefix(kind.prefix().as_bytes())?
            .into_iter()
            .map(|(k, bytes)| {
                let name = String::from_utf8_lossy(&k[kind.prefix().len()..]).into_owned();
                self.server_decode(&bytes).map(|v| (name, v))
            })
            .collect()
    }

    /// Writes records (`None` removes one) in one durable step.
    pub fn server_write<T: Serialize>(
        &self,
        kind: Kind,
        records: &[(String, Option<T>)],
    ) -> Result<()> {
        let db = self.server_db()?;
        let mut batch = Batch::default();
        for (name, value) in records {
            match value {
                Some(v) => batch.put(key(kind, name), serde_json::to_vec(v).unwrap_or_default()),
                None => batch.delete(key(kind, name)),
            }
        }
        db.commit(batch)
    }

    /// Stores a new execution under the next number (1, 2, …, never reused) and returns it.
    pub fn server_add_execution<T: Serialize>(
        &self,
        make: impl FnOnce(u64) -> T,
    ) -> Result<(u64, T)> {
        let db = self.server_db()?;
        let next = match db.get(NEXT_EXECUTION)? {
            Some(b) => <[u8; 8]>::try_from(b.as_slice())
                .map(u64::from_be_bytes)
                .unwrap_or(1),
            None => 1,
        };
        let record = make(next);
        let mut batch = Batch::default();
        batch.put(
            key(Kind::Execution, &next.to_string()),
            serde_json::to_vec(&record).unwrap_or_default(),
        );
        batch.put(NEXT_EXECUTION, (next + 1).to_be_bytes().to_vec());
        db.commit(batch)?;
        Ok((next, record))
    }

    fn server_decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
            path: crate::layout::Layout::new(self.root()).server(),
            reason: format!("unreadable dopc record: {e}"),
        })
    }
}

/// The tokens file's content: token hash → record.
pub type Tokens = BTreeMap<String, serde_json::Value>;

impl Store {
    /// `<store>/dopc-tokens.json`.
    pub fn tokens_path(&self) -> PathBuf {
        self.root().join("dopc-tokens.json")
    }

    /// The tokens (none when the file does not exist).
    pub fn read_tokens(&self) -> Result<Tokens> {
        let path = self.tokens_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path,
                reason: format!("unreadable tokens: {e}"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Tokens::new()),
            Err(e) => Err(StoreError::io(path, e)),
        }
    }

    /// Changes the tokens under an exclusive lock, then replaces the file atomically (mode
    /// 0600), so that readers see the old or the new file, never a part.
    pub fn update_tokens<T>(&self, change: impl FnOnce(&mut Tokens) -> T) -> Result<T> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.tokens_path();
        let lock_path = path.with_extension("lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| StoreError::io(lock_path.clone(), e))?;
        // Writers (two `dopc token` commands) take turns; released when `lock` is closed.
        lock.lock().map_err(|e| StoreError::io(lock_path, e))?;
        let mut tokens = self.read_tokens()?;
        let result = change(&mut tokens);
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| StoreError::io(tmp.clone(), e))?;
        f.write_all(&serde_json::to_vec_pretty(&tokens).unwrap_or_default())
            .and_then(|()| f.sync_all())
            .map_err(|e| StoreError::io(tmp.clone(), e))?;
        std::fs::rename(&tmp, &path).map_err(|e| StoreError::io(path, e))?;
        drop(lock);
        Ok(result)
    }
}
