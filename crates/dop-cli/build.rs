//! Records the git commit and the build profile for `--version`.
//!
//! The commit comes from `DOP_GIT_COMMIT` when it is set (packagers building from a source
//! tarball stamp it so), else from git. Cargo is told to rerun this script only when a file
//! that changes with a commit changes, and only files that exist: a missing file makes cargo
//! treat the script as always dirty, and `.git/index` changes on every `git status`; either
//! would rebuild dop-core and everything above it on every build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(root: &Path, args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .current_dir(root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The files whose change means a new commit is checked out: `HEAD` (a branch switch, a
/// detached checkout), the current branch's ref file (a commit on it), and `packed-refs`
/// (where git keeps refs after `git gc`), the reflog. Only those that exist.
fn commit_files(root: &Path) -> Vec<PathBuf> {
    // `logs/HEAD` (the reflog) changes with every commit, checkout and reset, also when the
    // branch ref is packed and a commit creates its loose file.
    let mut names = vec![
        "HEAD".to_string(),
        "packed-refs".to_string(),
        "logs/HEAD".to_string(),
    ];
    if let Some(branch) = git(root, &["symbolic-ref", "-q", "HEAD"]) {
        names.push(branch);
    }
    names
        .iter()
        .filter_map(|name| git(root, &["rev-parse", "--git-path", name]))
        .map(|path| root.join(path))
        .filter(|path| path.is_file())
        .collect()
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    println!("cargo:rerun-if-env-changed=DOP_GIT_COMMIT");
    // Always name at least one file, else cargo reruns the script on any change in the crate.
    println!("cargo:rerun-if-changed=build.rs");
    let stamped = std::env::var("DOP_GIT_COMMIT")
        .ok()
        .filter(|c| !c.trim().is_empty());
    let commit = match stamped {
        Some(commit) => commit,
        None => {
            for path in commit_files(&root) {
                println!("cargo:rerun-if-changed={}", path.display());
            }
            git(&root, &["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=DOP_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=DOP_BUILD_PROFILE={profile}");
}
