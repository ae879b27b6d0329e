//! `cargo xtask demo [PLANFILE]`: the bundled plan (or PLANFILE) shown as dopv and dopi would
//! deploy and run it, then the same plan taken through dopc end to end on local test nodes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use dop_core::{load_file, LookupSettings, NodeFacts, Resolver};

use crate::host::root;

pub fn run(plan_file: Option<PathBuf>) -> Result<(), String> {
    let plan_file = plan_file.unwrap_or_else(|| root().join("fixtures/plans/valid/demo.yaml"));
    println!("== dop demo: {}", plan_file.display());
    let settings = LookupSettings::default();
    let loaded = load_file(&plan_file, &settings);
    for d in &loaded.diagnostics {
        println!("{d}");
    }
    let plan = loaded.plan.ok_or("the demo plan is not valid")?;
    println!("{}\n", plan.summary());

    let resolver =
        Resolver::new(&plan, &settings).map_err(|e| format!("the demo plan's roles: {e}"))?;
    println!("== dopv would deploy");
    for infra in &plan.infrastructures {
        println!("infrastructure '{}' ({})", infra.name, infra.provider);
        for (i, node) in plan.nodes.iter().enumerate() {
            if node.infrastructure != infra.name {
                continue;
            }
            let size = node.sizing(infra.provider).map_or_else(
                || format!("flavor {}", node.flavor.as_deref().unwrap_or("m1.medium")),
                |s| format!("{} cores, {} memory, {} disk", s.cores, s.memory, s.storage),
            );
            println!("  + {:<20} role {:<6} {size}", node.name, resolver.role(i));
        }
    }
    println!();
    for set in &plan.step_sets {
        println!("== dopi would run step set '{}'", set.name);
        for (n, step) in set.steps.iter().enumerate() {
            let selection = step.filter.select(&resolver);
            let nodes: Vec<&str> = selection.nodes.iter().map(|&i| resolver.name(i)).collect();
            let commands: Vec<&str> = step.commands.iter().map(|c| c.title.as_str()).collect();
            println!("  {}. {} [{}]", n + 1, step.name, commands.join(", "));
            println!("     on {} node(s): {}", nodes.len(), nodes.join(", "));
        }
    }
    store_demo(&plan_file)?;
    println!(
        "\ndemo finished: through dopc, dopv deployed the plan's nodes and dopi ran its steps on \
         them over SSH; a plan change was previewed and applied, only the changed node ran its \
         steps again; everything was torn down and the server stopped"
    );
    Ok(())
}

