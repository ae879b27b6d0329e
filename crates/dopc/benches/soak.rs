//! Soak: dopc with 20 plans of 25 nodes (500 nodes) running steps for 10 minutes
//! (`DOP_SOAK_SECS` to change it), while 8 API readers poll the plans' state and the newest page
//! of their executions and 20 websocket followers stream the running executions' logs.
//!
//! Reported against baselines measured in the same run: the server's memory (RSS) at the end
//! against after the first tenth of the run (the warm-up), and the event latency of the last
//! tenth against the first tenth; plus errors (failed requests, executions that did not end
//! `done`, follower streams cut short) and throughput.
//!
//! Run with `cargo xtask bench soak` (release mode). The server is the real `dopc serve` binary
//! on an ephemeral loopback port, stopped by pid at the end; every command runs on this machine
//! (the plans' nodes are `custom` commands), nothing leaves it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dop_testbed::dopc::DopcServer;
use dop_testbed::process::{rss_kib, threads};
use futures_util::StreamExt;
use serde_json::{json, Value};

const PLANS: usize = 20;
const NODES_PER_PLAN: usize = 25;
const READERS: usize = 8;
const FOLLOWERS: usize = 20;

fn plan(p: usize) -> String {
    let mut t = format!("name: soak{p:02}\ninfrastructures:\n  lab: {{type: baremetal}}\nnodes:\n");
    for i in 0..NODES_PER_PLAN {
        t.push_str(&format!("  p{p:02}n{i:03}: {{infrastructure: lab}}\n"));
    }
    t.push_str("steps:\n  default:\n");
    for s in 0..3 {
        t.push_str(&format!(
            "    - name: s{s}\n      nodes: all\n      max_in_flight: 5\n      command: {{plugin: custom, exec: 'echo step {s}'}}\n"
        ));
    }
    t
}

fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1e3
}

#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    request_errors: AtomicU64,
    executions: AtomicU64,
    executions_not_done: AtomicU64,
    streams: AtomicU64,
    streams_cut: AtomicU64,
    /// (seconds since the start, latency in ms) of every command event a follower received.
    latencies: Mutex<Vec<(f64, f64)>>,
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn send(&self, req: reqwest::RequestBuilder, tally: &Tally) -> Option<Value> {
        tally.requests.fetch_add(1, Ordering::Relaxed);
        let ok = match req.bearer_auth(&self.token).send().await {
            Ok(res) if res.status().is_success() => res.json::<Value>().await.ok(),
            _ => None,
        };
        if ok.is_none() {
            tally.request_errors.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }
    async fn get(&self, path: &str, tally: &Tally) -> Option<Value> {
        self.send(self.http.get(format!("{}/api/v1{path}", self.base)), tally)
            .await
    }
    async fn post(&self, path: &str, body: Value, tally: &Tally) -> Option<Value> {
        self.send(
            self.http
                .post(format!("{}/api/v1{path}", self.base))
                .json(&body),
            tally,
        )
        .await
    }
}

/// Keeps plan `p` busy: reset, run, wait, again, until the deadline.
async fn driver(api: Arc<Api>, tally: Arc<Tally>, p: usize, deadline: Instant) {
    let name = format!("soak{p:02}");
    while Instant::now() < deadline {
        let _ = api
            .post(
                "/executions",
                json!({"plan": name, "task": "reset", "options": {"force": true}}),
                &tally,
            )
            .await;
        let Some(run) = api
            .post("/executions", json!({"plan": name, "task": "run"}), &tally)
            .await
        else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let id = run["id"].as_u64().unwrap_or(0);
        tally.executions.fetch_add(1, Ordering::Relaxed);
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let Some(e) = api.get(&format!("/executions/{id}"), &tally).await else {
                continue;
            };
            match e["status"].as_str() {
                Some("done") => break,
                Some("failed" | "cancelled") => {
                    tally.executions_not_done.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                _ => {}
            }
        }
    }
}

