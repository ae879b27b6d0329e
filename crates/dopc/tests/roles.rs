//! Token roles and plan scopes against the real `dopc serve`: every row of the table in
//! docs/api.md called with a token of each role, plans outside a token's scope answered as
//! missing ones, the `dopc token` commands, and websocket streams closed when their token is
//! revoked. Plans are baremetal with `custom` steps on this host (no root, no nodes); the
//! server is stopped by pid when a test ends.

use std::io::BufRead;
use std::process::Stdio;
use std::time::{Duration, Instant};

use dop_testbed::dopc::DopcServer;
use dop_testbed::process::{text, Running};
use futures_util::StreamExt;
use serde_json::{json, Value};

const ROLES: [&str; 4] = ["metrics", "read", "operate", "admin"];

fn plan(name: &str, command: &str) -> String {
    format!(
        "name: {name}\ninfrastructures: {{l: {{type: baremetal}}}}\nnodes:\n  {name}-a: {{infrastructure: l}}\n\
         steps:\n  default:\n    - name: one\n      nodes: all\n      command: {{plugin: custom, exec: '{command}'}}\n"
    )
}

/// The server, an HTTP client and the admin token the harness made.
struct Bed {
    dopc: DopcServer,
    http: reqwest::Client,
}

impl Bed {
    fn start() -> Bed {
        Bed {
            dopc: DopcServer::start(env!("CARGO_BIN_EXE_dopc"), "admin-of-all"),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
        }
    }

    /// `dopc token create NAME ARGS…`: the token.
    fn token(&self, name: &str, args: &[&str]) -> String {
        let mut all = vec!["token", "create", name];
        all.extend(args);
        let out = self.dopc.command(&all).output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout).trim().to_string()
    }

    async fn call(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method, format!("{}/api/v1{path}", self.dopc.url()))
            .bearer_auth(token);
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

    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call(self.dopc.token(), method, path, body).await
    }

    async fn add_plan(&self, text: &str) {
        let (status, body) = self
            .admin("POST", "/plans", Some(json!({"text": text, "force": true})))
            .await;
        assert_eq!(status, 201, "{body}");
    }

    /// Runs the plan's steps with the admin token; the execution's id.
    async fn run(&self, plan: &str) -> u64 {
        let request = json!({"plan": plan, "task": "run", "options": {}});
        let (status, body) = self.admin("POST", "/executions", Some(request)).await;
        assert_eq!(status, 201, "{body}");
        body["id"].as_u64().unwrap()
    }

    async fn wait_final(&self, id: u64) {
        let started = Instant::now();
        loop {
            let (_, e) = self.admin("GET", &format!("/executions/{id}"), None).await;
            if ["done", "failed", "cancelled"].contains(&e["status"].as_str().unwrap_or("")) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "execution {id}: {e}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn ws(
        &self,
        token: &str,
        path: &str,
    ) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>
    {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = format!("{}/api/v1{path}", self.dopc.url()).replacen("http://", "ws://", 1);
        let mut req = url.into_client_request().unwrap();
        req.headers_mut()
            .insert("Authorization", format!("Bearer {token}").parse().unwrap());
        tokio_tungstenite::connect_async(req).await.unwrap().0
    }
}

/// One row of the roles table in docs/api.md: method, path, and per role whether it may.
struct Row {
    method: String,
    path: String,
    allowed: Vec<(&'static str, bool)>,
}

/// The table of docs/api.md as the operator reads it (the contract this test holds the server
/// to; a unit test keeps it equal to the code's table).
fn documented_rows() -> Vec<Row> {
    let doc = include_str!("../../../docs/api.md");
    let header = "| endpoint | metrics | read | operate | admin |";
    let table = &doc[doc.find(header).expect("the roles table in docs/api.md")..];
    table
        .lines()
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .filter(|l| !l.contains("GET /ping"))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            let (method, path) = cells[0].trim_matches('`').split_once(' ').unwrap();
            let allowed = ROLES
                .iter()
                .zip(&cells[1..])
                .map(|(role, cell)| (*role, *cell == "yes"))
                .collect();
            Row {
                method: method.to_string(),
                path: path.to_string(),
                allowed,
            }
        })
        .collect()
}

