//! Roles through the site's own Hiera 5 configuration: real hiera.yaml trees in temp dirs.

use std::path::Path;

use dop_core::{load_str, LookupSettings, NodeFacts, Resolver};

const PLAN: &str = "
name: site
infrastructures: {lab: {type: baremetal}}
nodes:
  web01.example.com: {infrastructure: lab}
  db01.example.com: {infrastructure: lab}
  app01.example.com: {infrastructure: lab}
  other01.example.com: {infrastructure: lab}
  mq01.example.com: {infrastructure: lab}
configuration:
  nodes:
    app01.example.com: {role: app}
    db01.example.com: {role: from_the_plan}
steps:
  - name: web only
    roles: [web_Debian]
    command: {plugin: ssh/custom, exec: /bin/true}
";

fn write(dir: &Path, file: &str, text: &str) {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A site tree: node files, fact-driven JSON levels, a glob, mapped paths, common data.
fn site(dir: &Path) {
    write(
        dir,
        "hiera.yaml",
        r#"---
version: 5
defaults:
  datadir: data
  data_hash: yaml_data
hierarchy:
  - name: "Per-node data"
    path: "nodes/%{::trusted.certname}.yaml"
  - name: "Per-OS (JSON)"
    data_hash: json_data
    path: "os/%{facts.os.family}.json"
  - name: "Services"
    mapped_paths: [services, svc, "services/%{svc}.yaml"]
  - name: "Groups"
    glob: "groups/%{::hostname}/*.yaml"
  - name: "Common data"
    path: "common.yaml"
"#,
    );
    write(
        dir,
        "data/nodes/db01.example.com.yaml",
        "role: db\nport: 5432\n",
    );
    write(
        dir,
        "data/os/Debian.json",
        r#"{"role": "web_%{facts.os.family}", "other": 1}"#,
    );
    write(dir, "data/services/queue.yaml", "role: mq\n");
    write(dir, "data/groups/other01/zz.yaml", "role: late\n");
    write(dir, "data/groups/other01/aa.yaml", "nothing: here\n");
    write(dir, "data/groups/other01/bb.yaml", "role: grouped\n");
    write(dir, "data/common.yaml", "ntp: pool\n");
    // The Puppet facts cache: a Puppet::Node::Facts object.
    write(
        dir,
        "facts/web01.example.com.yaml",
        "--- !ruby/object:Puppet::Node::Facts\nname: web01.example.com\nvalues:\n  os:\n    family: Debian\n  services: []\n",
    );
    write(
        dir,
        "facts/mq01.example.com.json",
        r#"{"name": "mq01.example.com", "values": {"os": {"family": "RedHat"}, "services": ["none", "queue"]}}"#,
    );
}

fn settings(dir: &Path) -> LookupSettings {
    LookupSettings {
        hiera_yaml: Some(dir.join("hiera.yaml")),
        load_facts: true,
        facts_dir: Some(dir.join("facts")),
        role_default: Some("base".into()),
        ..LookupSettings::default()
    }
}

fn roles(settings: &LookupSettings) -> Vec<String> {
    let plan = load_str(PLAN, None, &LookupSettings::default())
        .plan
        .expect("valid");
    let r = Resolver::new(&plan, settings).unwrap();
    (0..r.len()).map(|i| r.role(i).to_string()).collect()
}

#[test]
fn roles_come_from_the_sites_hiera_then_the_plan_then_the_default() {
    let dir = tempfile::tempdir().unwrap();
    site(dir.path());
    assert_eq!(
        roles(&settings(dir.path())),
        [
            "web_Debian", // a fact-driven JSON level, the value interpolated
            "db",         // the certname level beats the plan's configuration
            "app",        // nothing in the site's Hiera: the plan's configuration
            "grouped",    // a glob, its files in sorted order, the first with the key wins
            "mq",         // mapped_paths over a fact's list (JSON facts cache)
        ]
    );
}

#[test]
fn without_facts_the_fact_levels_find_nothing() {
    let dir = tempfile::tempdir().unwrap();
    site(dir.path());
    let settings = LookupSettings {
        load_facts: false,
        ..settings(dir.path())
    };
    assert_eq!(roles(&settings), ["base", "db", "app", "grouped", "base"]);
}

#[test]
fn without_hiera_yaml_the_plan_decides_and_use_hiera_false_gives_the_default() {
    let dir = tempfile::tempdir().unwrap();
    site(dir.path());
    let plain = LookupSettings {
        role_default: Some("base".into()),
        ..LookupSettings::default()
    };
    assert_eq!(
        roles(&plain),
        ["base", "from_the_plan", "app", "base", "base"]
    );
    let off = LookupSettings {
        use_hiera: false,
        ..settings(dir.path())
    };
    assert_eq!(roles(&off), ["base"; 5]);
}

#[test]
fn a_step_selecting_roles_sees_the_sites_roles_at_load() {
    let dir = tempfile::tempdir().unwrap();
    site(dir.path());
    // With the site's Hiera, web01 has the role the step asks for: no warning.
    let loaded = load_str(PLAN, None, &settings(dir.path()));
    assert!(loaded.is_valid());
    assert_eq!(loaded.warnings().count(), 0, "{:?}", loaded.diagnostics);
    // Without it, nobody does.
    let loaded = load_str(PLAN, None, &LookupSettings::default());
    assert!(loaded.warnings().any(
        |d| d.message.contains("web_Debian' does not match any node")
            || d.message.contains("selects no node")
    ));
}

/// The message of a refused site, with the temp dir replaced.
fn refusal(dir: &Path, files: &[(&str, &str)]) -> String {
    for (file, text) in files {
        write(dir, file, text);
    }
    let plan = load_str(PLAN, None, &LookupSettings::default())
        .plan
        .expect("valid");
    let settings = settings(dir);
    let message = match Resolver::new(&plan, &settings) {
        Ok(_) => panic!("{files:?} was accepted"),
        Err(e) => e.to_string(),
    };
    // Loading the plan with these settings refuses it with the same cause.
    let loaded = load_str(PLAN, None, &settings);
    assert!(!loaded.is_valid());
    assert!(loaded.errors().any(|d| d.message.contains(&message)));
    message.replace(&dir.display().to_string(), "[DIR]")
}

#[test]
fn what_dop_cannot_evaluate_is_refused_naming_the_file_and_level() {
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        (
            "hiera 3",
            vec![(
                "hiera.yaml",
                ":backends: [yaml]\n:hierarchy: [\"nodes/%{::clientcert}\", common]\n",
            )],
        ),
        (
            "eyaml",
            vec![(
                "hiera.yaml",
                "version: 5\nhierarchy:\n  - name: secrets\n    lookup_key: eyaml_lookup_key\n    path: secrets.eyaml\n",
            )],
        ),
        (
            "custom data_hash",
            vec![(
                "hiera.yaml",
                "version: 5\nhierarchy:\n  - name: cmdb\n    data_hash: cmdb_data\n    path: x\n",
            )],
        ),
        (
            "lookup in a path",
            vec![(
                "hiera.yaml",
                "version: 5\nhierarchy:\n  - name: by zone\n    path: \"zones/%{lookup('zone')}.yaml\"\n",
            )],
        ),
        (
            "hiera() in a value",
            vec![
                (
                    "hiera.yaml",
                    "version: 5\nhierarchy:\n  - name: common\n    path: common.yaml\n",
                ),
                ("data/common.yaml", "role: \"%{hiera('x')}\"\n"),
            ],
        ),
        (
            "yaml that does not parse",
            vec![
                (
                    "hiera.yaml",
                    "version: 5\nhierarchy:\n  - name: common\n    path: common.yaml\n",
                ),
                ("data/common.yaml", "role: [web\n"),
            ],
        ),
        (
            "json that does not parse",
            vec![
                (
                    "hiera.yaml",
                    "version: 5\nhierarchy:\n  - name: common\n    data_hash: json_data\n    path: common.json\n",
                ),
                ("data/common.json", "{\"role\": }"),
            ],
        ),
        ("missing hiera.yaml", vec![]),
    ];
    let mut out = String::new();
    for (name, files) in cases {
        let dir = tempfile::tempdir().unwrap();
        out.push_str(&format!("{name}:\n  {}\n", refusal(dir.path(), &files)));
    }
    insta::assert_snapshot!(out);
}
