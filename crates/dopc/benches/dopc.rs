//! dopc under load, against baselines measured in the same run:
//!
//! * requests per second on `GET /plans/{name}/state` (a 50-node plan with dopi and dopv
//!   state), against `GET /ping` (the server's floor: routing and HTTP only), 16 clients;
//! * event latency from dopi writing an event to 100 websocket subscribers receiving it,
//!   against 1 subscriber, for a run of 50 nodes × 4 steps (400 command events). The
//!   subscribers connect while the run waits in the queue behind a short `hold` execution, and
//!   only events written after a subscriber was connected count: a replay of what happened
//!   before it connected is not a delivery latency;
//! * the server's threads (`/proc/<pid>/status`), sampled while the runs go on.
//!
//! Run with `cargo xtask bench dopc` (release mode). The server is the real `dopc serve`
//! binary on an ephemeral loopback port, stopped by pid at the end.

use std::time::{Duration, Instant};

use dop_testbed::dopc::DopcServer;
use dop_testbed::process::threads;
use futures_util::StreamExt;
use serde_json::{json, Value};

const NODES: usize = 50;
const CLIENTS: usize = 16;
const SECONDS: u64 = 5;

fn plan() -> String {
    let mut t = String::from("name: bench\ninfrastructures:\n  lab: {type: baremetal}\nnodes:\n");
    for i in 0..NODES {
        t.push_str(&format!("  n{i:03}: {{infrastructure: lab}}\n"));
    }
    t.push_str("steps:\n  hold:\n    - name: hold\n      nodes: [n000]\n      command: {plugin: custom, exec: 'sleep 1'}\n  default:\n");
    for s in 0..4 {
        t.push_str(&format!("    - name: s{s}\n      nodes: all\n      max_in_flight: -1\n      command: {{plugin: custom, exec: 'true'}}\n"));
    }
    t
}

async fn hammer(http: &reqwest::Client, url: &str, token: &str) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(SECONDS);
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (http, url, token) = (http.clone(), url.to_string(), token.to_string());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let res = http.get(&url).bearer_auth(&token).send().await.unwrap();
                assert!(res.status().is_success());
                let _ = res.bytes().await.unwrap();
                n += 1;
            }
            n
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / SECONDS as f64
}

/// Runs the plan with `subscribers` websocket followers; returns the latencies (ms) of every
/// command event at every subscriber.
async fn latencies(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    subscribers: usize,
) -> Vec<f64> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let put = http
        .put(format!("{base}/api/v1/plans/bench/reset"))
        .bearer_auth(token)
        .json(&json!({"force": true}))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success());
    let execute = |step_set: &'static str| {
        let request = http
            .post(format!("{base}/api/v1/executions"))
            .bearer_auth(token)
            .json(&json!({"plan": "bench", "task": "run", "options": {"step_set": step_set}}));
        async move {
            let created: Value = request.send().await.unwrap().json().await.unwrap();
            created["id"].as_u64().unwrap()
        }
    };
    // The measured run waits in the queue behind `hold` while the subscribers connect.
    let _hold = execute("hold").await;
    let id = execute("default").await;
    let connected = std::sync::Arc::new(tokio::sync::Barrier::new(subscribers + 1));
    let mut followers = Vec::new();
    for _ in 0..subscribers {
        let mut req = format!(
            "{}/api/v1/executions/{id}/log/stream",
            base.replacen("http://", "ws://", 1)
        )
        .into_client_request()
        .unwrap();
        req.headers_mut()
            .insert("Authorization", format!("Bearer {token}").parse().unwrap());
        let connected = connected.clone();
        followers.push(tokio::spawn(async move {
            let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
            let since = now_ms();
            connected.wait().await;
            let mut lat = Vec::new();
            while let Some(Ok(msg)) = ws.next().await {
                let Ok(text) = msg.to_text() else { break };
                let received = now_ms();
                let Ok(seen) = serde_json::from_str::<Seen>(text) else {
                    break;
                };
                if seen.kind == "end" {
                    break;
                }
                let written = seen.time_ms.unwrap_or(0.0);
                if written >= since && seen.kind.starts_with("command_") {
                    lat.push(received - written);
                }
            }
            lat
        }));
    }
    connected.wait().await;
    let mut all = Vec::new();
    for f in followers {
        all.extend(f.await.unwrap());
    }
    all.sort_by(|a, b| a.total_cmp(b));
    all
}

/// The two fields of an event the latency needs. The 100 subscribers share the server's two
/// cores: building a whole JSON tree of every message would make the measuring client, not the
/// server, much of what is measured.
#[derive(serde::Deserialize)]
struct Seen<'a> {
    #[serde(borrow)]
    kind: std::borrow::Cow<'a, str>,
    time_ms: Option<f64>,
}

fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1e3
}

fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 - 1.0) * p) as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let server = DopcServer::start(env!("CARGO_BIN_EXE_dopc"), "bench");
    let (base, token) = (server.url().to_string(), server.token().to_string());
    let http = reqwest::Client::new();
    let added = http
        .post(format!("{base}/api/v1/plans"))
        .bearer_auth(&token)
        .json(&json!({"text": plan()}))
        .send()
        .await
        .unwrap();
    assert!(added.status().is_success());
    // State to serve: one run's worth of dopi records.
    let _ = latencies(&http, &base, &token, 1).await;

    println!(
        "dopc benchmark: {NODES} nodes, {CLIENTS} clients for {SECONDS} s each; 2 worker threads"
    );
    let ping = hammer(&http, &format!("{base}/api/v1/ping"), &token).await;
    let state = hammer(&http, &format!("{base}/api/v1/plans/bench/state"), &token).await;
    println!("  GET /ping (baseline)          {ping:>9.0} req/s");
    println!("  GET /plans/bench/state        {state:>9.0} req/s   ({:.2}x the baseline's time per request)", ping / state);
    // Three rounds each: on a shared 2-core machine the run, the server and 100 clients
    // compete for the cores, so single rounds vary a lot.
    let pid = server.pid();
    let idle_threads = threads(pid);
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                seen.push(threads(pid));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        })
    };
    let mut ones = Vec::new();
    let mut hundreds = Vec::new();
    for _ in 0..3 {
        ones.push(latencies(&http, &base, &token, 1).await);
        hundreds.push(latencies(&http, &base, &token, 100).await);
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let seen = sampler.await.unwrap();
    println!(
        "  server threads: {idle_threads} idle; {} to {} while the runs went on ({} samples)",
        seen.iter().min().unwrap_or(&0),
        seen.iter().max().unwrap_or(&0),
        seen.len()
    );
    let median = |runs: &[Vec<f64>], p: f64| {
        let mut v: Vec<f64> = runs.iter().map(|r| pct(r, p)).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        v[1]
    };
    for (i, (one, hundred)) in ones.iter().zip(&hundreds).enumerate() {
        println!(
            "  round {}: 1 subscriber p50 {:.1} ms p99 {:.1} ms; 100 subscribers p50 {:.1} ms p99 {:.1} ms ({} deliveries)",
            i + 1,
            pct(one, 0.5),
            pct(one, 0.99),
            pct(hundred, 0.5),
            pct(hundred, 0.99),
            hundred.len()
        );
    }
    println!(
        "  event latency, median of 3 rounds: 1 subscriber (baseline) p50 {:.1} ms; 100 subscribers p50 {:.1} ms, p99 {:.1} ms; p50 ratio {:.1}x",
        median(&ones, 0.5),
        median(&hundreds, 0.5),
        median(&hundreds, 0.99),
        median(&hundreds, 0.5) / median(&ones, 0.5).max(0.001)
    );
}
