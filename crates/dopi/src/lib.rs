//! dopi: runs a plan's steps on its nodes.
//!
//! [`run`] executes a step set of a stored plan: steps in order; within a step the selected
//! nodes' commands concurrently under `max_in_flight` and `max_per_role`, after a canary node
//! when `canary_host` is set. Every state transition is written to the plan store
//! ([`dop_store`]) before the run goes on, so a run that is killed resumes where it stopped:
//! done work is never redone, and work found `running` by the next run is put back to ready.
//! [`reset`] puts failed (or all) work back to ready, by step set, step and node.
//!
//! Commands are run by [`Plugin`]s from a [`Registry`]; the local ones are `custom` (a program
//! on the dopi host, per node), `dummy` and `noop`. Each execution writes
//! `<log_dir>/<plan>/<execution_id>/all.log`, one log per node, and `events.jsonl`.
#![deny(missing_docs)]

pub mod app;
pub mod cli;
mod engine;
pub mod exec;
mod plugin;
pub mod plugins;
mod reset;
pub mod ssh;
mod state;
pub mod update;

// How a run shows itself on standard error is part of `RunOptions`.
pub use dop_run::Echo;
pub use engine::{
    check_commands, run, Redeployed, RunError, RunOptions, RunReport, RunResult,
    DEFAULT_MAX_IN_FLIGHT,
};
pub use plugin::{
    params, CommandContext, CommandOptions, CommandOutcome, ParamProblem, Plugin, Reach, Registry,
};
pub use reset::{chosen_steps, reset, reset_holding, ResetError, ResetOptions};
pub use state::{
    record_key, step_hash, step_keys, CommandState, NodeStepState, PlanState, RunState,
};