/// Polls plans' state and the execution list, round robin, until the deadline.
async fn reader(api: Arc<Api>, tally: Arc<Tally>, r: usize, deadline: Instant) {
    let mut p = r;
    while Instant::now() < deadline {
        let name = format!("soak{:02}", p % PLANS);
        let _ = api.get(&format!("/plans/{name}/state"), &tally).await;
        // A page of the newest, as a client shows them: a full list of a history that grows
        // for the whole run costs more with every minute, whatever the server does.
        let _ = api
            .get(&format!("/executions?plan={name}&limit=20"), &tally)
            .await;
        p += READERS;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Follows the newest run of plan `p` over the websocket, then the next, until the deadline.
async fn follower(api: Arc<Api>, tally: Arc<Tally>, p: usize, start: Instant, deadline: Instant) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let name = format!("soak{p:02}");
    let mut last = 0;
    while Instant::now() < deadline {
        let newest = api
            .get(
                &format!("/executions?plan={name}&status=running&limit=5"),
                &tally,
            )
            .await
            .and_then(|list| {
                list.as_array()?
                    .iter()
                    .filter(|e| e["task"] == "run")
                    .filter_map(|e| e["id"].as_u64())
                    .max()
            });
        let Some(id) = newest.filter(|id| *id != last) else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        last = id;
        let mut req = format!(
            "{}/api/v1/executions/{id}/log/stream",
            api.base.replacen("http://", "ws://", 1)
        )
        .into_client_request()
        .unwrap();
        req.headers_mut().insert(
            "Authorization",
            format!("Bearer {}", api.token).parse().unwrap(),
        );
        tally.streams.fetch_add(1, Ordering::Relaxed);
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(req).await else {
            tally.streams_cut.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        // What happened before the follower connected is replayed: not a delivery latency.
        let since = now_ms();
        let mut ended = false;
        while let Some(Ok(msg)) = ws.next().await {
            let Ok(v) = serde_json::from_str::<Value>(msg.to_text().unwrap_or("")) else {
                break;
            };
            if v["kind"] == "end" {
                ended = true;
                break;
            }
            let written = v["time_ms"].as_f64().unwrap_or(0.0);
            if written >= since
                && v["kind"]
                    .as_str()
                    .is_some_and(|k| k.starts_with("command_"))
            {
                let at = start.elapsed().as_secs_f64();
                tally
                    .latencies
                    .lock()
                    .unwrap()
                    .push((at, now_ms() - written));
            }
        }
        if !ended {
            tally.streams_cut.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p) as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds: u64 = std::env::var("DOP_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    // DOP_SOAK_KEEP_PER_PLAN: a retention that holds the history level within the run (the
    // default of 1000 per plan is never reached in 10 minutes), applied every 10 s.
    let keep: Option<usize> = std::env::var("DOP_SOAK_KEEP_PER_PLAN")
        .ok()
        .and_then(|s| s.parse().ok());
    let server = match keep {
        Some(n) => DopcServer::start_with_config(
            env!("CARGO_BIN_EXE_dopc"),
            "soak",
            &format!("[retention]\nkeep_per_plan = {n}\ninterval_secs = 10\n"),
        ),
        None => DopcServer::start(env!("CARGO_BIN_EXE_dopc"), "soak"),
    };
    let (pid, base, token) = (
        server.pid(),
        server.url().to_string(),
        server.token().to_string(),
    );
    let api = Arc::new(Api {
        http: reqwest::Client::new(),
        base,
        token,
    });
    let tally = Arc::new(Tally::default());
    for p in 0..PLANS {
        assert!(
            api.post("/plans", json!({"text": plan(p)}), &tally)
                .await
                .is_some(),
            "plan soak{p:02} not stored"
        );
    }
    println!(
        "dopc soak: {PLANS} plans x {NODES_PER_PLAN} nodes ({} nodes), 3 steps each, for {seconds} s; \
         {READERS} API readers, {FOLLOWERS} websocket followers; 2 worker threads; \
         history kept per plan: {}",
        PLANS * NODES_PER_PLAN,
        match (keep, dopc::retention::Retention::default().keep_per_plan) {
            (Some(n), _) => format!("{n}, every 10 s"),
            (None, Some(n)) => format!("{n} (the default)"),
            (None, None) => "all (the default)".to_string(),
        }
    );
    println!(
        "  memory (RSS) with the plans stored, before any run: {:.1} MiB",
        rss_kib(pid) as f64 / 1024.0
    );
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for p in 0..PLANS {
        tasks.push(tokio::spawn(driver(
            api.clone(),
            tally.clone(),
            p,
            deadline,
        )));
    }
    for r in 0..READERS {
        tasks.push(tokio::spawn(reader(
            api.clone(),
            tally.clone(),
            r,
            deadline,
        )));
    }
    for f in 0..FOLLOWERS {
        tasks.push(tokio::spawn(follower(
            api.clone(),
            tally.clone(),
            f % PLANS,
            start,
            deadline,
        )));
    }
    // Memory: sampled every second; the baseline is the peak of the first tenth (warm-up).
    let tenth = seconds as f64 / 10.0;
    let (mut warm, mut peak, mut last) = (0u64, 0u64, 0u64);
    // Threads: sampled with the memory, after the warm-up.
    let (mut fewest, mut most) = (u64::MAX, 0u64);
    // The RSS at the end of each tenth: whether memory levels off or keeps growing.
    let mut curve: Vec<u64> = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        last = rss_kib(pid);
        let at = start.elapsed().as_secs_f64();
        if at >= tenth * (curve.len() + 1) as f64 {
            curve.push(last);
        }
        if at <= tenth {
            warm = warm.max(last);
        } else {
            let now = threads(pid);
            fewest = fewest.min(now);
            most = most.max(now);
        }
        peak = peak.max(last);
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(60), t).await;
    }
    let latencies = tally.latencies.lock().unwrap().clone();
    let first: Vec<f64> = latencies
        .iter()
        .filter(|(at, _)| *at <= tenth)
        .map(|(_, l)| *l)
        .collect();
    let final_tenth: Vec<f64> = latencies
        .iter()
        .filter(|(at, _)| *at >= seconds as f64 - tenth)
        .map(|(_, l)| *l)
        .collect();
    let all: Vec<f64> = latencies.iter().map(|(_, l)| *l).collect();
    let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "  memory (RSS): after warm-up {:.1} MiB (baseline), peak {:.1} MiB, at the end {:.1} MiB; end/baseline {:.2}x",
        warm as f64 / 1024.0,
        peak as f64 / 1024.0,
        last as f64 / 1024.0,
        last as f64 / warm.max(1) as f64
    );
    let curve: Vec<String> = curve
        .iter()
        .map(|kib| format!("{:.0}", *kib as f64 / 1024.0))
        .collect();
    println!(
        "  memory (RSS) at the end of each tenth: {} MiB",
        curve.join(", ")
    );
    println!("  server threads after the warm-up: {fewest} to {most}");
    println!(
        "  event latency: first tenth p50 {:.1} ms p99 {:.1} ms (baseline); last tenth p50 {:.1} ms p99 {:.1} ms; p50 ratio {:.2}x; all {} events p99 {:.1} ms",
        pct(first.clone(), 0.5),
        pct(first.clone(), 0.99),
        pct(final_tenth.clone(), 0.5),
        pct(final_tenth.clone(), 0.99),
        pct(final_tenth, 0.5) / pct(first, 0.5),
        all.len(),
        pct(all, 0.99)
    );
    println!(
        "  runs: {} ({:.1}/min, {} node commands); not done: {}",
        n(&tally.executions),
        n(&tally.executions) as f64 * 60.0 / seconds as f64,
        n(&tally.executions) * 3 * NODES_PER_PLAN as u64,
        n(&tally.executions_not_done)
    );
    println!(
        "  API: {} requests, {} errors; log streams: {} followed, {} cut short",
        n(&tally.requests),
        n(&tally.request_errors),
        n(&tally.streams),
        n(&tally.streams_cut)
    );
    if n(&tally.request_errors) + n(&tally.executions_not_done) + n(&tally.streams_cut) > 0 {
        eprintln!("soak: errors above");
        std::process::exit(1);
    }
}
