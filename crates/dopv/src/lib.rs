//! dopv: makes the infrastructure match a stored plan.
//!
//! * [`provider::Provider`] is what a cloud must offer; [`providers`] has `baremetal` and
//!   `local` (lightweight containers on this host).
//! * [`planner`] decides per node what a run does and why, from the newest plan iteration, the
//!   state ([`state`]) and what the provider reports ([`actual`]).
//! * [`standing`] says per node whether it is in sync, drifted, pending or unknown, from the
//!   state alone.
//! * [`driver::run`] carries a command out: `deploy`, `undeploy`, `refresh`, `sync`, each with
//!   `noop`.
#![deny(missing_docs)]

pub mod actual;
pub mod app;
pub mod cli;
pub mod driver;
pub mod hooks;
pub mod planner;
pub mod provider;
pub mod providers;
pub mod standing;
pub mod state;

pub use driver::{run, ActionResult, DopvError, NodeOutcome, Operation, Report, RunOptions};
pub use planner::Permissions;
