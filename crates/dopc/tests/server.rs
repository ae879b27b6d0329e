//! dopc end to end: the real `dopc serve` on an ephemeral port, a real HTTP client and a real
//! websocket client, local-provider nodes. Every server and node a test starts is stopped by
//! pid when the test ends, pass or fail.

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dop_testbed::dopc::DopcServer;
use dop_testbed::dopv::local_nodes_available;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

/// The dopc server of a test, with an HTTP client; its local nodes are stopped on drop (then
/// the server itself, by its own drop).
struct Server {
    dopc: DopcServer,
    http: reqwest::Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.dopc.kill();
        dopv::providers::local::stop_all(&self.dopc.path().join("local"));
    }
}

impl Deref for Server {
    type Target = DopcServer;
    fn deref(&self) -> &DopcServer {
        &self.dopc
    }
}

impl DerefMut for Server {
    fn deref_mut(&mut self) -> &mut DopcServer {
        &mut self.dopc
    }
}

impl Server {
    /// A server in a new directory, with a token.
    async fn start() -> Server {
        Server::start_with(None, reqwest::Client::builder()).await
    }

    /// A server with a `dopc.toml` (`DIR` in it becomes the server's directory).
    async fn start_with(config: Option<&str>, http: reqwest::ClientBuilder) -> Server {
        let bin = env!("CARGO_BIN_EXE_dopc");
        let dopc = match config {
            Some(text) => DopcServer::start_with_config(bin, "tests", text),
            None => DopcServer::start(bin, "tests"),
        };
        Server {
            dopc,
            http: http.timeout(Duration::from_secs(60)).build().unwrap(),
        }
    }

    /// Starts (again) the server process on a free port and waits for its address.
    fn launch(&mut self) {
        self.dopc.launch("127.0.0.1:0");
    }

