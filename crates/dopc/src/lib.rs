//! dopc: the dop server. It keeps a queue of dopv and dopi executions per plan (one running at
//! a time), runs them in-process through the libraries, serves their logs (whole, per node, by
//! level, as events, live over websockets) and each plan's combined dopv + dopi state, behind
//! bearer tokens. Its monitor refreshes plans on a schedule and, where a plan's policy allows,
//! syncs what drifted; `/metrics` serves its numbers to Prometheus. See `docs/api.md`.
#![deny(missing_docs)]

pub mod access;
pub mod api;
pub mod app;
pub mod auth;
pub mod book;
pub mod commands;
pub mod connections;
pub mod error;
pub mod metrics;
pub mod monitor;
pub mod openapi;
pub mod records;
pub mod retention;
pub mod runner;
pub mod server;

/// The client and its commands live in `dopc-client` (an operator's machine installs it without
/// the server); these paths keep working.
pub use dopc_client::{cli, client};

/// The executions' wire types, from `dopc-client`.
pub mod execution {
    pub use dopc_client::api::{ExecOptions, Execution, Status, Task};
}
