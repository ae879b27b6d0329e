//! The dependency rules of docs/architecture.md, checked against the workspace's manifests:
//! which of our crates each crate may depend on (normal and build dependencies; tests and
//! benchmarks may use more). A test module: `cargo test -p xtask` runs it.

/// Each crate of ours and the crates of ours it may depend on.
const ALLOWED: &[(&str, &[&str])] = &[
    ("dop-core", &[]),
    ("dop-store", &["dop-core"]),
    ("dop-run", &["dop-core", "dop-store"]),
    ("dop-cli", &["dop-core", "dop-store", "dop-run"]),
    ("dop-puppet", &["dop-core", "dop-store", "dop-cli"]),
    (
        "dopi",
        &["dop-core", "dop-store", "dop-run", "dop-cli", "dop-puppet"],
    ),
    (
        "dopv",
        &["dop-core", "dop-store", "dop-run", "dop-cli", "dop-puppet"],
    ),
    ("dopc-client", &["dop-core", "dop-cli"]),
    (
        "dopc",
        &[
            "dop-core",
            "dop-store",
            "dop-run",
            "dop-cli",
            "dop-puppet",
            "dopi",
            "dopv",
            "dopc-client",
        ],
    ),
    ("dop-testbed", &[]),
];

#[test]
fn the_crates_depend_on_each_other_only_along_the_documented_arrows() {
    let out = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(crate::host::root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    let ours: Vec<&str> = packages.iter().filter_map(|p| p["name"].as_str()).collect();
    let mut wrong = Vec::new();
    for package in packages {
        let name = package["name"].as_str().unwrap();
        if name == "xtask" {
            continue;
        }
        let allowed = ALLOWED
            .iter()
            .find(|(crate_name, _)| *crate_name == name)
            .map(|(_, deps)| *deps)
            .unwrap_or_else(|| panic!("crate {name} is not in docs/architecture.md's arrows"));
        for dep in package["dependencies"].as_array().unwrap() {
            let dep_name = dep["name"].as_str().unwrap();
            let kind = dep["kind"].as_str().unwrap_or("normal");
            if kind != "dev" && ours.contains(&dep_name) && !allowed.contains(&dep_name) {
                wrong.push(format!("{name} -> {dep_name}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "dependencies against the arrows: {wrong:?}"
    );
}
