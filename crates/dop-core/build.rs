//! Records the git commit and the build profile for `--version`.

use std::path::Path;
use std::process::Command;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    // A new commit or branch switch changes these: rebuild then, so the commit is never stale.
    for path in [".git/HEAD", ".git/index", ".git/packed-refs"] {
        println!("cargo:rerun-if-changed={}", root.join(path).display());
    }
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(&root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=DOP_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=DOP_BUILD_PROFILE={profile}");
}