    fn api(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.url())
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, self.api(path))
            .bearer_auth(self.token());
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

    /// Adds a plan (or updates it) from text.
    async fn plan(&self, text: &str) -> Value {
        let (status, body) = self
            .post("/plans", json!({"text": text, "force": true}))
            .await;
        assert!(status == 201, "{status} {body}");
        body
    }

    /// Starts an execution and returns its id.
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

    /// Waits until the execution has finished; returns it.
    async fn wait(&self, id: u64) -> Value {
        let t = Instant::now();
        loop {
            let (_, e) = self.get(&format!("/executions/{id}")).await;
            if ["done", "failed", "cancelled"].contains(&e["status"].as_str().unwrap_or("")) {
                return e;
            }
            if t.elapsed() > Duration::from_secs(90) {
                let (_, log) = self.get(&format!("/executions/{id}/log")).await;
                panic!(
                    "execution {id} did not finish: {e}\n{}",
                    log["log"].as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
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

    /// Waits until a command of the execution has started (`running` comes first: the
    /// execution holds its plan from then on, and its parts start after that).
    async fn wait_command_started(&self, id: u64) {
        self.wait_status(id, "running").await;
        let t = Instant::now();
        loop {
            let (_, log) = self.get(&format!("/executions/{id}/log?since=0")).await;
            let started = log["events"]
                .as_array()
                .is_some_and(|evs| evs.iter().any(|ev| ev["kind"] == "command_started"));
            if started {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "execution {id} never started a command: {log}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn ws(
        &self,
        path: &str,
    ) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>
    {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = self.api(path).replacen("http://", "ws://", 1);
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert(
            "Authorization",
            format!("Bearer {}", self.token()).parse().unwrap(),
        );
        tokio_tungstenite::connect_async(req).await.unwrap().0
    }
}

/// A plan of local nodes on `prefix`.x and `port`, with the steps given.
fn plan(
    name: &str,
    prefix: &str,
    port: u16,
    key: &Path,
    nodes: &[(&str, &str)],
    steps: &str,
) -> String {
    let mut text = format!(
        "name: {name}\ninfrastructures:\n  lab:\n    type: local\n    ssh_port: {port}\n    networks:\n      \
         lo: {{ip_pool: {{from: {prefix}.1, to: {prefix}.200}}, ip_netmask: 255.255.255.0, ip_defgw: false}}\n\
         credentials:\n  k: {{type: ssh_key, username: root, private_key: {{file: {k}}}, public_key: {{file: {k}.pub}}}}\n\
         nodes:\n",
        k = key.display()
    );
    for (node, ip) in nodes {
        text.push_str(&format!(
            "  {node}:\n    infrastructure: lab\n    credentials: [k]\n    interfaces: {{eth0: {{network: lo, ip: {ip}}}}}\n"
        ));
    }
    text.push_str(
        "configuration:\n  nodes:\n    db:\n      role: db\n  defaults:\n    role: web\n",
    );
    text.push_str(steps);
    text
}

/// A login key for the plan's nodes, in `dir`.
fn key(dir: &Path) -> PathBuf {
    let key = dir.join("key");
    dop_testbed::generate_key(&key, "dopc-tests").unwrap();
    key
}

const COUNT_STEPS: &str = "steps:\n  default:\n    - name: count\n      nodes: all\n      set_plugin_defaults:\n        \
                           - {plugins: '/^ssh/', credentials: k}\n      command: {plugin: ssh/custom, exec: 'hostname >> /root/runs; echo counted'}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_authentication() {
    let server = Server::start().await;
    let ping: Value = reqwest::get(server.api("/ping"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ping, json!({"pong": "pong"}));
    for (auth, what) in [
        (None, "no token"),
        (Some("Bearer dop_nope"), "unknown token"),
        (Some("Basic eDp5"), "another scheme"),
    ] {
        let mut req = server.http.get(server.api("/plans"));
        if let Some(a) = auth {
            req = req.header("Authorization", a);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status().as_u16(), 401, "{what}");
        assert_eq!(res.headers()["www-authenticate"], "Bearer realm=\"dopc\"");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized", "{what}");
    }
    // The original's header form works too.
    let res = server
        .http
        .get(server.api("/plans"))
        .header(
            "Authorization",
            format!("Token token=\"{}\"", server.token()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
    // Every documented endpoint but ping refuses a missing or unknown token (websockets too:
    // before the upgrade).
    let doc: Value = serde_json::from_str(include_str!("../../../docs/openapi.json")).unwrap();
    let endpoints: Vec<(reqwest::Method, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(path, _)| path.as_str() != "/api/v1/ping")
        .flat_map(|(path, methods)| {
            let url = format!(
                "{}{}",
                server.url(),
                path.replace("{name}", "plan").replace("{id}", "1")
            );
            methods
                .as_object()
                .unwrap()
                .keys()
                .map(|m| {
                    (
                        reqwest::Method::from_bytes(m.to_uppercase().as_bytes()).unwrap(),
                        url.clone(),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(endpoints.len() >= 22, "{}", endpoints.len());
    let refused_all = |token: Option<String>, what: &'static str| {
        let (http, endpoints) = (server.http.clone(), endpoints.clone());
        async move {
            for (method, url) in endpoints {
                let mut req = http.request(method.clone(), &url);
                if let Some(t) = &token {
                    req = req.bearer_auth(t);
                }
                let res = req.send().await.unwrap();
                assert_eq!(res.status().as_u16(), 401, "{method} {url} with {what}");
            }
        }
    };
    refused_all(None, "no token").await;
    refused_all(Some("dop_made_up".into()), "an unknown token").await;

    // A revoked token is refused from the next request on, while the server runs, everywhere.
    let out = server
        .command(&["token", "revoke", "tests"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(server.get("/plans").await.0, 401);
    refused_all(Some(server.token().to_string()), "a revoked token").await;
    let list = server
        .command(&["token", "list", "--json"])
        .output()
        .unwrap();
    let tokens: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert!(tokens[0]["revoked_ms"].is_u64());
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(server.token()),
        "the token is never shown again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_precise_error_and_the_server_goes_on() {
    let server = Server::start().await;
    let k = key(server.path());
    let raw = |body: &'static str, content_type: &'static str| {
        server
            .http
            .post(server.api("/executions"))
            .bearer_auth(server.token())
            .header("Content-Type", content_type)
            .body(body)
    };
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (raw("{\"plan\": ", "application/json"), 400, "bad_request"),
        (
            raw("{\"plan\": 5, \"task\": \"run\"}", "application/json"),
            422,
            "invalid_body",
        ),
        (
            raw("{\"plan\": \"p\", \"task\": \"fly\"}", "application/json"),
            422,
            "invalid_body",
        ),
        (
            raw(
                "{\"plan\": \"p\", \"task\": \"run\", \"colour\": 1}",
                "application/json",
            ),
            422,
            "invalid_body",
        ),
        (
            raw(
                "{\"plan\": \"p\", \"task\": \"run\", \"options\": {\"nodez\": \"a\"}}",
                "application/json",
            ),
            422,
            "invalid_body",
        ),
        (
            raw("plan=p", "application/x-www-form-urlencoded"),
            415,
            "unsupported_media_type",
        ),
        (
            raw(
                "{\"plan\": \"nowhere\", \"task\": \"run\"}",
                "application/json",
            ),
            422,
            "no_such_plan",
        ),
        (
            raw(
                "{\"plan\": \"../etc\", \"task\": \"run\"}",
                "application/json",
            ),
            422,
            "invalid_name",
        ),
    ];
    for (req, status, code) in cases {
        let res = req.send().await.unwrap();
        let got = res.status().as_u16();
        let body: Value = res.json().await.unwrap();
        assert_eq!(
            (got, body["error"]["code"].as_str().unwrap()),
            (status, code),
            "{body}"
        );
    }
    let huge = "x".repeat(9 * 1024 * 1024);
    // Its own client: the server answers before reading the body and closes the connection,
    // which a pooled connection of the shared client would trip over on its next request.
    // The server may also close the connection while the client still writes: then the
    // request is dropped, which is allowed; an answer must be 413.
    let res = reqwest::Client::new()
        .post(server.api("/plans"))
        .bearer_auth(server.token())
        .json(&json!({"text": huge}))
        .send()
        .await;
    if let Ok(res) = res {
        assert_eq!(res.status().as_u16(), 413);
    }
    assert_eq!(server.get("/plans/nowhere").await.0, 404);
    assert_eq!(server.get("/executions/99").await.0, 404);
    assert_eq!(server.get("/executions/abc").await.0, 404);
    assert_eq!(server.get("/no/such/thing").await.0, 404);
    // An invalid plan: 422 with every finding, its path and line.
    let (status, body) = server.post("/plans", json!({"text": "name: bad\ninfrastructures: {l: {type: aws}}\nnodes: {n: {infrastructure: l}}\n"})).await;
    assert_eq!(status, 422);
    assert_eq!(body["error"]["code"], "invalid_plan");
    let details = body["error"]["details"].as_array().unwrap();
    assert!(
        details
            .iter()
            .any(|d| d["path"] == "infrastructures.l.type" && d["line"] == 2),
        "{body}"
    );
    // Every invalid plan of the corpus (type confusion, alias bombs, deep nesting, shell and
    // path text in names, bad patterns…): 422 with findings, nothing stored.
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/plans/invalid");
    let mut sent = 0;
    for entry in std::fs::read_dir(&corpus).unwrap() {
        let path = entry.unwrap().path();
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue; // not UTF-8: JSON cannot carry it
        };
        if path.extension().is_none_or(|e| e != "yaml") || text.contains("include:") {
            continue; // includes are expanded by the client
        }
        let (status, body) = server.post("/plans", json!({ "text": text })).await;
        assert_eq!(status, 422, "{}: {body}", path.display());
        assert_eq!(body["error"]["code"], "invalid_plan", "{}", path.display());
        assert!(
            !body["error"]["details"].as_array().unwrap().is_empty(),
            "{}: {body}",
            path.display()
        );
        sent += 1;
    }
    assert!(sent >= 10, "only {sent} plans of the corpus sent");
    let (_, plans) = server.get("/plans").await;
    assert_eq!(plans["plans"].as_array().unwrap().len(), 0, "{plans}");
    // A run for a step set the plan does not have.
    server
        .plan(&plan(
            "ok",
            "127.0.71",
            2341,
            &k,
            &[("web1", "127.0.71.1")],
            COUNT_STEPS,
        ))
        .await;
    let (status, body) = server
        .post(
            "/executions",
            json!({"plan": "ok", "task": "run", "options": {"step_set": "nope"}}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("invalid_options")),
        "{body}"
    );
    // Secrets never come back: the plan's password is masked in what is served.
    let secret_plan = "name: sec\ninfrastructures: {l: {type: baremetal}}\ncredentials:\n  pw: {type: username_password, username: root, password: 'hunter2-very-secret'}\n  \
                       key:\n    type: ssh_key\n    username: root\n    private_key: |\n      -----BEGIN OPENSSH PRIVATE KEY-----\n      \
                       c2VjcmV0LWtleS1ib2R5\n      -----END OPENSSH PRIVATE KEY-----\nnodes: {s1: {infrastructure: l, credentials: [pw]}}\n";
    server.plan(secret_plan).await;
    let (_, body) = server.get("/plans/sec").await;
    assert!(!body.to_string().contains("hunter2-very-secret"), "{body}");
    assert!(
        !body["text"]
            .as_str()
            .unwrap()
            .contains("c2VjcmV0LWtleS1ib2R5"),
        "{body}"
    );
    assert!(body["text"].as_str().unwrap().contains("****"));
    // The server still serves.
    assert_eq!(server.get("/plans").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_then_sync_runs_only_the_redeployed_node_again() {
    if !local_nodes_available() {
        return;
    }
    let server = Server::start().await;
    let k = key(server.path());
    let (p, port) = ("127.0.72", 2342);
    let v1 = plan(
        "flow",
        p,
        port,
        &k,
        &[
            ("web1", "127.0.72.1"),
            ("web2", "127.0.72.2"),
            ("db", "127.0.72.3"),
        ],
        COUNT_STEPS,
    );
    server.plan(&v1).await;
    let id = server.execute("flow", "setup", json!({})).await;
    let e = server.wait(id).await;
    assert_eq!(e["status"], "done", "{e}");
    assert_eq!(e["result"]["dopv"]["outcomes"].as_array().unwrap().len(), 3);

    // Logs: whole, per node, by level, by sequence.
    let (_, all) = server.get(&format!("/executions/{id}/log")).await;
    let text = all["log"].as_str().unwrap();
    assert!(
        text.contains("execution 1 started: setup of plan 'flow'"),
        "{text}"
    );
    assert!(text.contains("[web1] create started"), "{text}");
    let (_, node) = server.get(&format!("/executions/{id}/log?node=web2")).await;
    let node_text = node["log"].as_str().unwrap();
    assert!(
        node_text.contains("[web2]") && !node_text.contains("[web1]"),
        "{node_text}"
    );
    let (_, warn) = server
        .get(&format!("/executions/{id}/log?level=warn"))
        .await;
    assert!(
        warn["log"]
            .as_str()
            .unwrap()
            .lines()
            .all(|l| l.contains(" WARN ") || l.contains(" ERROR ")),
        "{warn}"
    );
    let (_, events) = server.get(&format!("/executions/{id}/log?since=3")).await;
    let seqs: Vec<u64> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs.first(), Some(&4));
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "no gaps: {seqs:?}"
    );
    // Events by level: `info` and above is every event of this run; `error` only errors.
    let (_, all) = server.get(&format!("/executions/{id}/log?since=0")).await;
    let (_, info) = server
        .get(&format!("/executions/{id}/log?since=0&level=info"))
        .await;
    assert_eq!(info["events"], all["events"]);
    let (_, errors) = server
        .get(&format!("/executions/{id}/log?since=0&level=error"))
        .await;
    let errors = errors["events"].as_array().unwrap();
    assert!(errors.len() < all["events"].as_array().unwrap().len());
    assert!(errors.iter().all(|e| e["level"] == "error"), "{errors:?}");
    let (status, _) = server
        .get(&format!("/executions/{id}/log?level=loud"))
        .await;
    assert_eq!(status, 422);

    // The state: dopv's nodes and dopi's steps in one document.
    let (_, state) = server.get("/plans/flow/state").await;
    assert_eq!(state["nodes"].as_array().unwrap().len(), 3);
    assert!(state["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["status"] == "deployed" && n["actual"]["power"] == "on"));
    assert_eq!(state["step_sets"][0]["state"], "done");
    let generation = |state: &Value, node: &str| {
        state["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == node)
            .unwrap()["generation"]
            .clone()
    };
    let before = state.clone();

    // web2 moves: sync --destructive redeploys it, then the run does its steps again, only there.
    let v2 = v1.replace("127.0.72.2}", "127.0.72.12}");
    let (status, body) = server
        .call(
            reqwest::Method::PUT,
            "/plans/flow",
            Some(json!({"text": v2})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let id = server
        .execute("flow", "sync", json!({"destructive": true}))
        .await;
    let e = server.wait(id).await;
    assert_eq!(e["status"], "done", "{e}");
    let (_, after) = server.get("/plans/flow/state").await;
    assert_ne!(generation(&before, "web2"), generation(&after, "web2"));
    assert_eq!(generation(&before, "web1"), generation(&after, "web1"));
    let (_, log) = server.get(&format!("/executions/{id}/log")).await;
    let log = log["log"].as_str().unwrap();
    assert!(log.contains("redeployed by dopv: web2"), "{log}");
    assert!(log.contains("[web2] ssh/custom [OK]"), "{log}");
    assert!(!log.contains("[web1] ssh/custom"), "{log}");
    assert!(!log.contains("[db] ssh/custom"), "{log}");
    let id = server
        .execute("flow", "teardown", json!({"rmdisk": true}))
        .await;
    assert_eq!(server.wait(id).await["status"], "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_stream_follows_live_and_resumes_from_a_sequence_number() {
    if !local_nodes_available() {
        return;
    }
    let server = Server::start().await;
    let k = key(server.path());
    let steps = "steps:\n  default:\n    - name: slow\n      nodes: all\n      set_plugin_defaults:\n        \
                 - {plugins: '/^ssh/', credentials: k}\n      command: {plugin: ssh/custom, exec: 'for i in 1 2 3; do echo tick $i; sleep 0.3; done'}\n";
    server
        .plan(&plan(
            "live",
            "127.0.73",
            2343,
            &k,
            &[("web1", "127.0.73.1"), ("web2", "127.0.73.2")],
            steps,
        ))
        .await;
    let id = server.execute("live", "setup", json!({})).await;
    server.wait_status(id, "running").await;
    // Read a few events live, then drop the connection.
    let mut ws = server
        .ws(&format!("/executions/{id}/log/stream?since=0"))
        .await;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let event: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
        seen.push(event["seq"].as_u64().unwrap());
    }
    assert_eq!(seen, vec![1, 2, 3]);
    drop(ws);
    // Resume from the last one seen: the rest, without gaps, until the end message.
    let mut ws = server
        .ws(&format!("/executions/{id}/log/stream?since=3"))
        .await;
    let mut next = 4;
    let end = loop {
        let msg = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if msg.is_close() {
            panic!("closed before the end message");
        }
        let event: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
        if event["kind"] == "end" {
            break event;
        }
        assert_eq!(event["seq"], next, "{event}");
        next += 1;
    };
    assert_eq!(end["status"], "done", "{end}");
    assert_eq!(end["last_seq"], next - 1);
    // A finished execution streams the same events and ends.
    let mut ws = server
        .ws(&format!("/executions/{id}/log/stream?since={}", next - 3))
        .await;
    let mut count = 0;
    loop {
        let msg = ws.next().await.unwrap().unwrap();
        let v: Value = serde_json::from_str(msg.to_text().unwrap()).unwrap();
        if v["kind"] == "end" {
            break;
        }
        count += 1;
    }
    assert_eq!(count, 2);
    // The state stream sends the state, then again when it changes.
    let mut states = server.ws("/plans/live/state/stream").await;
    let first: Value =
        serde_json::from_str(states.next().await.unwrap().unwrap().to_text().unwrap()).unwrap();
    assert_eq!(first["plan"], "live");
    let id = server.execute("live", "undeploy", json!({})).await;
    let changed = tokio::time::timeout(Duration::from_secs(30), states.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let changed: Value = serde_json::from_str(changed.to_text().unwrap()).unwrap();
    assert!(changed["serial"].as_u64() > first["serial"].as_u64());
    let _ = states
        .send(tokio_tungstenite::tungstenite::Message::Close(None))
        .await;
    assert_eq!(server.wait(id).await["status"], "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executions_queue_per_plan_cancel_and_survive_a_restart() {
    if !local_nodes_available() {
        return;
    }
    let mut server = Server::start().await;
    let k = key(server.path());
    let steps = "steps:\n  default:\n    - name: long\n      nodes: all\n      set_plugin_defaults:\n        \
                 - {plugins: '/^ssh/', credentials: k}\n      command: {plugin: ssh/custom, exec: 'sleep 30'}\n  \
                 short:\n    - name: short\n      nodes: all\n      set_plugin_defaults:\n        \
                 - {plugins: '/^ssh/', credentials: k}\n      command: {plugin: ssh/custom, exec: 'sleep 2'}\n  \
                 stubborn:\n    - name: stubborn\n      nodes: all\n      set_plugin_defaults:\n        \
                 - {plugins: '/^ssh/', credentials: k}\n      command: {plugin: ssh/custom, exec: \"trap '' TERM; sleep 60\"}\n";
    server
        .plan(&plan(
            "q",
            "127.0.74",
            2344,
            &k,
            &[("web1", "127.0.74.1")],
            steps,
        ))
        .await;
    let deploy = server.execute("q", "deploy", json!({})).await;
    assert_eq!(server.wait(deploy).await["status"], "done");

    // One running execution per plan: the second waits.
    let first = server.execute("q", "run", json!({})).await;
    server.wait_command_started(first).await;
    let second = server.execute("q", "run", json!({})).await;
    server.wait_status(second, "queued").await;
    // A waiting one is cancelled at once; a running one gracefully, then forcefully.
    let (status, e) = server
        .post(&format!("/executions/{second}/cancel"), json!({}))
        .await;
    assert_eq!((status, e["status"].as_str()), (200, Some("cancelled")));
    let (_, e) = server
        .call(
            reqwest::Method::POST,
            &format!("/executions/{first}/cancel"),
            None,
        )
        .await;
    assert_eq!(e["cancel_requests"], 1, "{e}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        server.get(&format!("/executions/{first}")).await.1["status"],
        "running",
        "graceful: the command goes on"
    );
    let (_, e) = server
        .post(
            &format!("/executions/{first}/cancel"),
            json!({"force": true}),
        )
        .await;
    assert_eq!(e["cancel_requests"], 2);
    let e = server.wait(first).await;
    assert_eq!(e["status"], "cancelled", "{e}");
    let (status, _) = server
        .post(&format!("/executions/{first}/cancel"), json!({}))
        .await;
    assert_eq!(status, 409, "a finished execution cannot be cancelled");

    // A command that ignores SIGTERM: the third request kills it (well before its 60 s).
    let stubborn = server
        .execute("q", "run", json!({"step_set": "stubborn"}))
        .await;
    server.wait_command_started(stubborn).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let asked = Instant::now();
    for n in 1..=2 {
        let (_, e) = server
            .post(&format!("/executions/{stubborn}/cancel"), json!({}))
            .await;
        assert_eq!(e["cancel_requests"], n, "{e}");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        server.get(&format!("/executions/{stubborn}")).await.1["status"],
        "running",
        "terminate: the command ignores SIGTERM"
    );
    let (_, e) = server
        .post(&format!("/executions/{stubborn}/cancel"), json!({}))
        .await;
    assert_eq!(e["cancel_requests"], 3, "{e}");
    let e = server.wait(stubborn).await;
    assert_eq!(e["status"], "cancelled", "{e}");
    assert!(
        asked.elapsed() < Duration::from_secs(45),
        "killed, not waited for: {:?}",
        asked.elapsed()
    );

    // The server dies while an execution runs and another waits: after the restart the
    // first is marked failed (interrupted), the second runs.
    let running = server.execute("q", "run", json!({})).await;
    server.wait_status(running, "running").await;
    let waiting = server.execute("q", "deploy", json!({})).await;
    server.wait_status(waiting, "queued").await;
    server.kill();
    server.launch();
    let e = server.wait(running).await;
    assert_eq!(e["status"], "failed");
    assert!(
        e["error"].as_str().unwrap().starts_with("interrupted"),
        "{e}"
    );
    assert_eq!(server.wait(waiting).await["status"], "done");

    // History: remove finished ones by status.
    let (_, list) = server.get("/executions?plan=q").await;
    assert_eq!(list.as_array().unwrap().len(), 6);
    // Paging: the newest two, then the page before them, then forward from the first.
    let ids = |v: &Value| -> Vec<u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_u64().unwrap())
            .collect()
    };
    let all = ids(&list);
    let (_, newest) = server.get("/executions?plan=q&limit=2").await;
    assert_eq!(ids(&newest), all[4..].to_vec());
    let (_, before) = server
        .get(&format!("/executions?plan=q&limit=2&before={}", all[4]))
        .await;
    assert_eq!(ids(&before), all[2..4].to_vec());
    let (_, after) = server
        .get(&format!("/executions?plan=q&limit=3&since={}", all[0]))
        .await;
    assert_eq!(ids(&after), all[1..4].to_vec());
    let (status, body) = server.get("/executions?limit=0").await;
    assert_eq!(status, 422, "{body}");
    let (status, removed) = server
        .call(
            reqwest::Method::DELETE,
            "/executions",
            Some(json!({"statuses": ["cancelled"]})),
        )
        .await;
    assert_eq!(status, 200, "{removed}");
    let removed: Vec<u64> = removed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(removed, vec![first, second, stubborn]);
    assert_eq!(server.get(&format!("/executions/{first}")).await.0, 404);
    let (status, _) = server
        .call(
            reqwest::Method::DELETE,
            "/executions",
            Some(json!({"statuses": ["running"]})),
        )
        .await;
    assert_eq!(status, 422);

    // SIGTERM: the running command finishes, nothing new starts, and the execution goes back
    // to the queue; the next server start runs it to the end.
    let handed = server
        .execute("q", "run", json!({"step_set": "short"}))
        .await;
    server.wait_status(handed, "running").await;
    let code = server.terminate();
    assert!(code.success(), "{code:?}");
    let stored: Value = {
        let store = dop_store::Store::open(&server.path().join("store")).unwrap();
        dopc::records::get(&store, dopc::records::Kind::Execution, &handed.to_string())
            .unwrap()
            .unwrap()
    };
    assert_eq!(stored["status"], "queued", "{stored}");
    assert!(
        stored["error"].as_str().unwrap().starts_with("handed back"),
        "{stored}"
    );
    server.launch();
    let e = server.wait(handed).await;
    assert_eq!(e["status"], "done", "{e}");
    let undeploy = server.execute("q", "undeploy", json!({})).await;
    assert_eq!(server.wait(undeploy).await["status"], "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_endpoint_is_served() {
    let server = Server::start().await;
    let doc: Value = serde_json::from_str(include_str!("../../../docs/openapi.json")).unwrap();
    let mut checked = 0;
    for (path, methods) in doc["paths"].as_object().unwrap() {
        for method in methods.as_object().unwrap().keys() {
            let url = format!(
                "{}{}",
                server.url(),
                path.replace("{name}", "nope").replace("{id}", "999999")
            );
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let res = server
                .http
                .request(method.clone(), &url)
                .bearer_auth(server.token())
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            let body = res.text().await.unwrap();
            assert_ne!(status, 405, "{method} {path}: not routed");
            assert!(
                !body.contains("no such endpoint"),
                "{method} {path}: not routed: {body}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 19, "{checked}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_when_a_certificate_is_configured() {
    let ca_dir = tempfile::tempdir().unwrap();
    let d = ca_dir.path();
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(d)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=dop test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        d.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    ]);
    let ca = reqwest::Certificate::from_pem(&std::fs::read(d.join("ca.pem")).unwrap()).unwrap();
    let config = format!(
        "[tls]\ncert = '{}'\nkey = '{}'\n",
        d.join("server.pem").display(),
        d.join("server.key").display()
    );
    let client = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca);
    let server = Server::start_with(Some(&config), client).await;
    assert!(
        server.url().starts_with("https://127.0.0.1:"),
        "{}",
        server.url()
    );
    let (status, body) = server.get("/plans").await;
    assert_eq!((status, body), (200, json!({"plans": []})));
    // Plain HTTP to the TLS port gets nowhere; neither does a client that does not trust the CA.
    let plain = server.url().replacen("https://", "http://", 1);
    let res = reqwest::get(format!("{plain}/api/v1/ping")).await;
    assert!(res.is_err() || !res.unwrap().status().is_success());
    let untrusting = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    assert!(untrusting.get(server.api("/ping")).send().await.is_err());

    // The dopc client trusts the system's roots when no --ca is given (here the CA file
    // through SSL_CERT_FILE, as on a host whose CA bundle holds it), over HTTPS and WSS.
    server
        .plan(
            "name: tls\ninfrastructures: {l: {type: baremetal}}\nnodes: {a: {infrastructure: l}}\n\
             steps:\n  default:\n    - name: hi\n      nodes: all\n      command: {plugin: custom, exec: 'echo hi'}\n",
        )
        .await;
    let client = |args: &[&str], cert_file: Option<&Path>| {
        // The URL and token in the environment, no CA given, HOME the server's directory.
        let mut c = server.client(args);
        c.env_remove("SSL_CERT_DIR");
        match cert_file {
            Some(f) => c.env("SSL_CERT_FILE", f),
            None => c.env_remove("SSL_CERT_FILE"),
        };
        c.output().unwrap()
    };
    let out = client(
        &["execution", "run", "tls", "--follow"],
        Some(&d.join("ca.pem")),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("[a] custom [OK]"));
    let out = client(&["ping"], None);
    assert_eq!(
        out.status.code(),
        Some(5),
        "the system's roots lack the test CA"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_that_are_never_read_do_not_stop_the_server() {
    let server = Server::start().await;
    server
        .plan("name: idle\ninfrastructures: {l: {type: baremetal}}\nnodes: {i1: {infrastructure: l}}\nsteps:\n  default:\n    - name: s\n      nodes: all\n      command: {plugin: custom, exec: 'true'}\n")
        .await;
    let id = server.execute("idle", "run", json!({})).await;
    assert_eq!(server.wait(id).await["status"], "done");
    // Fifty clients connect to streams and never read a message.
    let mut idle = Vec::new();
    for _ in 0..25 {
        idle.push(server.ws(&format!("/executions/{id}/log/stream")).await);
        idle.push(server.ws("/plans/idle/state/stream").await);
    }
    // The server goes on serving everyone else.
    assert_eq!(server.get("/plans/idle/state").await.0, 200);
    let again = server
        .execute("idle", "reset", json!({"force": true}))
        .await;
    assert_eq!(server.wait(again).await["status"], "done");
    let mut ws = server.ws(&format!("/executions/{id}/log/stream")).await;
    let mut end = Value::Null;
    while let Some(Ok(msg)) = ws.next().await {
        if let Ok(v) = serde_json::from_str::<Value>(msg.to_text().unwrap_or("")) {
            if v["kind"] == "end" {
                end = v;
                break;
            }
        }
    }
    assert_eq!(end["status"], "done");
    drop(idle);
}

/// The Prometheus text format, parsed strictly: every line must be a comment the format knows
/// or a sample `name{label="value",…} number`; the text ends with `# EOF`. Returns the samples
/// by name and labels (`name{a="x",b="y"}`, labels as written).
fn parse_prometheus(text: &str) -> std::collections::BTreeMap<String, f64> {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut samples = std::collections::BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "the text ends with # EOF");
    for line in &lines[..lines.len() - 1] {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let (kind, name) = (parts.next().unwrap(), parts.next().unwrap_or(""));
            assert!(["HELP", "TYPE", "UNIT"].contains(&kind), "comment: {line}");
            assert!(name_ok(name), "metric name in: {line}");
            if kind == "TYPE" {
                let t = parts.next().unwrap_or("");
                assert!(
                    [
                        "counter",
                        "gauge",
                        "histogram",
                        "summary",
                        "unknown",
                        "info"
                    ]
                    .contains(&t),
                    "type in: {line}"
                );
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("sample: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value in: {line}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(name_ok(name), "metric name in: {line}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .unwrap_or_else(|| panic!("labels in: {line}"));
            for pair in inner.split(',') {
                let (k, v) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("label in: {line}"));
                assert!(name_ok(k), "label name in: {line}");
                assert!(
                    v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                    "label value in: {line}"
                );
            }
        }
        samples.insert(series.to_string(), value);
    }
    samples
}

impl Server {
    /// Waits (at most 60 s) until `check` holds for the plan's state; returns that state.
    async fn state_until(&self, plan: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let t = Instant::now();
        loop {
            let (_, state) = self.get(&format!("/plans/{plan}/state")).await;
            if check(&state) {
                return state;
            }
            if t.elapsed() > Duration::from_secs(60) {
                let (_, monitor) = self.get(&format!("/plans/{plan}/monitor")).await;
                panic!("never {what}: {state}\nmonitor: {monitor}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The monitor's executions of a plan.
    async fn by_monitor(&self, plan: &str, task: &str) -> Vec<Value> {
        let (_, all) = self.get(&format!("/executions?plan={plan}")).await;
        all.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["created_by"] == "monitor" && e["task"] == task)
            .cloned()
            .collect()
    }

    /// The monitor's refreshes that finished after execution `after`.
    async fn refreshes_after(&self, plan: &str, after: u64) -> Vec<Value> {
        self.by_monitor(plan, "refresh")
            .await
            .into_iter()
            .filter(|e| {
                e["id"].as_u64().unwrap() > after
                    && ["done", "failed"].contains(&e["status"].as_str().unwrap())
            })
            .collect()
    }

    async fn metrics(&self) -> std::collections::BTreeMap<String, f64> {
        let res = self
            .http
            .get(self.api("/metrics"))
            .bearer_auth(self.token())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let kind = res.headers()["content-type"].to_str().unwrap().to_string();
        assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
        parse_prometheus(&res.text().await.unwrap())
    }
}

fn node<'a>(state: &'a Value, name: &str) -> &'a Value {
    state["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no node {name} in {state}"))
}

const SLOW_STEPS: &str = "  slow:\n    - name: wait\n      nodes: [web1]\n      set_plugin_defaults:\n        \
                          - {plugins: '/^ssh/', credentials: k}\n      command: {plugin: ssh/custom, exec: 'sleep 5'}\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_reports_drift_and_syncs_only_what_its_policy_allows() {
    if !local_nodes_available() {
        return;
    }
    // Configured in dopc.toml: a refresh every second, auto-sync off (the default).
    let server = Server::start_with(
        Some("[monitor.mon]\ninterval_secs = 1\n"),
        reqwest::Client::builder(),
    )
    .await;
    let k = key(server.path());
    let (p, port) = ("127.0.75", 2345);
    let v1 = plan(
        "mon",
        p,
        port,
        &k,
        &[
            ("web1", "127.0.75.1"),
            ("web2", "127.0.75.2"),
            ("db", "127.0.75.3"),
        ],
        &format!("{COUNT_STEPS}{SLOW_STEPS}"),
    );
    server.plan(&v1).await;
    let setup = server.execute("mon", "setup", json!({})).await;
    assert_eq!(server.wait(setup).await["status"], "done");
    server
        .state_until("mon", "all in sync", |s| s["sync"]["in_sync"] == 3)
        .await;
    let (_, monitor) = server.get("/plans/mon/monitor").await;
    assert_eq!(monitor["source"], "config", "{monitor}");
    assert_eq!(monitor["settings"]["auto_sync"]["enabled"], false);

    // web1's container is removed behind dopv's back: drifted within an interval, and with
    // auto-sync off only reported.
    let dir = server.path().join("local/nodes/mon/web1");
    let pid: i32 = std::fs::read_to_string(dir.join("supervisor.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill has no memory preconditions.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
    let t = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::remove_dir_all(&dir).unwrap();
    let state = server
        .state_until("mon", "web1 drifted (missing)", |s| {
            // A refresh between the kill and the removal sees it powered off first.
            node(s, "web1")["sync"]["reason"] == "missing"
        })
        .await;
    let web1 = &node(&state, "web1")["sync"];
    assert_eq!(web1["state"], "drifted", "{web1}");
    assert_eq!(web1["drift"][0]["field"], "exists", "{web1}");
    assert!(web1["refreshed_at"].is_string(), "{web1}");
    let last = server.by_monitor("mon", "refresh").await;
    let last_id = last.last().unwrap()["id"].as_u64().unwrap();
    assert!(
        last.iter().all(|e| e["reason"]
            .as_str()
            .unwrap()
            .starts_with("scheduled refresh")),
        "{last:?}"
    );
    // One more finished refresh after the drift was seen: still nothing synced.
    let t = Instant::now();
    while server.refreshes_after("mon", last_id).await.is_empty() {
        assert!(t.elapsed() < Duration::from_secs(60), "no refresh ran");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(server.by_monitor("mon", "sync").await.is_empty());
    let (_, monitor) = server.get("/plans/mon/monitor").await;
    let verdict = monitor["status"]["verdict"].as_str().unwrap();
    assert!(verdict.contains("web1 drifted"), "{verdict}");
    assert!(
        verdict.contains("auto-sync is off, reported only"),
        "{verdict}"
    );

    // The plan drops db; the API turns auto-sync on without destructive changes: web1 is
    // recreated (and runs its steps), db stays deployed, held back.
    let v2 = v1.replace(
        "  db:\n    infrastructure: lab\n    credentials: [k]\n    interfaces: {eth0: {network: lo, ip: 127.0.75.3}}\n",
        "",
    );
    assert_ne!(v1, v2);
    let (status, body) = server
        .call(
            reqwest::Method::PUT,
            "/plans/mon",
            Some(json!({"text": v2})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let policy = json!({"interval_secs": 1, "auto_sync": {"enabled": true}});
    let (status, monitor) = server
        .call(reqwest::Method::PUT, "/plans/mon/monitor", Some(policy))
        .await;
    assert_eq!(status, 200, "{monitor}");
    assert_eq!(monitor["source"], "api");
    let state = server
        .state_until("mon", "web1 recreated", |s| {
            node(s, "web1")["sync"]["state"] == "in_sync"
        })
        .await;
    let db = node(&state, "db");
    assert_eq!(db["status"], "deployed", "{db}");
    assert_eq!(db["in_plan"], false);
    assert_eq!(db["sync"]["state"], "pending");
    assert_eq!(db["sync"]["reason"], "removed_from_plan");
    let syncs = server.by_monitor("mon", "sync").await;
    assert_eq!(syncs.len(), 1, "{syncs:?}");
    let sync = server.wait(syncs[0]["id"].as_u64().unwrap()).await;
    assert_eq!(sync["status"], "done", "{sync}");
    assert_eq!(
        sync["options"]["nodes"], "web1",
        "only what drifted: {sync}"
    );
    assert!(!sync["options"]["destructive"].as_bool().unwrap_or(false));
    let reason = sync["reason"].as_str().unwrap();
    assert!(reason.contains("db (needs --destructive)"), "{reason}");
    let (_, log) = server.get(&format!("/executions/{}/log", sync["id"])).await;
    assert!(
        log["log"]
            .as_str()
            .unwrap()
            .contains("[web1] ssh/custom [OK]"),
        "{log}"
    );
    let (status, _) = server
        .call(
            reqwest::Method::PUT,
            "/plans/mon/monitor",
            Some(json!({"interval_secs": 0})),
        )
        .await;
    assert_eq!(status, 422);

    // A refresh due while one waits is skipped and counted, never piled up: a 5 s run holds
    // the plan while refreshes are due every second.
    let run = server
        .execute("mon", "run", json!({"step_set": "slow"}))
        .await;
    assert_eq!(server.wait(run).await["status"], "done");
    let (_, monitor) = server.get("/plans/mon/monitor").await;
    assert!(
        monitor["status"]["skipped"].as_u64().unwrap() >= 1,
        "{monitor}"
    );
    let (_, all) = server.get("/executions?plan=mon").await;
    let waiting = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["task"] == "refresh" && !["done", "failed"].contains(&e["status"].as_str().unwrap())
        })
        .count();
    assert!(waiting <= 2, "at most one waiting and one running: {all}");

    // Metrics, scraped with a real HTTP client, parse and show the counts.
    let mut stream = server.ws("/plans/mon/state/stream").await;
    let _first = stream.next().await.unwrap().unwrap();
    let m = server.metrics().await;
    assert_eq!(m[r#"dopc_nodes{plan="mon",state="pending"}"#], 1.0, "{m:?}");
    assert_eq!(m[r#"dopc_nodes{plan="mon",state="in_sync"}"#], 2.0, "{m:?}");
    assert_eq!(m[r#"dopc_nodes{plan="mon",state="drifted"}"#], 0.0, "{m:?}");
    assert_eq!(m[r#"dopc_executions{task="setup",status="done"}"#], 1.0);
    assert!(m[r#"dopc_executions{task="refresh",status="done"}"#] >= 2.0);
    assert_eq!(m[r#"dopc_monitor_auto_syncs_total{plan="mon"}"#], 1.0);
    assert!(m[r#"dopc_monitor_refreshes_skipped_total{plan="mon"}"#] >= 1.0);
    // Three from the setup, one from the auto-sync, one from the slow run.
    assert!(
        m[r#"dopc_dopi_commands_total{result="done"}"#] >= 5.0,
        "{m:?}"
    );
    assert_eq!(m[r#"dopc_websocket_subscribers{stream="state"}"#], 1.0);
    assert!(m.contains_key("dopc_queue_length"));
    assert!(m.contains_key(r#"dopc_execution_duration_seconds_count{task="setup",status="done"}"#));
    drop(stream);
    let anonymous = server
        .http
        .get(server.api("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // The provider cannot be reached while a destructive policy is on: the refresh fails,
    // the nodes are unknown (not gone), and nothing is synced.
    let destructive =
        json!({"interval_secs": 1, "auto_sync": {"enabled": true, "destructive": true}});
    let syncs_before = server.by_monitor("mon", "sync").await.len();
    {
        let _away = dop_testbed::DirectoryAway::new(&server.path().join("local")).unwrap();
        let (_, monitor) = server
            .call(
                reqwest::Method::PUT,
                "/plans/mon/monitor",
                Some(destructive),
            )
            .await;
        assert_eq!(monitor["settings"]["auto_sync"]["destructive"], true);
        let last_id = server.by_monitor("mon", "refresh").await.last().unwrap()["id"]
            .as_u64()
            .unwrap();
        let t = Instant::now();
        let failed = loop {
            let done = server.refreshes_after("mon", last_id).await;
            if let Some(f) = done.iter().find(|e| e["status"] == "failed") {
                break f.clone();
            }
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "no refresh failed: {done:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(
            failed["error"].as_str().unwrap().contains("unavailable"),
            "{failed}"
        );
        let (_, state) = server.get("/plans/mon/state").await;
        assert_eq!(state["sync"]["unknown"], 3, "{state}");
        assert_eq!(node(&state, "db")["status"], "deployed");
        let (_, monitor) = server.get("/plans/mon/monitor").await;
        let verdict = monitor["status"]["verdict"].as_str().unwrap();
        assert!(verdict.contains("unknown: nothing is synced"), "{verdict}");
        assert_eq!(server.by_monitor("mon", "sync").await.len(), syncs_before);
    }
    // Reachable again, the destructive policy lets the monitor undeploy db.
    server
        .state_until("mon", "db undeployed", |s| {
            s["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["name"] != "db")
        })
        .await;
    let (status, _) = server
        .call(reqwest::Method::DELETE, "/plans/mon/monitor", None)
        .await;
    assert_eq!(status, 200);
    let id = server
        .execute("mon", "teardown", json!({"rmdisk": true}))
        .await;
    assert_eq!(server.wait(id).await["status"], "done");
}

/// Every file under `dir`, as text (lossy), with its path.
fn files_under(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            // Symlinks (the Hiera data's `current`) are read through their target.
            if path.is_dir() && !entry.file_type().unwrap().is_symlink() {
                todo.push(path);
            } else if path.is_file() {
                let bytes = std::fs::read(&path).unwrap_or_default();
                out.push((path, String::from_utf8_lossy(&bytes).into_owned()));
            }
        }
    }
    out
}

/// A plan's credential passwords never leave the plan: not in any API answer, log, event,
/// stream or Hiera file of a full run, even when a command prints them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_secrets_are_never_in_answers_logs_or_data() {
    const SECRETS: [&str; 2] = ["Pw-9f8e7d6c5b4a", "Chal-1a2b3c4d5e"];
    let server = Server::start().await;
    let text = format!(
        "name: vault
infrastructures: {{lab: {{type: baremetal}}}}
credentials:
  db_admin: {{type: username_password, username: admin, password: '{}'}}
  autosign: {{type: username_password, username: puppet, password: '{}'}}
nodes:
  vault01: {{infrastructure: lab}}
configuration:
  defaults: {{role: vault, db_user: admin}}
steps:
  default:
    - name: careless
      nodes: all
      command: {{plugin: custom, exec: 'echo admin password {} and challenge {}; echo {} >&2'}}
",
        SECRETS[0], SECRETS[1], SECRETS[0], SECRETS[1], SECRETS[0]
    );
    server.plan(&text).await;
    let mut stream = server.ws("/plans/vault/state/stream").await;
    let id = server.execute("vault", "setup", json!({})).await;
    let mut log_stream = server.ws(&format!("/executions/{id}/log/stream")).await;
    assert_eq!(server.wait(id).await["status"], "done");

    let mut seen: Vec<(String, String)> = Vec::new();
    for path in [
        "/plans".to_string(),
        "/plans/vault".to_string(),
        "/plans/vault/versions".to_string(),
        "/plans/vault/state".to_string(),
        "/plans/vault/monitor".to_string(),
        "/executions".to_string(),
        format!("/executions/{id}"),
        format!("/executions/{id}/log"),
        format!("/executions/{id}/log?node=vault01"),
        format!("/executions/{id}/log?since=0"),
        "/metrics".to_string(),
    ] {
        let (status, body) = server.get(&path).await;
        assert_eq!(status, 200, "{path}: {body}");
        seen.push((path, body.to_string()));
    }
    // The stored plan's text comes back masked, base64 content included.
    let (_, plan) = server.get("/plans/vault").await;
    let content = plan["content"].as_str().unwrap();
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(content)
        .unwrap();
    seen.push((
        "/plans/vault content".into(),
        String::from_utf8_lossy(&decoded).into(),
    ));
    // The events the log stream sent, to its end; the state stream's first document.
    loop {
        match tokio::time::timeout(Duration::from_secs(30), log_stream.next()).await {
            Ok(Some(Ok(msg))) if msg.is_text() => {
                let text = msg.into_text().unwrap().to_string();
                let end = text.contains("\"kind\":\"end\"");
                seen.push(("log stream".into(), text));
                if end {
                    break;
                }
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("the log stream ended early: {other:?}"),
        }
    }
    let first = stream.next().await.unwrap().unwrap();
    seen.push((
        "state stream".into(),
        first.into_text().unwrap().to_string(),
    ));
    // Every file the server wrote besides the store's own databases: logs, Hiera data.
    for (path, content) in files_under(&server.path().join("logs"))
        .into_iter()
        .chain(files_under(&server.path().join("store/hiera")))
    {
        seen.push((path.display().to_string(), content));
    }
    let log_text = &seen.iter().find(|(p, _)| p.ends_with("/log")).unwrap().1;
    assert!(
        log_text.contains("admin password"),
        "the command's output is logged: {log_text}"
    );
    for (place, content) in &seen {
        for secret in SECRETS {
            assert!(!content.contains(secret), "{secret} in {place}: {content}");
        }
    }
    assert!(seen.len() > 15, "{}", seen.len());
    // The logs are the owner's and its group's only, whatever the umask.
    use std::os::unix::fs::PermissionsExt;
    let logs = server.path().join("logs/vault");
    for (path, _) in files_under(&logs) {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "{}", path.display());
    }
    let dir = std::fs::read_dir(&logs)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o750, "{}", dir.display());
    // The API tokens: hashed, the owner's only. The autosign challenge hashes: 0640.
    let tokens = server.path().join("store/dopc-tokens.json");
    let mode = std::fs::metadata(&tokens).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(!std::fs::read_to_string(&tokens)
        .unwrap()
        .contains(server.token()));
    let autosign = server.path().join("store/hiera/current/autosign.json");
    let mode = std::fs::metadata(&autosign).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
    assert!(std::fs::read_to_string(&autosign)
        .unwrap()
        .contains("\"vault\""));
}

/// Fault injection (`cargo xtask chaos` runs it with more kill points): the server killed with
/// SIGKILL at many moments while runs queue and execute, then started again. After every
/// restart the store opens, no execution is lost, the one that ran is marked interrupted, every
/// started execution's log reads, and dopi work recorded done stays done and never runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_sigkill_of_the_server_loses_no_execution_and_repeats_no_work() {
    use dop_testbed::chaos::{kills, wait_for_leftovers, Moments};
    use std::collections::BTreeMap;
    let mut server = Server::start().await;
    let work = server.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut steps = String::from("steps:\n");
    for s in 1..=4 {
        steps.push_str(&format!(
            "  - name: s{s}\n    nodes: all\n    command: {{plugin: custom, exec: 'sleep 0.0{s}; echo $DOP_NODE_NAME >> {}/ran-s{s}'}}\n",
            work.display()
        ));
    }
    let text = format!(
        "name: chaos\nmax_in_flight: 2\ninfrastructures: {{lab: {{type: baremetal}}}}\nnodes:\n  \
         n{{i}}.lab: {{infrastructure: lab, range: 1..4}}\n{steps}"
    );
    server.plan(&text).await;
    let ran = |step: usize, node: &str| {
        std::fs::read_to_string(work.join(format!("ran-s{step}")))
            .unwrap_or_default()
            .lines()
            .filter(|l| *l == node)
            .count()
    };
    // One undisturbed run sets the window kills fall in.
    let started = Instant::now();
    let first = server.execute("chaos", "run", json!({})).await;
    assert_eq!(server.wait(first).await["status"], "done");
    let window = started.elapsed().mul_f64(1.2);
    let mut moments = Moments::from_env();
    let target = kills();
    println!(
        "dopc chaos: seed {} (DOP_CHAOS_SEED), {target} kill points within {window:?}",
        moments.seed
    );
    let mut created: Vec<u64> = vec![first];
    let mut done_at: BTreeMap<(usize, String), usize> = BTreeMap::new();
    let (mut killed, mut rounds) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(400);
    while killed < target && Instant::now() < deadline {
        // Work for the server: a run when none waits or runs, after a reset when the last
        // round finished everything (the reset is let finish: it legitimately undoes work).
        let (_, list) = server.get("/executions?plan=chaos").await;
        let busy = list
            .as_array()
            .unwrap()
            .iter()
            .any(|e| ["queued", "running", "new"].contains(&e["status"].as_str().unwrap()));
        if !busy {
            let (_, state) = server.get("/plans/chaos/state").await;
            if state["step_sets"][0]["state"] == "done" {
                let reset = server
                    .execute("chaos", "reset", json!({"force": true}))
                    .await;
                created.push(reset);
                assert_eq!(server.wait(reset).await["status"], "done");
                done_at.clear();
                rounds += 1;
            }
            created.push(server.execute("chaos", "run", json!({})).await);
        }
        tokio::time::sleep(moments.up_to(window)).await;
        server.kill();
        killed += 1;
        let left = wait_for_leftovers(&work, Duration::from_secs(10));
        assert!(left.is_empty(), "commands still running: {left:?}");
        server.launch();

        // Nothing lost; what ran when the server died is marked interrupted.
        let (_, list) = server.get("/executions?plan=chaos").await;
        let listed: BTreeMap<u64, &Value> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["id"].as_u64().unwrap(), e))
            .collect();
        for id in &created {
            let e = listed
                .get(id)
                .unwrap_or_else(|| panic!("execution {id} lost"));
            match e["status"].as_str().unwrap() {
                "failed" => assert!(
                    e["error"].as_str().unwrap().starts_with("interrupted"),
                    "{e}"
                ),
                "done" | "queued" | "running" => {}
                other => panic!("execution {id} is {other}: {e}"),
            }
            if e["started_at"].is_string() {
                let (status, log) = server.get(&format!("/executions/{id}/log")).await;
                assert_eq!(status, 200, "the log of {id}: {log}");
            }
        }
        // Done work stays done and is not redone.
        let (status, state) = server.get("/plans/chaos/state").await;
        assert_eq!(status, 200, "{state}");
        for (s, step) in state["step_sets"][0]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            for (node, record) in step["nodes"].as_object().unwrap() {
                let key = (s + 1, node.clone());
                let now = record["state"].as_str().unwrap();
                let count = ran(s + 1, node);
                match done_at.get(&key) {
                    Some(then) => {
                        assert_eq!(now, "done", "s{} on {node} was done", s + 1);
                        assert_eq!(count, *then, "s{} on {node} ran again", s + 1);
                    }
                    None if now == "done" => {
                        assert!(count >= 1, "s{} on {node} is done but never ran", s + 1);
                        done_at.insert(key, count);
                    }
                    None => {}
                }
            }
        }
    }
    assert_eq!(
        killed, target,
        "only {killed} kill points in 400 s ({rounds} rounds): something hangs"
    );
    // The work finishes after the last restart.
    let last = server.execute("chaos", "run", json!({})).await;
    assert_eq!(server.wait(last).await["status"], "done");
    let (_, state) = server.get("/plans/chaos/state").await;
    assert_eq!(state["step_sets"][0]["state"], "done", "{state}");
    println!("dopc chaos: {killed} kills, {rounds} rounds finished between them");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_executions_go_with_their_logs_as_the_retention_says() {
    // Keep one finished execution per plan, checked every second.
    let server = Server::start_with(
        Some("[retention]\nkeep_per_plan = 1\ninterval_secs = 1\n"),
        reqwest::Client::builder(),
    )
    .await;
    server
        .plan("name: kept\ninfrastructures: {lab: {type: baremetal}}\nnodes: {n1: {infrastructure: lab}}\n")
        .await;
    let first = server.execute("kept", "reset", json!({})).await;
    let done = server.wait(first).await;
    assert_eq!(done["status"], "done", "{done}");
    let logs = server
        .path()
        .join("logs/kept")
        .join(done["log_id"].as_str().unwrap());
    assert!(
        logs.is_dir(),
        "{} exists while it is the newest",
        logs.display()
    );
    let second = server.execute("kept", "reset", json!({})).await;
    assert_eq!(server.wait(second).await["status"], "done");
    let t = Instant::now();
    while server.get(&format!("/executions/{first}")).await.0 != 404 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "execution {first} was not removed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!logs.exists(), "its logs went with it");
    let (_, list) = server.get("/executions?plan=kept").await;
    let ids: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![second]);
}

/// The plan text of the secrets test: a password spelled otherwise than its value, a secret
/// from a program that leaves a mark when it runs, and a step whose login credential comes
/// from a program that fails quoting that secret (a careless script: its error is reported).
fn secret_plan(password_yaml: &str, marker: &Path) -> String {
    format!(
        "name: hush
infrastructures:
  lab:
    type: baremetal
    networks: {{lo: {{ip_pool: {{from: 127.0.76.1, to: 127.0.76.9}}, ip_netmask: 255.255.255.0, ip_defgw: false}}}}
credentials:
  db: {{type: username_password, username: admin, password: {password_yaml}}}
  api: {{type: username_password, username: svc, password: {{exec: ['/bin/sh', '-c', 'touch {}; printf Exec-%s 7c6b5a4d']}}}}
  broken: {{type: username_password, username: svc, password: {{exec: ['/bin/sh', '-c', 'printf \"no vault for Exec-%s\" 7c6b5a4d >&2; exit 2']}}}}
nodes:
  hush01: {{infrastructure: lab, interfaces: {{eth0: {{network: lo, ip: 127.0.76.1}}}}}}
steps:
  default:
    - name: careless
      nodes: all
      command: {{plugin: ssh/custom, exec: 'true', credentials: broken}}
",
        marker.display()
    )
}

/// Secrets never leave in clear through the plan doors (a password change in the diff and the
/// PUT answer, the text with its YAML spelling), a program secret runs only inside an
/// execution, and the execution's error and log never quote it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_are_masked_in_diffs_plan_text_and_execution_errors() {
    let server = Server::start().await;
    let marker = server.path().join("exec-ran");
    // Values `it's-Old-5e4d` and `New-9a8b"7c`, written with YAML escapes.
    server.plan(&secret_plan("'it''s-Old-5e4d'", &marker)).await;
    let (status, put) = server
        .call(
            reqwest::Method::PUT,
            "/plans/hush",
            Some(json!({"text": secret_plan(r#""New-9a8b\"7\u0063""#, &marker)})),
        )
        .await;
    assert_eq!(status, 200, "{put}");
    let (_, diff) = server.get("/plans/hush/diff").await;
    let (_, text) = server.get("/plans/hush?version=1").await;
    let (_, text2) = server.get("/plans/hush").await;
    for (place, body) in [
        ("PUT", &put),
        ("diff", &diff),
        ("text 1", &text),
        ("text 2", &text2),
    ] {
        let body = body.to_string();
        for secret in [
            "it's-Old-5e4d",
            "it''s-Old-5e4d",
            "Old-5e4d",
            "New-9a8b",
            "Exec-7c6b5a4d",
        ] {
            assert!(!body.contains(secret), "{secret} in {place}: {body}");
        }
    }
    insta::assert_json_snapshot!(diff["changes"]["credentials"]);
    assert!(
        text2["text"].as_str().unwrap().contains("password: '****'"),
        "{text2}"
    );
    assert!(
        !marker.exists(),
        "reading and storing the plan ran its program"
    );
    // A source that could hang a reader is refused when the plan is read, at once.
    let dev_zero = secret_plan("{file: /dev/zero}", &marker);
    let (status, refused) = server
        .call(
            reqwest::Method::PUT,
            "/plans/hush",
            Some(json!({"text": dev_zero})),
        )
        .await;
    assert_eq!(status, 422, "{refused}");
    assert!(
        refused
            .to_string()
            .contains("/dev/zero is not a regular file"),
        "{refused}"
    );

    // Inside an execution the program runs; what it gave is masked in the error and the log.
    let id = server.execute("hush", "run", json!({})).await;
    let e = server.wait(id).await;
    assert_eq!(e["status"], "failed", "{e}");
    assert!(marker.exists(), "the execution resolved its secrets");
    assert!(
        e["error"].as_str().unwrap().contains("no vault for ****"),
        "{e}"
    );
    let (_, log) = server.get(&format!("/executions/{id}/log")).await;
    for (place, body) in [("execution", e.to_string()), ("log", log.to_string())] {
        assert!(!body.contains("Exec-7c6b5a4d"), "in the {place}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_execution_resets_only_the_step_set_and_step_it_names() {
    let server = Server::start().await;
    server
        .plan("name: granular\ninfrastructures: {l: {type: baremetal}}\nnodes: {g1: {infrastructure: l}, g2: {infrastructure: l}}\nsteps:\n  default:\n    - name: a\n      nodes: all\n      command: {plugin: custom, exec: 'true'}\n    - name: b\n      nodes: all\n      command: {plugin: custom, exec: 'true'}\n  other:\n    - name: c\n      nodes: all\n      command: {plugin: custom, exec: 'true'}\n")
        .await;
    for set in ["default", "other"] {
        let id = server
            .execute("granular", "run", json!({"step_set": set}))
            .await;
        assert_eq!(server.wait(id).await["status"], "done");
    }
    // Where each step stands on each node: `set/step/node` -> state.
    let states = || async {
        let (status, state) = server.get("/plans/granular/state").await;
        assert_eq!(status, 200, "{state}");
        let mut out = std::collections::BTreeMap::new();
        for set in state["step_sets"].as_array().unwrap() {
            for step in set["steps"].as_array().unwrap() {
                for (node, record) in step["nodes"].as_object().unwrap() {
                    out.insert(
                        format!(
                            "{}/{}/{node}",
                            set["name"].as_str().unwrap(),
                            step["name"].as_str().unwrap()
                        ),
                        record["state"].as_str().unwrap().to_string(),
                    );
                }
            }
        }
        out
    };
    assert!(states().await.values().all(|s| s == "done"));
    let reset = |options: Value| async {
        let id = server.execute("granular", "reset", options).await;
        let e = server.wait(id).await;
        assert_eq!(e["status"], "done", "{e}");
        e["result"]["dopi"]["reset"].as_u64().unwrap()
    };
    // One step (by number) of one step set, on one node.
    let n = reset(json!({"step_set": "default", "step": "2", "nodes": "g1", "force": true})).await;
    assert_eq!(n, 1);
    let now = states().await;
    let ready: Vec<&String> = now
        .iter()
        .filter(|(_, s)| *s != "done")
        .map(|(k, _)| k)
        .collect();
    assert_eq!(ready, ["default/b/g1"], "{now:?}");
    // A whole step set: the other keeps its state.
    let n = reset(json!({"step_set": "other", "force": true})).await;
    assert_eq!(n, 2);
    let now = states().await;
    for (key, state) in &now {
        let expected = if key.starts_with("other/") || key == "default/b/g1" {
            "ready"
        } else {
            "done"
        };
        assert_eq!(state, expected, "{key}: {now:?}");
    }
    // A step by name, through the client's command line.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dopc"))
        .args([
            "execution",
            "reset",
            "granular",
            "--step",
            "a",
            "--force",
            "--follow",
        ])
        .env("DOPC_URL", server.url())
        .env("DOPC_TOKEN", server.token())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let now = states().await;
    assert_eq!(now["default/a/g1"], "ready", "{now:?}");
    assert_eq!(now["default/a/g2"], "ready", "{now:?}");
    // Names the plan does not have are refused before anything is queued.
    let (_, before) = server.get("/executions?plan=granular").await;
    for (options, message) in [
        (
            json!({"step_set": "nope"}),
            "reset of plan 'granular': plan 'granular' has no step set 'nope'; it has: default, other",
        ),
        (
            json!({"step_set": "other", "step": "3"}),
            "reset of plan 'granular': step set 'other' has no step '3' (give a name or a number from 1 to 1)",
        ),
    ] {
        let (status, body) = server
            .post("/executions", json!({"plan": "granular", "task": "reset", "options": options}))
            .await;
        assert_eq!(status, 422, "{body}");
        assert_eq!(body["error"]["message"], message, "{body}");
    }
    let (status, body) = server
        .post(
            "/executions",
            json!({"plan": "granular", "task": "run", "options": {"step": "a"}}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["error"]["message"],
        "'step' is an option of 'reset' only, not of 'run': leave it out"
    );
    let (_, after) = server.get("/executions?plan=granular").await;
    assert_eq!(before, after, "nothing was queued");

    // The same choice through `PUT /plans/{name}/reset` (no execution): first every record back
    // to done, so that what the resets below touch shows.
    for set in ["default", "other"] {
        let id = server
            .execute("granular", "run", json!({"step_set": set}))
            .await;
        assert_eq!(server.wait(id).await["status"], "done");
    }
    assert!(states().await.values().all(|s| s == "done"));
    let put = |body: Value| server.call(reqwest::Method::PUT, "/plans/granular/reset", Some(body));
    let (status, body) = put(json!({"step_set": "default", "step": "b", "force": true})).await;
    assert_eq!((status, &body["reset"]), (200, &json!(2)), "{body}");
    let now = states().await;
    let ready: Vec<&String> = now
        .iter()
        .filter(|(_, s)| *s != "done")
        .map(|(k, _)| k)
        .collect();
    assert_eq!(ready, ["default/b/g1", "default/b/g2"], "{now:?}");
    // A step set alone, through `dopc plan reset --stepset`.
    let out = server
        .client(&["plan", "reset", "granular", "--stepset", "other", "--force"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "2 node record(s) put back to ready\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let now = states().await;
    for (key, state) in &now {
        let expected = if key.starts_with("other/") || key.starts_with("default/b/") {
            "ready"
        } else {
            "done"
        };
        assert_eq!(state, expected, "{key}: {now:?}");
    }
    // A name the plan does not have: 422, nothing reset.
    let (status, body) = put(json!({"step_set": "nope", "force": true})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["error"]["message"], "plan 'granular' has no step set 'nope'; it has: default, other",
        "{body}"
    );
    assert_eq!(states().await, now, "nothing was reset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_states_and_resets_resolve_roles_as_dop_conf_says() {
    let mut server = Server::start().await;
    // No node has a role in the plan: dop.conf's `role_default` gives them one.
    server.dopc.set_dop_conf("role_default: web\n");
    server
        .plan("name: roled\ninfrastructures: {l: {type: baremetal}}\nnodes: {r1: {infrastructure: l}, r2: {infrastructure: l}}\nsteps:\n  default:\n    - name: webs\n      roles: web\n      command: {plugin: custom, exec: 'true'}\n")
        .await;
    let id = server.execute("roled", "run", json!({})).await;
    let e = server.wait(id).await;
    assert_eq!(e["status"], "done", "{e}");
    let (status, state) = server.get("/plans/roled/state").await;
    assert_eq!(status, 200, "{state}");
    let nodes = &state["step_sets"][0]["steps"][0]["nodes"];
    assert_eq!(nodes["r1"]["state"], "done", "{state}");
    assert_eq!(nodes["r2"]["state"], "done", "{state}");
    let (status, body) = server
        .call(
            reqwest::Method::PUT,
            "/plans/roled/reset",
            Some(json!({"force": true})),
        )
        .await;
    assert_eq!((status, &body["reset"]), (200, &json!(2)), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_updates_clear_or_keep_the_step_state_as_dopi_update_does() {
    let server = Server::start().await;
    let v1 = "name: kept\ninfrastructures: {l: {type: baremetal}}\nnodes: {k1: {infrastructure: l}}\nsteps:\n  default:\n    - name: a\n      nodes: all\n      command: {plugin: custom, exec: 'true'}\n";
    server.plan(v1).await;
    let id = server.execute("kept", "run", json!({})).await;
    assert_eq!(server.wait(id).await["status"], "done");
    let step_state = || async {
        let (_, state) = server.get("/plans/kept/state").await;
        state["step_sets"][0]["steps"][0]["nodes"]["k1"]["state"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(step_state().await, "done");
    let put = |body: Value| server.call(reqwest::Method::PUT, "/plans/kept", Some(body));

    // `ignore`: the changed step keeps its done state.
    let v2 = v1.replace("exec: 'true'", "exec: 'true # fixed'");
    let (status, body) = put(json!({"text": v2, "ignore": true})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "updated", "{body}");
    assert_eq!(
        body["state"], "dopi state kept: 1 node record(s) of changed steps keep their state",
        "{body}"
    );
    assert_eq!(step_state().await, "done");

    // Both at once: refused, nothing stored.
    let (status, body) = put(json!({"text": v1, "clear": true, "ignore": true})).await;
    assert_eq!(status, 422, "{body}");
    let (_, versions) = server.get("/plans/kept/versions").await;
    assert_eq!(
        versions["versions"].as_array().map(Vec::len),
        Some(2),
        "{versions}"
    );

    // `clear` by the plan's name alone (the original's form), through the command line.
    let out = server
        .client(&["plan", "update", "kept", "--clear"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "unchanged plan 'kept' (iteration 2)\ndopi state cleared: 1 node record(s) removed, every step is ready\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(step_state().await, "ready");
    // A body naming another plan than the path: refused, that plan untouched.
    let (status, body) = put(json!({"plan": "other", "clear": true})).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(
        body["error"]["message"], "the body names plan 'other', not 'kept'",
        "{body}"
    );
    // Without either, the name alone is still refused: dop keeps state by itself.
    let (status, body) = put(json!({"plan": "kept"})).await;
    assert_eq!(status, 422, "{body}");
}
