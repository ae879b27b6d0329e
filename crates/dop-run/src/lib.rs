//! The frame every run of dopi and dopv works in, and that dopc hands them: what a run writes
//! down and how it is stopped.
//!
//! * [`logs`]: the execution log (`<log_dir>/<plan>/<id>/all.log`, one `<node>.log` per node,
//!   `events.jsonl` of numbered [`dop_core::Event`]s), echoed on standard error as lines or a
//!   status line ([`progress`]), fed live to dopc's subscribers;
//! * [`mask`]: secrets out of every line that is written;
//! * [`stop`]: the stop level of a run ([`RunStop`]), raised by SIGINT/SIGTERM and by the
//!   caller (dopc's cancel), never lowered; [`process`]: the process groups of what a run
//!   starts, signalled and killed as a whole;
//! * [`deployment`]: what dopi reads of dopv's records (generation, SSH address), so that dopi
//!   does not depend on dopv;
//! * [`retention`]: old execution logs removed by count per plan and by age ([`prune`], behind
//!   `dopi logs prune` and `dopv logs prune`), never dopc's.
//!
//! * [`blocking`]: the blocking pool for the store and providers ([`off_workers`]), and the
//!   runtime of a command line run.
//!
//! It depends on dop-core (the plan, the event words) and dop-store (the records it reads),
//! never on a tool.
#![deny(missing_docs)]

pub mod blocking;
pub mod deployment;
pub mod logs;
pub mod mask;
pub mod process;
pub mod progress;
pub mod retention;
pub mod stop;

pub use blocking::off_workers;
pub use logs::{Echo, ExecutionLog, NodeLog};
pub use mask::Masker;
pub use retention::{prune, PruneError, PruneReport, Retention};
pub use stop::{reached, Escalation, RunStop, Stop};
