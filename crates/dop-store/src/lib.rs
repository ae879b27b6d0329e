//! The dop plan store: every iteration of every plan, the diffs between them, the state dopi
//! and dopv keep for each plan, and the locks that keep two runs of one plan apart.
//!
//! A [`Store`] is a directory (`--store-dir`, `DOP_STORE_DIR`; `/var/lib/dop` for root, an XDG
//! data path otherwise) of sled databases behind the small [`Backend`] trait:
//!
//! * [`Store::add`] / [`Store::update`] keep each plan text (includes expanded), its parsed form
//!   and its SHA-256 as a numbered [`Iteration`]; an unchanged plan stores nothing.
//! * Node names are unique across the store: a plan that declares another plan's node is
//!   refused, naming both.
//! * [`Store::lock`] takes a plan's run lock (a `flock` the kernel releases when the holder
//!   dies), refusing a second holder with its pid, host and start time.
//! * [`Store::write_state`] writes dopi or dopv state records durably, with a serial that moves
//!   on with every write.
//!
//! [`Store::records`] and the documents hold what applications keep besides (dopc: executions,
//! monitor settings, tokens) without the store knowing what it is.
//!
//! No database stays open between operations (sled allows one process per database), so
//! reading commands work while a run holds the plan. The exceptions, a run's [`StateSession`]
//! and a server's held databases ([`Store::hold_databases`]), give a database up whenever
//! another process waits for it.
//!
//! ```
//! use dop_core::{load_str, LookupSettings};
//! use dop_store::{Store, Stored};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let store = Store::open(dir.path()).unwrap();
//! let text = "name: demo\ninfrastructures: {lab: {type: baremetal}}\nnodes: {n1: {infrastructure: lab}}\n";
//! let plan = load_str(text, None, &LookupSettings::default()).plan.unwrap();
//! assert!(matches!(store.add(text, &plan, None, false).unwrap(), Stored::New(_)));
//! assert!(matches!(store.update(text, &plan, None).unwrap(), Stored::Unchanged(_)));
//! assert_eq!(store.versions("demo").unwrap().len(), 1);
//! ```
#![deny(missing_docs)]

mod allocator;
mod backend;
mod error;
mod held;
mod import;
mod layout;
mod lock;
mod pg;
mod records;
mod session;
mod store;

pub use backend::{Backend, Batch, Database, HeldLock, SledBackend};
pub use error::{Result, StoreError};
pub use import::{import_store, ImportReport};
pub use layout::{check_name, Layout, MARKER};
pub use lock::{Holder, RunLock};
pub use pg::{PgBackend, SCHEMA_VERSION};
pub use records::Records;
pub use session::StateSession;
pub use store::{
    content_hash, App, Iteration, IterationInfo, PlanEntry, PlanLock, StateRecords, Store, Stored,
};
// Timestamps live in dop-core (the client crates need them without the store).
pub use dop_core::time::{now_ms, parse_rfc3339, rfc3339};
