//! dopc's records in the store: executions (by number) and API tokens (by the hash of the
//! token), in `<store>/dopc`, opened per operation like every other database of the store, so
//! that `dopc token create` works while a server runs.

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
    /// API tokens, keyed by the SHA-256 of the token.
    Token,
}

impl Kind {
    fn prefix(self) -> &'static str {
        match self {
            Kind::Execution => "execution/",
            Kind::Token => "token/",
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
