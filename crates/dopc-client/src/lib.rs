//! dopc-client: the client of a dopc server, for operators' machines. A library with typed
//! requests and answers (`api`, `client`) and the commands of the `dopc-client` binary (`cli`,
//! `app`), which the `dopc` server binary offers too. It depends on neither dopv, dopi, the
//! store nor the server: installing it needs no libvirt and no sled.
#![deny(missing_docs)]

pub mod api;
pub mod app;
pub mod cli;
pub mod client;