fn documented_endpoints() -> std::collections::BTreeSet<(String, String)> {
    let doc: Value = serde_json::from_str(include_str!("../../../docs/openapi.json")).unwrap();
    doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(path, _)| path.as_str() != "/api/v1/ping")
        .flat_map(|(path, methods)| {
            let path = path.trim_start_matches("/api/v1").to_string();
            methods
                .as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), path.clone()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_each_role_as_the_table_says() {
    let rows = documented_rows();
    let in_table: std::collections::BTreeSet<(String, String)> = rows
        .iter()
        .map(|r| (r.method.clone(), r.path.clone()))
        .collect();
    assert_eq!(
        in_table,
        documented_endpoints(),
        "the roles table must list every endpoint of openapi.json, once"
    );
    assert_eq!(in_table.len(), rows.len(), "a row twice");
    // What the issue asks of the roles, whatever the table says.
    let may = |method: &str, path: &str, role: &str| {
        let row = rows
            .iter()
            .find(|r| r.method == method && r.path == path)
            .unwrap();
        row.allowed.iter().any(|(r, yes)| *r == role && *yes)
    };
    for row in &rows {
        assert_eq!(
            may(&row.method, &row.path, "metrics"),
            row.path == "/metrics",
            "the metrics role may call /metrics and nothing else: {} {}",
            row.method,
            row.path
        );
        assert!(
            may(&row.method, &row.path, "admin"),
            "{} {}",
            row.method,
            row.path
        );
    }
    assert!(may("GET", "/executions/{id}/log", "read") && may("GET", "/plans/{name}", "read"));
    assert!(!may("POST", "/executions", "read") && may("POST", "/executions", "operate"));
    assert!(may("POST", "/executions/{id}/cancel", "operate"));
    assert!(may("PUT", "/plans/{name}/reset", "operate") && !may("POST", "/plans", "operate"));
    assert!(!may("PUT", "/plans/{name}/monitor", "operate"));

    let bed = Bed::start();
    bed.add_plan(&plan("web1", "echo web")).await;
    bed.add_plan(&plan("db", "echo db")).await;
    let db_run = bed.run("db").await;
    bed.wait_final(db_run).await;
    let tokens: Vec<(&str, String)> = ROLES
        .iter()
        .map(|role| {
            (
                *role,
                bed.token(
                    &format!("{role}-web"),
                    &["--role", role, "--plans", "/^web/"],
                ),
            )
        })
        .collect();
    // Answers of a plan and an execution that are really not there, for comparison.
    let (_, missing_plan) = bed.admin("GET", "/plans/nothere", None).await;
    let (_, missing_execution) = bed.admin("GET", "/executions/999999", None).await;
    let mut calls = 0;
    for row in &rows {
        let scoped = row.path.contains("{name}") || row.path.contains("{id}");
        for (role, token) in &tokens {
            let allowed = row.allowed.iter().any(|(r, yes)| r == role && *yes);
            // In scope: a plan of the token's pattern, an execution that is not there (never
            // one that exists, so that no allowed call changes what the next rows find).
            let path = row
                .path
                .replace("{name}", "web-none")
                .replace("{id}", "999999");
            let (status, body) = bed.call(token, &row.method, &path, None).await;
            let what = format!("{} {path} as {role}", row.method);
            assert_ne!(status, 401, "{what}: a valid token is never 401: {body}");
            if allowed {
                assert_ne!(status, 403, "{what}: the table allows it: {body}");
            } else {
                assert_eq!(status, 403, "{what}: the table refuses it: {body}");
                assert_eq!(body["error"]["code"], "forbidden", "{what}");
                let needed = ROLES
                    .iter()
                    .find(|r| row.allowed.iter().any(|(x, yes)| x == *r && *yes))
                    .unwrap();
                let message = body["error"]["message"].as_str().unwrap();
                assert!(
                    message.contains(&format!("needs a token with the role '{needed}'"))
                        && message.contains(&format!("has '{role}'")),
                    "{what}: {message}"
                );
            }
            calls += 1;
            if !scoped {
                continue;
            }
            // Outside the scope: the plan `db` and its execution exist, and are answered as
            // missing ones, whatever the role.
            let path = row
                .path
                .replace("{name}", "db")
                .replace("{id}", &db_run.to_string());
            let (status, body) = bed.call(token, &row.method, &path, None).await;
            let what = format!("{} {path} as {role} limited to /^web/", row.method);
            assert_eq!(status, 404, "{what}: {body}");
            let expected = match row.path.contains("{id}") {
                true => serde_json::to_string(&missing_execution)
                    .unwrap()
                    .replace("999999", &db_run.to_string()),
                false => serde_json::to_string(&missing_plan)
                    .unwrap()
                    .replace("nothere", "db"),
            };
            assert_eq!(
                body.to_string(),
                expected,
                "{what}: the body of a missing one"
            );
            calls += 1;
        }
    }
    assert!(calls >= 23 * 4, "{calls}");
    // The same read token without a scope sees `db`.
    let read_all = bed.token("read-all", &["--role", "read"]);
    assert_eq!(bed.call(&read_all, "GET", "/plans/db", None).await.0, 200);
    let path = format!("/executions/{db_run}/log");
    assert_eq!(bed.call(&read_all, "GET", &path, None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_outside_a_tokens_scope_are_left_out_and_never_touched() {
    let bed = Bed::start();
    bed.add_plan(&plan("web1", "echo web")).await;
    bed.add_plan(&plan("db", "echo db")).await;
    let web_run = bed.run("web1").await;
    let db_run = bed.run("db").await;
    bed.wait_final(web_run).await;
    bed.wait_final(db_run).await;
    let admin_web = bed.token("admin-web", &["--plans", "/^web/,other"]);
    let operate_web = bed.token("ops-web", &["--role", "operate", "--plans", "/^web/"]);

    // Lists leave the other plans out.
    let (_, plans) = bed.call(&admin_web, "GET", "/plans", None).await;
    let names: Vec<&str> = plans["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web1"]);
    let (_, executions) = bed.call(&operate_web, "GET", "/executions", None).await;
    let ids: Vec<u64> = executions
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, [web_run]);
    let (_, executions) = bed
        .call(&operate_web, "GET", "/executions?plan=db", None)
        .await;
    assert_eq!(executions, json!([]));
    let (status, metrics) = bed.call(&operate_web, "GET", "/metrics", None).await;
    let metrics = metrics.as_str().unwrap().to_string();
    assert_eq!(status, 200);
    assert!(metrics.contains("plan=\"web1\""), "{metrics}");
    assert!(!metrics.contains("plan=\"db\""), "{metrics}");
    let (_, all_metrics) = bed.admin("GET", "/metrics", None).await;
    assert!(all_metrics.as_str().unwrap().contains("plan=\"db\""));

    // Starting `db` is answered as for a plan that is not stored.
    let request = |plan: &str| json!({"plan": plan, "task": "run", "options": {}});
    let (status, refused) = bed
        .call(&operate_web, "POST", "/executions", Some(request("db")))
        .await;
    let (missing_status, missing) = bed
        .admin("POST", "/executions", Some(request("nothere")))
        .await;
    assert_eq!((status, missing_status), (422, 422), "{refused}");
    assert_eq!(
        refused.to_string(),
        missing.to_string().replace("nothere", "db")
    );

    // A scoped admin can neither replace `db` nor remove the history of `db`.
    let text = plan("db", "echo replaced");
    for method in ["POST", "PUT"] {
        let body = json!({"text": text, "force": true});
        let (status, answer) = bed.call(&admin_web, method, "/plans", Some(body)).await;
        assert_eq!(status, 404, "{method} /plans: {answer}");
        assert_eq!(answer["error"]["code"], "not_found");
    }
    let clear = json!({"statuses": ["done", "failed"]});
    let (status, removed) = bed
        .call(&admin_web, "DELETE", "/executions", Some(clear))
        .await;
    assert_eq!(status, 200, "{removed}");
    let removed: Vec<u64> = removed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(removed, [web_run], "only its own plans' executions");
    let (_, db_plan) = bed.admin("GET", "/plans/db", None).await;
    assert!(
        db_plan["text"].as_str().unwrap().contains("echo db"),
        "{db_plan}"
    );
    assert_eq!(db_plan["iteration"]["number"], 1);
    assert_eq!(
        bed.admin("GET", &format!("/executions/{db_run}"), None)
            .await
            .0,
        200
    );

    // A plan in scope is the token's to change.
    let (status, body) = bed
        .call(
            &admin_web,
            "POST",
            "/plans",
            Some(json!({"text": plan("web2", "echo two")})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

/// Times differ from run to run: `created …` and `revoked …` blanked.
fn without_times(line: &str) -> String {
    let mut out = line.to_string();
    for word in ["created ", "revoked "] {
        if let Some(at) = out.find(word) {
            let start = at + word.len();
            let end = out[start..].find(',').map_or(out.len(), |i| start + i);
            out.replace_range(start..end, "[time]");
        }
    }
    out
}

#[test]
fn token_create_takes_a_role_and_plans_and_token_list_shows_them() {
    let dopc = DopcServer::start(env!("CARGO_BIN_EXE_dopc"), "first");
    let made = |args: &[&str]| dopc.command(args).output().unwrap();
    let out = made(&[
        "token",
        "create",
        "ci",
        "--role",
        "operate",
        "--plans",
        "web,/^db-[0-9]+$/",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).trim().starts_with("dop_"));
    assert_eq!(
        text(&out.stderr),
        "token 'ci' (operate) created; it is shown only now: keep it safe\n"
    );
    assert!(
        made(&["token", "create", "prometheus", "--role", "metrics"])
            .status
            .success()
    );

    // Bad input: a usage error or an error line, and nothing stored.
    let unknown = made(&["token", "create", "x", "--role", "root"]);
    assert_eq!(unknown.status.code(), Some(64));
    assert!(
        text(&unknown.stderr).contains("unknown role 'root': use metrics, read, operate or admin"),
        "{}",
        text(&unknown.stderr)
    );
    let bad = made(&["token", "create", "y", "--plans", "web,/[/"]);
    assert_eq!(bad.status.code(), Some(1));
    insta::assert_snapshot!("token_create_bad_plans", text(&bad.stderr));

    dopc.command(&["token", "revoke", "first"])
        .output()
        .unwrap();
    let list = made(&["token", "list"]);
    let mut lines: Vec<String> = text(&list.stdout).lines().map(without_times).collect();
    lines.sort();
    insta::assert_snapshot!("token_list", lines.join("\n"));
    let json = made(&["token", "list", "--json"]);
    let mut tokens: Vec<Value> = serde_json::from_slice(&json.stdout).unwrap();
    tokens.sort_by_key(|t| t["name"].as_str().unwrap_or_default().to_string());
    for t in &mut tokens {
        for key in ["created_ms", "revoked_ms"] {
            if t.get(key).is_some() {
                t[key] = json!("[time]");
            }
        }
    }
    insta::assert_json_snapshot!("token_list_json", tokens);
}

/// Reads until the server closes the stream; the close frame's code and reason.
async fn close_of<S>(stream: &mut S) -> (u16, String)
where
    S: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
{
    use tokio_tungstenite::tungstenite::Message;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("the stream was closed within 20 s of the revocation");
        match next {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (frame.code.into(), frame.reason.to_string())
            }
            Some(Ok(Message::Close(None))) | None => panic!("closed without a code"),
            Some(Err(e)) => panic!("the stream failed instead of closing: {e}"),
            Some(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_of_a_revoked_token_are_closed_with_4401() {
    let bed = Bed::start();
    bed.add_plan(&plan("web1", "sleep 60")).await;
    let running = bed.run("web1").await;
    let watcher = bed.token("watcher", &["--role", "read"]);
    let mut log = bed
        .ws(&watcher, &format!("/executions/{running}/log/stream"))
        .await;
    let mut state = bed.ws(&watcher, "/plans/web1/state/stream").await;
    // Both streams are open and serving before the token goes.
    let first = tokio::time::timeout(Duration::from_secs(20), state.next())
        .await
        .unwrap();
    assert!(matches!(first, Some(Ok(m)) if m.is_text()));
    let first = tokio::time::timeout(Duration::from_secs(20), log.next())
        .await
        .unwrap();
    assert!(matches!(first, Some(Ok(m)) if m.is_text()));
    // And the client commands that follow them, each seen printing before the token goes.
    let id = running.to_string();
    let mut clients = Vec::new();
    for args in [
        vec!["plan", "state", "web1", "--watch", "--json"],
        vec!["execution", "log", &id, "--follow"],
    ] {
        let mut command = bed.dopc.command(&args);
        command
            .env("DOPC_URL", bed.dopc.url())
            .env("DOPC_TOKEN", &watcher)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut client = Running::spawn(&mut command);
        let stdout = client.0.stdout.take().unwrap();
        let first = tokio::task::spawn_blocking(move || {
            let mut lines = std::io::BufReader::new(stdout).lines();
            let first = lines.next();
            // Drained to the end, so that the client never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            first
        });
        let first = tokio::time::timeout(Duration::from_secs(30), first).await;
        assert!(
            matches!(first, Ok(Ok(Some(Ok(_))))),
            "dopc {args:?} printed nothing"
        );
        clients.push((args, client));
    }
    let out = bed
        .dopc
        .command(&["token", "revoke", "watcher"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        close_of(&mut log).await,
        (4401, "token revoked".to_string())
    );
    assert_eq!(
        close_of(&mut state).await,
        (4401, "token revoked".to_string())
    );
    for (args, mut client) in clients {
        let mut status = None;
        for _ in 0..300 {
            status = client.0.try_wait().unwrap();
            if status.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let status =
            status.unwrap_or_else(|| panic!("dopc {args:?} still runs 30 s after the revocation"));
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut client.0.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(
            status.code(),
            Some(6),
            "dopc {args:?}: the token refused: {stderr}"
        );
        assert!(
            stderr.contains("the server refused the token"),
            "dopc {args:?}: {stderr}"
        );
    }
    // The execution itself goes on; the admin's token still works.
    let (_, e) = bed
        .admin("GET", &format!("/executions/{running}"), None)
        .await;
    assert_eq!(e["status"], "running", "{e}");
    let cancel = format!("/executions/{running}/cancel");
    let (status, body) = bed
        .admin("POST", &cancel, Some(json!({"force": true})))
        .await;
    assert_eq!(status, 200, "{body}");
    bed.wait_final(running).await;
}