/// Powers off the demo's nodes and removes its directories when the demo ends, pass or fail.
struct Scratch(PathBuf, Vec<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        let stopped = dopv::providers::local::stop_all(&self.0.join("local"));
        if stopped > 0 {
            println!("(stopped {stopped} demo node(s) left running)");
        }
        for dir in std::iter::once(&self.0).chain(&self.1) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A new directory under `parent` that only we can use: mode 0700, a random name (made with
/// `mkdtemp`'s guarantees), never one that existed before. The demo runs as root, and a name
/// such as `/tmp/dop-demo-<pid>` can be guessed and taken first by any user of the machine.
/// Removed by `Scratch` when the demo ends.
fn private_dir(parent: &Path, prefix: &str) -> Result<PathBuf, String> {
    tempfile::Builder::new()
        .prefix(prefix)
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(parent)
        .map(tempfile::TempDir::keep)
        .map_err(|e| {
            format!(
                "cannot make a private directory in {}: {e}",
                parent.display()
            )
        })
}

/// True when the real `puppet` is installed.
fn puppet_installed() -> bool {
    Command::new("puppet")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The demo plan's Puppet step (added when Puppet is installed): each node gets a manifest and
/// a `hiera.yaml` that reads the Hiera data dopc writes for the plan, then `puppet apply`
/// writes the node's role, looked up in that data, to `/var/www/role`.
fn puppet_step(hiera_dir: &Path) -> String {
    let indent =
        |text: &str| -> String { text.lines().map(|l| format!("            {l}\n")).collect() };
    format!(
        "    - name: configure with Puppet
      nodes: all
      commands:
        - plugin: ssh/file_deploy
          title: the Puppet manifest
          file: /root/dop-demo-site.pp
          content: |
{manifest}        - plugin: ssh/file_deploy
          title: the Hiera configuration
          file: /root/dop-demo-hiera.yaml
          content: |
{hiera}        - plugin: ssh/custom
          title: Puppet's directories (a new node's /var and /run are its own, and empty)
          exec: 'mkdir -p /var/lib/puppet /var/cache/puppet /var/log/puppet /run/puppet'
        - plugin: ssh/puppet_agent_run
          title: puppet apply
          apply: /root/dop-demo-site.pp
          arguments: '--hiera_config /root/dop-demo-hiera.yaml'
",
        manifest = indent("file { '/var/www/role': content => \"${lookup('role')}, from the plan's Hiera data\\n\" }"),
        hiera = indent(&dop_puppet::hiera::hiera_yaml(hiera_dir)),
    )
}

/// The literal key of the bundled plan, which the demo replaces with a pair it makes.
const DEMO_KEY_LINE: &str =
    "public_key: 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDemoKeyForTheDemoPlanOnly demo'";

/// What the demo's local nodes run, by the command that must be there and the Debian package
/// that brings it.
const DEMO_TOOLS: [(&str, &str); 4] = [
    ("/usr/sbin/sshd", "openssh-server"),
    ("ssh-keygen", "openssh-client"),
    ("unshare", "util-linux"),
    ("nsenter", "util-linux"),
];

/// True when `command` (a path, or a name looked up on `PATH`) is an existing file.
fn installed(command: &str) -> bool {
    if command.contains('/') {
        return Path::new(command).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(command).is_file()))
}

/// Makes sure the local nodes can run: root, and the tools of [`DEMO_TOOLS`], installed with
/// `.ci/install-deps demo` when missing (the demo must work before the test suite's own
/// installation ever ran).
fn demo_prerequisites() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(
            "the demo's local nodes are containers (namespaces), which need root: run \
                    `cargo xtask demo` as root (for example in a container)"
                .into(),
        );
    }
    let missing: Vec<&str> = DEMO_TOOLS
        .iter()
        .filter(|(command, _)| !installed(command))
        .map(|&(_, package)| package)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!(
        "== installing what the local nodes need: {} (.ci/install-deps demo)",
        missing.join(", ")
    );
    // Whether it worked is judged by what is there afterwards, not by its exit status.
    if let Err(e) = Command::new("bash")
        .arg(root().join(".ci/install-deps"))
        .arg("demo")
        .status()
    {
        println!("cannot run .ci/install-deps: {e}");
    }
    let still: Vec<&str> = DEMO_TOOLS
        .iter()
        .filter(|(command, _)| !installed(command))
        .map(|&(_, package)| package)
        .collect();
    if !still.is_empty() {
        return Err(format!(
            "could not install what the demo's nodes need ({}): install it with `apt-get install \
             {}` and run the demo again",
            still.join(", "),
            still.join(" ")
        ));
    }
    Ok(())
}

