//! dopc's bounds and races, end to end against the real `dopc serve` on an ephemeral port:
//! many racing requests (bounded in count and time) that must not start an execution twice,
//! bring a finished one back to `running`, or change a plan under a running execution; and
//! request fields that must not overflow. Plans here have baremetal nodes and `custom` steps,
//! which run on the server's machine: no node, no traffic beyond 127.0.0.1.

use std::time::{Duration, Instant};

use dop_testbed::dopc::DopcServer;
use serde_json::{json, Value};

/// A server with an HTTP client.
struct Server {
    dopc: DopcServer,
    http: reqwest::Client,
}

impl Server {
    fn start() -> Server {
        Server {
            dopc: DopcServer::start(env!("CARGO_BIN_EXE_dopc"), "tests"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/api/v1{path}", self.dopc.url()))
            .bearer_auth(self.dopc.token());
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn execute(&self, plan: &str, task: &str, options: Value) -> u64 {
        let (status, body) = self
            .post(
                "/executions",
                json!({"plan": plan, "task": task, "options": options}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_u64().unwrap()
    }

    /// Waits (up to 60 s) until the execution has finished; returns it.
    async fn wait(&self, id: u64) -> Value {
        let t = Instant::now();
        loop {
            let (_, e) = self.get(&format!("/executions/{id}")).await;
            if is_final(&e) {
                return e;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "execution {id} did not finish: {e}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_status(&self, id: u64, status: &str) {
        let t = Instant::now();
        loop {
            let (_, e) = self.get(&format!("/executions/{id}")).await;
            if e["status"] == status {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "execution {id} never became {status}: {e}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The execution's events (all of them).
    async fn events(&self, id: u64) -> Vec<Value> {
        let (status, body) = self.get(&format!("/executions/{id}/log?since=0")).await;
        assert_eq!(status, 200, "{body}");
        body["events"].as_array().cloned().unwrap_or_default()
    }

    /// The iteration numbers the execution's parts said they run.
    async fn iterations_run(&self, id: u64) -> Vec<u64> {
        self.events(id)
            .await
            .iter()
            .filter_map(|ev| ev["fields"]["iteration"].as_u64())
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.dopc.kill();
    }
}

fn is_final(e: &Value) -> bool {
    ["done", "failed", "cancelled"].contains(&e["status"].as_str().unwrap_or(""))
}

/// A plan of baremetal nodes whose one step runs `exec` on the server's machine.
fn plan(name: &str, exec: &str) -> String {
    format!(
        "name: {name}\ninfrastructures: {{l: {{type: baremetal}}}}\nnodes:\n  a: {{infrastructure: l}}\n\
         steps:\n  default:\n    - {{name: one, nodes: all, command: {{plugin: custom, exec: '{exec}'}}}}\n"
    )
}

async fn add_plan(server: &Server, text: &str) {
    let (status, body) = server
        .post("/plans", json!({"text": text, "force": true}))
        .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_age_that_overflows_is_refused_and_removes_nothing() {
    let server = Server::start();
    add_plan(&server, &plan("age", "true")).await;
    let id = server.execute("age", "reset", json!({"force": true})).await;
    assert_eq!(server.wait(id).await["status"], "done");

    // In milliseconds this wraps: (u64::MAX / 1000 + 1) * 1000 mod 2^64 is 616 ms, so every
    // finished execution was old enough.
    let age = u64::MAX / 1000 + 1;
    let (status, body) = server
        .call(
            reqwest::Method::DELETE,
            "/executions",
            Some(json!({"statuses": ["done"], "age": age})),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`age`") && message.contains(&(u64::MAX / 1000).to_string()),
        "{message}"
    );
    assert_eq!(server.get(&format!("/executions/{id}")).await.0, 200);

    // The largest age that fits is accepted, and nothing is that old.
    let (status, removed) = server
        .call(
            reqwest::Method::DELETE,
            "/executions",
            Some(json!({"statuses": ["done"], "age": u64::MAX / 1000})),
        )
        .await;
    assert_eq!((status, removed), (200, json!([])));
    assert_eq!(server.get(&format!("/executions/{id}")).await.0, 200);
}

/// Racing submits and cancels: each execution starts at most once (one `execution_started`
/// event, none for one cancelled before it started), none goes back to `running` after it
/// finished, and the plan can be removed afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_submits_and_cancels_start_each_execution_once_and_never_revive_one() {
    const EXECUTIONS: usize = 50;
    let server = std::sync::Arc::new(Server::start());
    add_plan(&server, &plan("race", "true")).await;

    let mut racers = tokio::task::JoinSet::new();
    for n in 0..EXECUTIONS {
        let server = server.clone();
        racers.spawn(async move {
            // Resets end at once, runs a moment later: ends race with submits and cancels.
            let task = if n % 2 == 0 { "reset" } else { "run" };
            let id = server.execute("race", task, json!({"force": true})).await;
            if n % 3 != 0 {
                for _ in 0..2 {
                    let (status, body) = server
                        .post(&format!("/executions/{id}/cancel"), json!({}))
                        .await;
                    assert!(status == 200 || status == 409, "{status} {body}");
                }
            }
            id
        });
    }
    let mut ids = Vec::new();
    while let Some(id) = racers.join_next().await {
        ids.push(id.unwrap());
    }
    ids.sort_unstable();
    assert_eq!(ids.len(), EXECUTIONS);

    let mut ended = Vec::new();
    for &id in &ids {
        ended.push(server.wait(id).await);
    }
    // Nothing that ended is running again a moment later (a late cancel wrote `running` back).
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (id, before) in ids.iter().zip(&ended) {
        let (_, now) = server.get(&format!("/executions/{id}")).await;
        assert_eq!(now["status"], before["status"], "execution {id}: {now}");
        let started = server
            .events(*id)
            .await
            .iter()
            .filter(|ev| ev["kind"] == "execution_started")
            .count();
        let expected = usize::from(now["started_at"].is_string());
        assert_eq!(
            started, expected,
            "execution {id} started {started} times: {now}"
        );
        if now["status"] == "done" {
            assert_eq!(
                started, 1,
                "execution {id} is done without having run: {now}"
            );
        }
    }
    let (status, body) = server
        .call(reqwest::Method::DELETE, "/plans/race", None)
        .await;
    assert_eq!(status, 200, "the plan is not left busy: {body}");
}

/// `POST /plans` with `force` is an update: refused while an execution of the plan runs, and
/// the running execution's iteration stays the latest.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forced_add_does_not_replace_a_plan_under_a_running_execution() {
    let server = Server::start();
    add_plan(&server, &plan("forced", "sleep 3")).await;
    let id = server.execute("forced", "run", json!({})).await;
    server.wait_status(id, "running").await;
    let (status, body) = server
        .post(
            "/plans",
            json!({"text": plan("forced", "echo replaced"), "force": true}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("running execution"),
        "{body}"
    );
    let (_, versions) = server.get("/plans/forced/versions").await;
    assert_eq!(
        versions["versions"].as_array().unwrap().len(),
        1,
        "{versions}"
    );
    assert_eq!(server.wait(id).await["status"], "done");
    assert_eq!(server.iterations_run(id).await, vec![1]);
    // Once it has ended, the same request is an update.
    let (status, body) = server
        .post(
            "/plans",
            json!({"text": plan("forced", "echo replaced"), "force": true}),
        )
        .await;
    assert_eq!(
        (status, body["status"].as_str()),
        (201, Some("updated")),
        "{body}"
    );
}

/// The run lock is the execution's from before dopv's part reads the plan to after dopi's
/// part: its holder names the dopc execution while dopi's step runs (before, dopv and dopi
/// each took and released it, and a plan update could come between them).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_setup_holds_its_plan_across_the_dopv_and_dopi_parts() {
    let server = Server::start();
    add_plan(&server, &plan("held", "sleep 3")).await;
    let id = server.execute("held", "setup", json!({})).await;
    server.wait_status(id, "running").await;
    let store = dop_store::Store::open(&server.dopc.path().join("store")).unwrap();
    let t = Instant::now();
    let holder = loop {
        // dopi's step has started once its node's command is under way.
        let (_, log) = server.get(&format!("/executions/{id}/log?since=0")).await;
        let running = log["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|ev| ev["kind"] == "command_started");
        if running {
            break store.lock_holder("held");
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "dopi never ran: {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let holder = holder.expect("the plan's run lock is held while dopi runs");
    assert_eq!(
        holder.command,
        format!("dopc execution {id} (setup)"),
        "{holder:?}"
    );
    assert_eq!(server.wait(id).await["status"], "done");
    assert!(store.lock_holder("held").is_none(), "released at the end");
}

/// Plan updates racing setups: every setup's dopi part runs the iteration its dopv part
/// deployed, and an update is either refused (409) or stored whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plan_updates_racing_setups_never_split_an_execution_across_iterations() {
    const SETUPS: usize = 12;
    const UPDATES: usize = 60;
    let server = std::sync::Arc::new(Server::start());
    add_plan(&server, &plan("split", "true")).await;
    let updater = {
        let server = server.clone();
        tokio::spawn(async move {
            let mut stored = 0;
            for n in 0..UPDATES {
                let text = plan("split", &format!("echo {n}"));
                let (status, body) = if n % 2 == 0 {
                    server
                        .post("/plans", json!({"text": text, "force": true}))
                        .await
                } else {
                    server
                        .call(
                            reqwest::Method::PUT,
                            "/plans/split",
                            Some(json!({"text": text})),
                        )
                        .await
                };
                match status {
                    200 | 201 => stored += 1,
                    409 => {}
                    other => panic!("update {n}: {other} {body}"),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            stored
        })
    };
    let mut setups = Vec::new();
    for _ in 0..SETUPS {
        setups.push(server.execute("split", "setup", json!({})).await);
    }
    let stored = updater.await.unwrap();
    for id in setups {
        let e = server.wait(id).await;
        assert_eq!(e["status"], "done", "{e}");
        let iterations = server.iterations_run(id).await;
        assert_eq!(
            iterations.len(),
            2,
            "dopv's and dopi's start: {iterations:?}"
        );
        assert_eq!(
            iterations[0], iterations[1],
            "execution {id}: dopv deployed iteration {} and dopi ran {}",
            iterations[0], iterations[1]
        );
    }
    let (_, versions) = server.get("/plans/split/versions").await;
    assert_eq!(
        versions["versions"].as_array().unwrap().len(),
        stored + 1,
        "every accepted update is one iteration: {versions}"
    );
}

/// A preview (`noop`) deploy takes the plan's run lock too: with another process holding it,
/// the preview fails and says who holds it (before, it read the plan under another writer).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_noop_deploy_takes_the_run_lock() {
    let server = Server::start();
    add_plan(&server, &plan("preview", "true")).await;
    let store = dop_store::Store::open(&server.dopc.path().join("store")).unwrap();
    let held = store.lock("preview", "a test holding the plan").unwrap();
    let id = server
        .execute("preview", "deploy", json!({"noop": true}))
        .await;
    let e = server.wait(id).await;
    assert_eq!(e["status"], "failed", "{e}");
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("a test holding the plan"),
        "{e}"
    );
    drop(held);
    let id = server
        .execute("preview", "deploy", json!({"noop": true}))
        .await;
    assert_eq!(server.wait(id).await["status"], "done");
}

/// The server's open file descriptors.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Connections that send nothing, `LIMIT + 50` of them: the server keeps at most `LIMIT`
/// (its descriptors stay bounded), closes the others at once and the kept ones when no
/// request head came within the header-read timeout. Within the limit, an authenticated
/// request is served while idle connections are open; after a flood, at once again.
async fn idle_connections_are_bounded_and_closed(server: &Server, tls: bool) {
    const LIMIT: usize = 16;
    let address: std::net::SocketAddr = server
        .dopc
        .url()
        .rsplit_once("://")
        .unwrap()
        .1
        .parse()
        .unwrap();
    let pid = server.dopc.pid();
    assert_eq!(server.get("/plans").await.0, 200);
    let before = open_fds(pid);

    let mut idle = Vec::new();
    for _ in 0..LIMIT + 50 {
        idle.push(tokio::net::TcpStream::connect(address).await.unwrap());
    }
    // Give the server a moment to accept (and refuse) them all: its descriptors are bounded.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let during = open_fds(pid);
    assert!(
        during <= before + LIMIT + 4,
        "{during} descriptors open with {} idle connections (before: {before}, limit {LIMIT})",
        idle.len()
    );
    // Every one of them ends: refused at once or timed out (2 s), well within 30 s.
    let t = Instant::now();
    let mut closed = tokio::task::JoinSet::new();
    for mut c in idle {
        closed.spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 64];
            matches!(
                tokio::time::timeout(Duration::from_secs(30), c.read(&mut buf)).await,
                Ok(Ok(0) | Err(_))
            )
        });
    }
    while let Some(ended) = closed.join_next().await {
        assert!(ended.unwrap(), "an idle connection was kept beyond 30 s");
    }
    assert!(t.elapsed() < Duration::from_secs(30));
    assert_eq!(
        server.get("/plans").await.0,
        200,
        "served again after a flood"
    );

    // Within the limit, idle connections do not keep an authenticated request out.
    let mut some = Vec::new();
    for _ in 0..LIMIT / 2 {
        some.push(tokio::net::TcpStream::connect(address).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = server.get("/plans").await;
    assert_eq!(status, 200, "tls {tls}: {body}");
    drop(some);
}

const BOUNDS: &str = "max_connections = 16\nheader_read_timeout_secs = 2\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_connections_are_bounded_and_closed_over_http() {
    let server = Server {
        dopc: DopcServer::start_with_config(env!("CARGO_BIN_EXE_dopc"), "tests", BOUNDS),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
    };
    idle_connections_are_bounded_and_closed(&server, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_connections_are_bounded_and_closed_over_https() {
    let certs = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
        ])
        .current_dir(certs.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let d = certs.path().display();
    let config = format!("{BOUNDS}[tls]\ncert = \"{d}/server.pem\"\nkey = \"{d}/server.key\"\n");
    let ca = std::fs::read(certs.path().join("server.pem")).unwrap();
    let server = Server {
        dopc: DopcServer::start_with_config(env!("CARGO_BIN_EXE_dopc"), "tests", &config),
        http: reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
    };
    assert!(
        server.dopc.url().starts_with("https://"),
        "{}",
        server.dopc.url()
    );
    idle_connections_are_bounded_and_closed(&server, true).await;
}

/// A 50 MB log and a 50 MB events file: the whole log, events after a number (a page of them)
/// and a websocket catch-up are served with the server's peak memory growing far less than
/// the files (before, each request read its whole file into memory, and the answer again).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_logs_are_streamed_and_events_found_without_reading_the_file() {
    use futures_util::StreamExt;
    use std::io::Write;
    const SIZE: usize = 50 * 1024 * 1024;
    let server = Server::start();
    add_plan(&server, &plan("big", "true")).await;
    let id = server.execute("big", "reset", json!({"force": true})).await;
    assert_eq!(server.wait(id).await["status"], "done");
    let dir = server
        .dopc
        .path()
        .join("logs")
        .join("big")
        .join(format!("dopc-{id}"));

    // The execution's files, replaced by large ones.
    let line = |n: usize| {
        format!(
            "2026-12-07T00:00:00Z INFO a: line {n:08} {}\n",
            "x".repeat(80)
        )
    };
    let mut text = String::with_capacity(SIZE + 200);
    let mut n = 0;
    while text.len() < SIZE {
        text.push_str(&line(n));
        n += 1;
    }
    std::fs::write(dir.join("all.log"), &text).unwrap();
    let mut events =
        std::io::BufWriter::new(std::fs::File::create(dir.join("events.jsonl")).unwrap());
    let (mut written, mut last) = (0, 0u64);
    while written < SIZE {
        last += 1;
        let ev = json!({"seq": last, "time_ms": last, "level": "info", "kind": "message",
                        "node": "a", "message": "y".repeat(400)});
        let l = format!("{ev}\n");
        written += l.len();
        events.write_all(l.as_bytes()).unwrap();
    }
    events.flush().unwrap();
    drop(events);

    let pid = server.dopc.pid();
    let peak_before = dop_testbed::process::peak_rss_kib(pid);
    // The whole log, read as a stream by the client too.
    let res = server
        .http
        .get(format!("{}/api/v1/executions/{id}/log", server.dopc.url()))
        .bearer_auth(server.dopc.token())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut res = res;
    let mut body = Vec::with_capacity(SIZE + 1024);
    while let Some(piece) = res.chunk().await.unwrap() {
        body.extend_from_slice(&piece);
    }
    let answer: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["execution"], id);
    assert!(
        answer["log"].as_str().unwrap() == text,
        "the log's text differs"
    );
    drop((body, answer));

    // Exactly the events after a number, and a page of the first ones.
    let (status, tail) = server
        .get(&format!("/executions/{id}/log?since={}", last - 10))
        .await;
    assert_eq!(status, 200);
    let seqs: Vec<u64> = tail["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, ((last - 9)..=last).collect::<Vec<_>>());
    assert_eq!(tail["last_seq"], last);
    let (_, page) = server
        .get(&format!("/executions/{id}/log?since=0&limit=5"))
        .await;
    let seqs: Vec<u64> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!((seqs, &page["last_seq"]), (vec![1, 2, 3, 4, 5], &json!(5)));

    // A websocket that resumes near the end gets the last events and the end.
    {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!(
            "{}/api/v1/executions/{id}/log/stream?since={}",
            server.dopc.url().replacen("http://", "ws://", 1),
            last - 3
        );
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert(
            "Authorization",
            format!("Bearer {}", server.dopc.token()).parse().unwrap(),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let mut got = Vec::new();
        let t = Instant::now();
        while let Some(msg) = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("the stream goes on")
        {
            let msg = msg.unwrap();
            if !msg.is_text() {
                continue;
            }
            let v: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
            if v["kind"] == "end" {
                assert_eq!(v["last_seq"], last);
                break;
            }
            got.push(v["seq"].as_u64().unwrap());
            assert!(t.elapsed() < Duration::from_secs(30));
        }
        assert_eq!(got, vec![last - 2, last - 1, last]);
    }

    let grown_kib = dop_testbed::process::peak_rss_kib(pid).saturating_sub(peak_before);
    assert!(
        grown_kib * 1024 < (SIZE / 2) as u64,
        "the server's peak memory grew by {grown_kib} KiB serving a {} MiB log",
        SIZE >> 20
    );
}
