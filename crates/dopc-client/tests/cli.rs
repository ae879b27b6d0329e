//! The `dopc-client` binary against a real dopc server (in this test process, on an ephemeral
//! loopback port, stopped when the test ends): the commands an operator's laptop runs, and
//! their exit statuses.

use std::process::{Command, Output};
use std::sync::Arc;

/// A dopc server on 127.0.0.1:0 in a runtime of its own; stopped on drop.
struct Server {
    dir: tempfile::TempDir,
    url: String,
    token: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: tokio::runtime::Runtime,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(dop_store::Store::open(&dir.path().join("store")).unwrap());
        let token = dopc::auth::create(&store, "laptop", dopc::access::Role::Admin, &[]).unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let settings = dopc::server::ServeConfig {
            local_dir: Some(dir.path().join("local")),
            ..Default::default()
        };
        let logs = dir.path().join("logs");
        let task = runtime.spawn(async move {
            dopc::server::serve(listener, store, logs, &settings, async {
                let _ = stopped.await;
            })
            .await
        });
        Server {
            dir,
            url,
            token,
            stop: Some(stop),
            runtime,
            task: Some(task),
        }
    }

    /// `dopc-client ARGS` with this server's URL and token in the environment.
    fn client(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_dopc-client"))
            .env("DOPC_URL", &self.url)
            .env("DOPC_TOKEN", &self.token)
            .env("HOME", self.dir.path())
            .env_remove("DOPC_CA")
            .env_remove("DOPC_CLIENT_CONFIG")
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = self.runtime.block_on(task);
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const PLAN: &str = "name: laptop
infrastructures: {metal: {type: baremetal}}
nodes:
  n1.example.com: {infrastructure: metal}
steps:
  - name: hello
    nodes: all
    command: {plugin: custom, exec: 'true'}
";

#[test]
fn an_operator_manages_plans_from_the_client_alone() {
    let server = Server::start();
    let out = server.client(&["ping"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("dopc at {} answers\n", server.url)
    );

    let file = server.dir.path().join("laptop.yaml");
    std::fs::write(&file, PLAN).unwrap();
    let out = server.client(&["plan", "add", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "added plan 'laptop' as iteration 1\n");

    // The typed answer, as JSON for scripts.
    let out = server.client(&["plan", "list", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let list: dopc_client::api::PlanList = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.plans.len(), 1);
    assert_eq!(
        (list.plans[0].name.as_str(), list.plans[0].nodes),
        ("laptop", 1)
    );

    // An update shows what changed.
    std::fs::write(&file, PLAN.replace("'true'", "'echo hi'")).unwrap();
    let out = server.client(&["plan", "update", file.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stored: dopc_client::api::PlanStored = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stored.status, dopc_client::api::StoredStatus::Updated);
    assert_eq!(stored.diff.map(|d| (d.from, d.to)), Some((1, 2)));

    let out = server.client(&["plan", "versions", "laptop"]);
    assert_eq!(
        text(&out.stdout).lines().count(),
        2,
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn usage_errors_and_an_unreachable_server_have_their_own_statuses() {
    let server = Server::start();
    let out = server.client(&["plan", "lisst"]);
    assert_eq!(out.status.code(), Some(64), "{}", text(&out.stderr));
    let out = server.client(&["--url", "127.0.0.1:8780", "ping"]);
    assert_eq!(
        out.status.code(),
        Some(64),
        "a URL without a scheme is a usage error"
    );
    // A port nothing listens on (the server's own, after it stopped).
    let url = server.url.clone();
    drop(server);
    let out = Command::new(env!("CARGO_BIN_EXE_dopc-client"))
        .args(["--url", &url, "--timeout", "2", "ping"])
        .env_remove("DOPC_CLIENT_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("cannot reach dopc at"),
        "{}",
        text(&out.stderr)
    );
    let out = Command::new(env!("CARGO_BIN_EXE_dopc-client"))
        .args(["completion", "bash"])
        .output()
        .unwrap();
    assert!(
        text(&out.stdout).contains("_dopc__client()"),
        "{}",
        text(&out.stdout)
    );
}

/// The answers that were untyped JSON before (state, drift, monitor, a refused plan's
/// findings) arrive as the API's types, and their text forms read as they did.
#[test]
fn state_drift_monitor_and_refusals_arrive_typed() {
    use dopc_client::api::{MonitorDocument, MonitorSource, PlanState, RunState, SyncReason};
    use dopc_client::api::{NeededFlag, SyncState};

    let server = Server::start();
    let file = server.dir.path().join("laptop.yaml");
    std::fs::write(&file, PLAN).unwrap();
    let out = server.client(&["plan", "add", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let out = server.client(&["plan", "state", "laptop", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let state: PlanState = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((state.plan.as_str(), state.iteration), ("laptop", 1));
    let node = &state.nodes[0];
    assert_eq!(node.name, "n1.example.com");
    assert_eq!(node.sync.state, SyncState::Pending);
    assert_eq!(node.sync.reason, Some(SyncReason::NewInPlan));
    assert_eq!((node.status, node.generation), (None, None));
    assert_eq!(state.step_sets[0].steps[0].state, RunState::Ready);
    let out = server.client(&["plan", "state", "laptop"]);
    assert!(
        text(&out.stdout).starts_with("plan 'laptop': iteration 1, state serial ")
            && text(&out.stdout).contains("not deployed - ")
            && text(&out.stdout).contains("  [ready] step set 'default'\n"),
        "{}",
        text(&out.stdout)
    );

    let out = server.client(&["plan", "drift", "laptop", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("0 in sync, 1 pending, 0 drifted, 0 unknown")
            && text(&out.stdout).contains("refreshed never"),
        "{}",
        text(&out.stdout)
    );
    let out = server.client(&["plan", "drift", "laptop", "--json"]);
    let drift: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(drift["nodes"][0]["reason"], "new_in_plan", "{drift}");
    assert_eq!(drift["nodes"][0]["name"], "n1.example.com", "{drift}");

    let out = server.client(&[
        "plan",
        "monitor",
        "laptop",
        "--interval",
        "3600",
        "--auto-sync",
        "--interruptive",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let monitor: MonitorDocument = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(monitor.source, MonitorSource::Api);
    let settings = monitor.settings.unwrap();
    assert!(settings.auto_sync.interruptive && !settings.auto_sync.destructive);
    let out = server.client(&["plan", "monitor", "laptop"]);
    assert!(
        text(&out.stdout).starts_with(
            "plan 'laptop': refresh every 3600 s, auto-sync on (in place, reboot), then run \
             (set in api)\n"
        ),
        "{}",
        text(&out.stdout)
    );
    let out = server.client(&["plan", "monitor", "laptop", "--clear"]);
    assert_eq!(text(&out.stdout), "plan 'laptop' is not monitored\n");

    // The library: a refused plan's findings, and the state stream's first document.
    let client = dopc_client::client::Client::new(dopc_client::client::ClientConfig {
        url: server.url.clone(),
        token: Some(server.token.clone()),
        ..Default::default()
    })
    .unwrap();
    let refused = server
        .runtime
        .block_on(client.add_plan("name: broken\nnodes: 3\n", false))
        .unwrap_err();
    match refused {
        dopc_client::client::ClientError::Api {
            status, findings, ..
        } => {
            assert_eq!(status, 422);
            assert!(
                findings
                    .iter()
                    .any(|f| f.severity == dop_core::Severity::Error),
                "{findings:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    let mut seen = Vec::new();
    server
        .runtime
        .block_on(client.watch_state("laptop", |s| {
            seen.push(s.clone());
            false
        }))
        .unwrap();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].nodes[0].sync.held_back, Vec::<NeededFlag>::new());
}

/// A query value reaches the server as the caller wrote it: `&`, `=`, `#` and `+` in it are
/// encoded instead of ending the value, adding a parameter or cutting the query.
#[test]
fn query_values_are_sent_encoded() {
    let server = Server::start();
    let client = dopc_client::client::Client::new(dopc_client::client::ClientConfig {
        url: server.url.clone(),
        token: Some(server.token.clone()),
        ..Default::default()
    })
    .unwrap();
    let page = dopc_client::api::ExecutionPage::default();
    // Unencoded, the server read `plan=laptop` and `limit=0` (out of range: 422).
    for plan in ["laptop&limit=0", "a b+c#d"] {
        let listed = server
            .runtime
            .block_on(client.executions(Some(plan), None, &page))
            .unwrap_or_else(|e| panic!("{plan}: {e}"));
        assert!(listed.is_empty(), "{plan}: {listed:?}");
    }
}
