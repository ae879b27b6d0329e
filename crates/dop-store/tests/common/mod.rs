//! The backends the store's tests run on: sled in a temporary directory, and a database of its
//! own on a real PostgreSQL cluster ([`dop_testbed::postgres::PgCluster`] on 127.0.80.1),
//! which the tests running at the same time share and the last of them stops, by pid.
//! [`on_both_backends!`] makes a test of each.

#![allow(dead_code)] // each test binary uses its part

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};

use dop_store::Store;
use dop_testbed::postgres::PgCluster;

/// Where a test's store lives.
pub struct Bed {
    dir: tempfile::TempDir,
    url: Option<String>,
    _cluster: Option<Arc<PgCluster>>,
}

/// The cluster of the tests running now (none between them: the last one's drop stops it).
static CLUSTER: Mutex<Weak<PgCluster>> = Mutex::new(Weak::new());
static DATABASES: AtomicU32 = AtomicU32::new(0);

fn cluster() -> Arc<PgCluster> {
    let mut shared = CLUSTER.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(cluster) = shared.upgrade() {
        return cluster;
    }
    assert!(
        dop_testbed::postgres::available(),
        "PostgreSQL is not installed: `bash .ci/install-deps` installs it"
    );
    let cluster = Arc::new(PgCluster::start().expect("the PostgreSQL cluster starts"));
    *shared = Arc::downgrade(&cluster);
    cluster
}

impl Bed {
    /// sled in a new temporary directory.
    pub fn sled() -> Bed {
        Bed {
            dir: tempfile::tempdir().unwrap(),
            url: None,
            _cluster: None,
        }
    }

    /// A new database on the shared PostgreSQL cluster (and a directory for the documents).
    pub fn postgres() -> Bed {
        let cluster = cluster();
        let name = format!(
            "t{}_{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::Relaxed)
        );
        let url = cluster.create_database(&name).expect("a test database");
        Bed {
            dir: tempfile::tempdir().unwrap(),
            url: Some(url),
            _cluster: Some(cluster),
        }
    }

    /// The store directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The PostgreSQL URL, on that backend.
    pub fn url(&self) -> Option<&str> {
        self.url.as_deref()
    }

    /// The store, opened anew.
    pub fn open(&self) -> Store {
        Store::open_at(self.path(), self.url()).unwrap()
    }
}

/// `on_both_backends! { fn name(bed: &Bed) { … } }`: the test `name::sled` and the test
/// `name::postgres`, the same body on each backend.
#[allow(unused_macros)]
macro_rules! on_both_backends {
    ($(#[doc = $doc:literal])* fn $name:ident($bed:ident: &Bed) $body:block) => {
        $(#[doc = $doc])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            fn sled() {
                run(&common::Bed::sled());
            }

            #[test]
            fn postgres() {
                run(&common::Bed::postgres());
            }

            fn run($bed: &common::Bed) $body
        }
    };
}
