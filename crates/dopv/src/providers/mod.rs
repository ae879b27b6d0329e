//! The providers dopv has.

pub mod baremetal;
pub mod local;
pub mod openstack;
