//! The dop plan model: everything the three tools know about a plan before touching a machine.
//!
//! A plan is one YAML file (plus the files it includes) that names infrastructures, nodes,
//! credentials, hooks, configuration and step sets. This crate reads it and reports **every**
//! problem at once, each with its file, plan path and line ([`Diagnostic`]); it selects nodes
//! with [`NodeFilter`]s; and it computes what changed between two plans ([`PlanDiff`]).
//!
//! It does no I/O beyond reading plan files and checking that the secret files and hook
//! programs a plan names exist.
//!
//! ```
//! use dop_core::{load_str, LookupSettings};
//!
//! let text = "
//! name: demo
//! infrastructures:
//!   lab: {type: baremetal}
//! nodes:
//!   web{i}.example.com: {infrastructure: lab, range: '1..2'}
//! steps:
//!   - name: hello
//!     nodes: all
//!     command: {plugin: custom, exec: echo}
//! ";
//! let loaded = load_str(text, None, &LookupSettings::default());
//! let plan = loaded.plan.expect("valid");
//! assert_eq!(plan.nodes[1].name, "web02.example.com");
//! assert_eq!(plan.summary().to_string(), "plan 'demo' is valid: 2 nodes, 1 step set, 1 step");
//! ```
#![deny(missing_docs)]

mod configuration;
mod datasize;
mod diagnostic;
mod diff;
pub mod event;
mod filter;
mod hiera;
mod include;
mod load;
mod pattern;
pub mod plan;
mod secret_text;
mod settings;
pub mod time;
pub mod yaml;

pub use configuration::{HieraLevel, LookupSettings, Resolver, NO_ROLE};
pub use datasize::{DataSize, DataSizeError};
pub use diagnostic::{Diagnostic, Severity};
pub use diff::{Change, ChangeKind, FieldChange, PlanDiff, SECRET_CHANGED, SECRET_SHOWN};
pub use event::{Event, EventKind};
pub use filter::{
    ConfigSelector, FilterError, FilterFlags, Matches, NodeFacts, NodeFilter, Selection,
};
pub use hiera::{HieraError, SiteHiera};
pub use include::{expand_file, Expanded, IncludeError, Location, SourceMap, MAX_PLAN_BYTES};
pub use load::{load_file, load_str, Loaded};
pub use pattern::{Pattern, PatternError, Selector};
pub use plan::{check_plan_name, Plan, PlanSummary};
pub use secret_text::{mask_secret_scalars, MASKED_SCALAR};
pub use settings::{Config, ConfigError, Environment, Level, ProgramLimits};
