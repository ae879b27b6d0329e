//! dop and Puppet: everything Puppet reads from dop.
//!
//! * [`hiera`] writes the Hiera data of the stored plans (one JSON file per node and hierarchy
//!   level, swapped in atomically) that a Puppet server reads with Hiera 5's `json_data`;
//!   every plan change in any tool writes it ([`commands::after_plans_changed`]).
//! * [`autosign`] is the decision of `dop-puppet-autosign`, Puppet's policy-based autosign
//!   executable: sign a node's certificate only when it is in a stored plan, was deployed by
//!   dopv (or is pre-provisioned) and carries its own challenge, once.
//! * [`challenge`] keeps the nodes' single-use challenges (hashed), issued by dopv at deploy
//!   time and redeemed by `dop-puppet-autosign`.
//! * [`commands`] is the `hiera` command of dopi (sync, show, config).

pub mod app;
pub mod autosign;
pub mod challenge;
pub mod commands;
pub mod hiera;

pub use autosign::*;
