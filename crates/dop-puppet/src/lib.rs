//! dop and Puppet: everything Puppet reads from dop.
//!
//! * [`hiera`] writes the Hiera data of the stored plans (one JSON file per node and hierarchy
//!   level, swapped in atomically) that a Puppet server reads with Hiera 5's `json_data`;
//!   every plan change in any tool writes it ([`commands::after_plans_changed`]).
//! * [`autosign`] is the decision of `dop-puppet-autosign`, Puppet's policy-based autosign
//!   executable: sign a node's certificate only when it is in a stored plan (and knows its
//!   plan's challenge password when the plan has one).
//! * [`commands`] is the `hiera` command of dopi (sync, show, config).

pub mod app;
pub mod autosign;
pub mod commands;
pub mod hiera;

pub use autosign::*;