/// The demo proper, as an operator would do it through dopc: a server in a throw-away
/// directory, a token, the plan added, `setup` followed live, the combined state, a plan
/// change (a node removed, a node moved) previewed with `sync --noop` and applied with `sync
/// --destructive` (then dopi runs: only the changed node's steps run again), `teardown`, and
/// the server stopped. The server and the client are dopc's own libraries, the same code as
/// `dopc serve` and `dopc execution … --follow`.
fn store_demo(plan_file: &Path) -> Result<(), String> {
    demo_prerequisites()?;
    let dir = private_dir(&std::env::temp_dir(), "dop-demo-")?;
    // The nodes see the host's /srv (not its /tmp): the Hiera data goes there.
    let hiera_dir = match private_dir(Path::new("/srv"), "dop-demo-hiera-") {
        Ok(hiera_dir) => hiera_dir,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    };
    let puppet = puppet_installed();
    let _scratch = Scratch(dir.clone(), vec![hiera_dir.clone()]);
    let key = dir.join("demo_key");
    let keygen = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "dop demo", "-f"])
        .arg(&key)
        .status()
        .map_err(|e| format!("ssh-keygen: {e} (install openssh-client)"))?;
    if !keygen.success() {
        return Err("ssh-keygen could not make the demo key".into());
    }
    let mut original = std::fs::read_to_string(plan_file).map_err(|e| e.to_string())?;
    if puppet {
        println!(
            "== Puppet is installed: the default step set gets a `puppet apply` on every node"
        );
        let at = original
            .find("  maintenance:\n")
            .ok_or("the demo plan has no maintenance step set to put the Puppet step before")?;
        original.insert_str(at, &puppet_step(&hiera_dir));
    } else {
        println!("== Puppet is not installed (.ci/install-deps installs it): no Puppet step");
    }
    if !original.contains(DEMO_KEY_LINE) {
        return Err(format!(
            "{} has no demo key line to replace",
            plan_file.display()
        ));
    }
    let text = original.replace(
        DEMO_KEY_LINE,
        &format!(
            "public_key: {{file: {k}.pub}}\n    private_key: {{file: {k}}}",
            k = key.display()
        ),
    );
    let store =
        std::sync::Arc::new(dop_store::Store::open(&dir.join("store")).map_err(|e| e.to_string())?);
    println!("\n$ dopc token create demo");
    let token = dopc::auth::create(&store, "demo", dopc::access::Role::Admin, &[])
        .map_err(|e| e.to_string())?;
    println!("(a token, shown once; the demo keeps it)");

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .map_err(|e| e.to_string())?;
    let url = format!(
        "http://{}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    println!(
        "$ dopc serve --bind {}   (in the background)",
        url.trim_start_matches("http://")
    );
    let settings = dopc::server::ServeConfig {
        local_dir: Some(dir.join("local")),
        hiera_dir: Some(hiera_dir.clone()),
        ..Default::default()
    };
    let server = runtime.spawn({
        let (store, log_dir) = (store.clone(), dir.join("logs"));
        async move {
            dopc::server::serve(listener, store, log_dir, &settings, async {
                let _ = stop_rx.await;
            })
            .await
        }
    });
    let client = dopc::client::Client::new(dopc::client::ClientConfig {
        url: url.clone(),
        token: Some(token),
        ..Default::default()
    })
    .map_err(|e| e.to_string())?;
    let nodes_dir = puppet.then(|| dir.join("local/nodes/demo"));
    let result = runtime.block_on(demo_story(&client, &text, nodes_dir.as_deref()));
    let _ = stop_tx.send(());
    let _ = runtime.block_on(server);
    result?;
    Ok(())
}

/// Runs a task and follows its log to the end, as `dopc execution TASK PLAN --follow`.
async fn follow_task(
    client: &dopc::client::Client,
    task: dopc::execution::Task,
    options: dopc::execution::ExecOptions,
    flags: &str,
) -> Result<(u64, Vec<dopc_client::api::Event>), String> {
    println!("\n$ dopc execution {} demo{flags} --follow", task.name());
    let e = client
        .execute("demo", task, &options)
        .await
        .map_err(|e| e.to_string())?;
    let mut events = Vec::new();
    let status = client
        .follow(e.id, 0, std::time::Duration::from_secs(60), |ev| {
            print!("{}", dopc::cli::event_line(ev));
            events.push(ev.clone());
        })
        .await
        .map_err(|e| e.to_string())?;
    if status != dopc::execution::Status::Done {
        // What the nodes said, to see why (the demo's directory is removed at its end).
        if let Ok(log) = client.log(e.id, None, None).await {
            let text = log.log.as_str();
            let lines: Vec<&str> = text.lines().collect();
            println!("\n== the end of execution {}'s log", e.id);
            for line in &lines[lines.len().saturating_sub(60)..] {
                println!("{line}");
            }
        }
        return Err(format!(
            "execution {} of {} ended {status:?}",
            e.id,
            task.name()
        ));
    }
    Ok((e.id, events))
}

