//! Where things live in a store directory, and the checks done before touching it.
//!
//! ```text
//! <store>/DOP_STORE                  marker: this directory is a dop store
//! <store>/catalog/                   sled: plan entries and the node → plan index
//! <store>/plans/<plan>/iterations/   sled: every stored iteration of the plan
//! <store>/plans/<plan>/state/        sled: dopi and dopv state records and their serial
//! <store>/plans/<plan>/run.lock      the run lock (flock) and who holds it
//! ```
//!
//! Iterations and state are separate databases because state is written after every
//! transition of a run and must open fast, while iterations grow large.

use std::path::{Path, PathBuf};

use crate::error::{Result, StoreError};

/// The marker file's name.
pub const MARKER: &str = "DOP_STORE";
/// The marker file's content.
pub const MARKER_CONTENT: &str = "dop store, format 1\n";

/// Paths of a store.
#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout under `root`.
    pub fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
        }
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The catalog database.
    pub fn catalog(&self) -> PathBuf {
        self.root.join("catalog")
    }

    /// The directory of a plan.
    pub fn plan_dir(&self, plan: &str) -> PathBuf {
        self.root.join("plans").join(plan)
    }

    /// A plan's iterations database.
    pub fn iterations(&self, plan: &str) -> PathBuf {
        self.plan_dir(plan).join("iterations")
    }

    /// A plan's state database.
    pub fn state(&self, plan: &str) -> PathBuf {
        self.plan_dir(plan).join("state")
    }

    /// The database of application records (dopc's executions and monitor settings).
    pub fn records(&self) -> PathBuf {
        self.root.join("dopc")
    }

    /// A plan's run lock file.
    pub fn run_lock(&self, plan: &str) -> PathBuf {
        self.plan_dir(plan).join("run.lock")
    }

    /// Makes sure `root` is a dop store: creates it (with its marker) when it does not exist or
    /// is empty, refuses a non-empty directory without the marker.
    pub fn ensure(&self) -> Result<()> {
        let marker = self.root.join(MARKER);
        match std::fs::read_to_string(&marker) {
            Ok(text) if text == MARKER_CONTENT => return Ok(()),
            Ok(text) => {
                return Err(StoreError::Corrupt {
                    path: marker,
                    reason: format!(
                        "unknown store format '{}'; this dop understands '{}'",
                        text.trim(),
                        MARKER_CONTENT.trim()
                    ),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
                return Err(StoreError::Foreign {
                    path: self.root.clone(),
                })
            }
            Err(e) => return Err(StoreError::io(&marker, e)),
        }
        match std::fs::read_dir(&self.root) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(StoreError::Foreign {
                        path: self.root.clone(),
                    });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&self.root).map_err(|e| StoreError::io(&self.root, e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
                return Err(StoreError::Foreign {
                    path: self.root.clone(),
                })
            }
            Err(e) => return Err(StoreError::io(&self.root, e)),
        }
        std::fs::write(&marker, MARKER_CONTENT).map_err(|e| StoreError::io(&marker, e))?;
        self.make_private_dirs()
    }

    /// Makes the directories of the databases (plans, their credentials, state, executions)
    /// readable by the store's owner only, whatever the umask: plan texts hold passwords.
    /// The store directory itself stays as the umask makes it, so that Puppet can read the
    /// Hiera data kept in it by default. Directories that exist are left as they are.
    fn make_private_dirs(&self) -> Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        for dir in [self.catalog(), self.root.join("plans"), self.records()] {
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(StoreError::io(&dir, e)),
            }
        }
        Ok(())
    }
}

/// Checks a plan name before it becomes a directory name: the plan-name rule of the format
/// (letters, digits, `_`, `-`; 1 to 255 bytes), which excludes `/`, `..` and NUL.
pub fn check_name(name: &str) -> Result<()> {
    dop_core::check_plan_name(name).map_err(StoreError::InvalidName)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_store_keeps_its_databases_to_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("store");
        Layout::new(&root).ensure().unwrap();
        for name in ["catalog", "plans", "dopc"] {
            let mode = std::fs::metadata(root.join(name))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o700, "{name}: {mode:o}");
        }
        // Opening it again changes nothing and fails on nothing.
        Layout::new(&root).ensure().unwrap();
    }

    #[test]
    fn names_that_could_escape_the_store_are_refused() {
        for bad in ["", "a/b", "..", "../x", "a\0b", "ok\n..", &"x".repeat(256)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        assert!(check_name("web-shop_2").is_ok());
    }

    #[test]
    fn foreign_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("something"), "x").unwrap();
        let err = Layout::new(dir.path()).ensure().unwrap_err();
        assert!(matches!(err, StoreError::Foreign { .. }), "{err}");
        let file = dir.path().join("something");
        assert!(matches!(
            Layout::new(&file).ensure().unwrap_err(),
            StoreError::Foreign { .. }
        ));
        let fresh = dir.path().join("new/store");
        Layout::new(&fresh).ensure().unwrap();
        Layout::new(&fresh).ensure().unwrap();
        std::fs::write(fresh.join(MARKER), "dop store, format 9\n").unwrap();
        assert!(matches!(
            Layout::new(&fresh).ensure().unwrap_err(),
            StoreError::Corrupt { .. }
        ));
    }
}
