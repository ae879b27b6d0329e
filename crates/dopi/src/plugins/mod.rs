//! The plugins: local ones (`custom`, `dummy`) and the ones that work on the node over SSH.

pub mod checks;
pub mod custom;
pub mod dummy;
pub mod puppet;
pub mod ssh_custom;
pub mod ssh_more;