/// `nodes_dir` (the local provider's node directories) is given when the plan has the Puppet
/// step: what Puppet wrote on each node is shown and checked.
async fn demo_story(
    client: &dopc::client::Client,
    text: &str,
    nodes_dir: Option<&Path>,
) -> Result<(), String> {
    use dopc::execution::{ExecOptions, Task};
    println!("\n$ dopc plan add demo.yaml");
    let added = client
        .add_plan(text, false)
        .await
        .map_err(|e| e.to_string())?;
    println!("{} plan '{}'", added.status.name(), added.name);
    follow_task(client, Task::Setup, ExecOptions::default(), "").await?;
    if let Some(nodes_dir) = nodes_dir {
        println!("\n== Puppet wrote each node's role, looked up in the Hiera data dop wrote from the plan");
        for (node, role) in [("web01.demo.local", "web"), ("db01.demo.local", "db")] {
            // The node's /var is this directory on the host.
            let file = nodes_dir.join(node).join("var/www/role");
            let written =
                std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            println!("{node}:/var/www/role: {}", written.trim_end());
            if !written.starts_with(&format!("{role},")) {
                return Err(format!(
                    "Puppet wrote the wrong role on {node}: {written:?}"
                ));
            }
        }
    }
    println!("\n$ dopc plan state demo");
    print!(
        "{}",
        dopc::cli::state_text(&client.state("demo").await.map_err(|e| e.to_string())?)
    );

    // The plan changes: web03 leaves it, web02 moves to another address.
    let changed = text
        .replacen("  web03.demo.local:\n    infrastructure: lab\n    credentials: demo_ssh\n    interfaces: {eth0: {network: loopback, ip: 127.0.90.13}}\n", "", 1)
        .replacen("ip: 127.0.90.12}", "ip: 127.0.90.32}", 1);
    if changed.contains("web03.demo.local:\n    infrastructure") || !changed.contains("127.0.90.32")
    {
        return Err("the demo plan is not the one the demo expects (web02, web03)".into());
    }
    println!("\n$ dopc plan update demo.yaml   (web03 removed, web02 moved to 127.0.90.32)");
    let updated = client
        .update_plan("demo", &dopc_client::api::PlanUpload::text(&changed, false))
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "{} to iteration {}",
        updated.status.name(),
        updated.iteration.number
    );
    let noop = ExecOptions {
        noop: true,
        ..ExecOptions::default()
    };
    follow_task(client, Task::Sync, noop, " --noop").await?;
    let destructive = ExecOptions {
        destructive: true,
        ..ExecOptions::default()
    };
    let (_, events) = follow_task(client, Task::Sync, destructive, " --destructive").await?;
    let ran: std::collections::BTreeSet<String> = events
        .iter()
        .filter(|e| e.kind == dopc_client::api::EventKind::CommandFinished)
        .filter_map(|e| e.node.clone())
        .collect();
    println!(
        "\n== the steps ran again on: {}",
        ran.iter().cloned().collect::<Vec<_>>().join(", ")
    );
    if ran.iter().map(String::as_str).collect::<Vec<_>>() != ["web02.demo.local"] {
        return Err(format!(
            "only the redeployed web02 should have run its steps again, not {ran:?}"
        ));
    }
    follow_task(
        client,
        Task::Teardown,
        ExecOptions {
            rmdisk: true,
            ..ExecOptions::default()
        },
        " --rmdisk",
    )
    .await?;
    println!("\n$ dopc plan state demo");
    print!(
        "{}",
        dopc::cli::state_text(&client.state("demo").await.map_err(|e| e.to_string())?)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_demo_refuses_an_invalid_plan() {
        let plan = crate::host::root().join("fixtures/plans/invalid/wrong-types.yaml");
        assert!(super::run(Some(plan)).is_err());
    }

    #[test]
    fn the_demo_directories_cannot_be_guessed_or_taken_first() {
        let parent = tempfile::tempdir().unwrap();
        // What another user could have made beforehand under the name the demo used to take.
        let guessed = parent
            .path()
            .join(format!("dop-demo-{}", std::process::id()));
        std::os::unix::fs::symlink("/etc", &guessed).unwrap();
        let a = super::private_dir(parent.path(), "dop-demo-").unwrap();
        let b = super::private_dir(parent.path(), "dop-demo-").unwrap();
        assert_ne!(a, b);
        for dir in [&a, &b] {
            assert_ne!(dir, &guessed);
            use std::os::unix::fs::PermissionsExt;
            let meta = std::fs::symlink_metadata(dir).unwrap();
            assert!(meta.is_dir(), "{}", dir.display());
            assert_eq!(
                meta.permissions().mode() & 0o777,
                0o700,
                "{}",
                dir.display()
            );
        }
    }
}
