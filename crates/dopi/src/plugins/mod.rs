//! The plugins that run on the dopi host.

pub mod checks;
pub mod custom;
pub mod dummy;
pub mod ssh_custom;
pub mod ssh_more;
