//! What can go wrong with the store, in words an operator can act on.

use std::path::PathBuf;

use crate::lock::Holder;

/// A store error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The plan name would not be a safe directory name.
    #[error("invalid plan name: {0}")]
    InvalidName(String),
    /// The directory exists but is not a dop store.
    #[error(
        "{} is not a dop store (it is not empty and has no {} file); give --store-dir an empty \
         or new directory, or an existing store",
        path.display(),
        crate::layout::MARKER
    )]
    Foreign {
        /// The directory.
        path: PathBuf,
    },
    /// A database or record in the store is damaged.
    #[error("the store is damaged at {}: {reason}", path.display())]
    Corrupt {
        /// Where.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Another process keeps a database open longer than we wait.
    #[error("the store is busy: {} stayed locked by another process for {seconds} s", path.display())]
    Busy {
        /// The database.
        path: PathBuf,
        /// How long we waited.
        seconds: u64,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The plan is not in the store.
    #[error("no plan named '{0}' in the store; `list` shows the stored plans")]
    NoSuchPlan(String),
    /// The plan is in the store already.
    #[error("a plan named '{0}' is already in the store; use `update` to store a new iteration")]
    PlanExists(String),
    /// The iteration does not exist.
    #[error("plan '{plan}' has no iteration {number} (it has 1 to {latest})")]
    NoSuchIteration {
        /// The plan.
        plan: String,
        /// The iteration asked for.
        number: u64,
        /// The latest iteration.
        latest: u64,
    },
    /// The plan file is not valid.
    #[error("the plan is not valid ({errors} error{}); run `validate` for the details", if *errors == 1 { "" } else { "s" })]
    InvalidPlan {
        /// How many errors.
        errors: usize,
    },
    /// Nodes of the plan belong to other plans.
    #[error("{}", describe_conflicts(plan, conflicts))]
    NodeConflict {
        /// The plan being stored.
        plan: String,
        /// Node name and the plan that has it.
        conflicts: Vec<(String, String)>,
    },
    /// Another process holds the plan.
    #[error("plan '{plan}' is locked by {holder}; wait for it to finish, or stop it")]
    Locked {
        /// The plan.
        plan: String,
        /// Who holds it.
        holder: Holder,
    },
    /// The plan still has deployed nodes.
    #[error(
        "plan '{plan}' still has {count} deployed node{} in the dopv state ({}); undeploy them \
         first, or use --force to forget them",
        if *count == 1 { "" } else { "s" },
        nodes.join(", ")
    )]
    StillDeployed {
        /// The plan.
        plan: String,
        /// How many nodes.
        count: usize,
        /// Some of their names.
        nodes: Vec<String>,
    },
    /// A state write was based on an older serial.
    #[error("the state of plan '{plan}' moved on (serial {expected} expected, {actual} found); compute the change again")]
    StaleSerial {
        /// The plan.
        plan: String,
        /// The serial the caller saw.
        expected: u64,
        /// The serial in the store.
        actual: u64,
    },
    /// The store URL is not one dop can use.
    #[error(
        "the store URL '{url}' is not a PostgreSQL URL: {reason}; write it as \
         postgres://USER:PASSWORD@HOST:PORT/DATABASE (store_url, DOP_STORE_URL or --store-url)"
    )]
    BadUrl {
        /// The URL, its password hidden.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The PostgreSQL server cannot be reached.
    #[error(
        "cannot reach the PostgreSQL store {target}: {reason}; check that the server runs and \
         that store_url names its host and port"
    )]
    Unreachable {
        /// `user@host:port/database`.
        target: String,
        /// The client's error.
        reason: String,
    },
    /// The PostgreSQL server refused the login.
    #[error(
        "the PostgreSQL store {target} refused the login: {reason}; check the user and password \
         in store_url"
    )]
    LoginRefused {
        /// `user@host:port/database`.
        target: String,
        /// The server's message.
        reason: String,
    },
    /// The database was migrated by a newer dop.
    #[error(
        "the PostgreSQL store {target} has schema version {found}, newer than the {known} this \
         dop knows; use the dop that migrated it (or a newer one); nothing was changed"
    )]
    NewerSchema {
        /// `user@host:port/database`.
        target: String,
        /// The schema version found.
        found: u32,
        /// The newest this dop knows.
        known: u32,
    },
    /// A query on the PostgreSQL store failed.
    #[error("the PostgreSQL store {target} failed: {reason}")]
    Database {
        /// `user@host:port/database`.
        target: String,
        /// The server's or the client's message.
        reason: String,
    },
    /// Import of an original store failed.
    #[error("cannot import {}: {reason}", path.display())]
    Import {
        /// The file or directory.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn describe_conflicts(plan: &str, conflicts: &[(String, String)]) -> String {
    let shown: Vec<String> = conflicts
        .iter()
        .take(10)
        .map(|(node, other)| format!("'{node}' (in plan '{other}')"))
        .collect();
    let more = conflicts.len().saturating_sub(10);
    format!(
        "plan '{plan}' declares nodes that belong to other plans: {}{}; node names are unique \
         across the store",
        shown.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    )
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> StoreError {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Results of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;
