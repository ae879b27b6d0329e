//! `GET /metrics`: the server's numbers in the Prometheus text format (OpenMetrics), with the
//! Prometheus project's client. Counters and histograms are kept as things happen; what the
//! store already knows (executions by status, nodes by standing) is read at scrape time, so it
//! is right after a restart too.

use std::sync::{Arc, Mutex};

use dop_store::Store;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::execution::{Execution, Status, Task};

type Labels = Vec<(String, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Execution durations from 0.5 s to about 68 minutes.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.5, 2.0, 14))
}

/// The websocket streams a subscriber can follow.
#[derive(Clone, Copy, Debug)]
pub enum Stream {
    /// An execution's log.
    Log,
    /// A plan's state.
    State,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Log => "log",
            Stream::State => "state",
        }
    }
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    /// Serializes scrapes: each sets the store-derived gauges, then encodes.
    scrape: Mutex<()>,
    executions: Family<Labels, Gauge>,
    queue: Gauge,
    durations: Histograms,
    nodes: Family<Labels, Gauge>,
    commands: Family<Labels, Counter>,
    subscribers: Family<Labels, Gauge>,
    refreshes_skipped: Family<Labels, Counter>,
    auto_syncs: Family<Labels, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        let mut registry = Registry::with_prefix("dopc");
        let executions = Family::<Labels, Gauge>::default();
        registry.register(
            "executions",
            "Executions in the store, by task and status",
            executions.clone(),
        );
        let queue = Gauge::default();
        registry.register(
            "queue_length",
            "Executions waiting to run (new or queued)",
            queue.clone(),
        );
        let durations: Histograms = Family::new_with_constructor(duration_histogram);
        registry.register(
            "execution_duration_seconds",
            "How long finished executions ran, by task and status",
            durations.clone(),
        );
        let nodes = Family::<Labels, Gauge>::default();
        registry.register(
            "nodes",
            "Nodes per plan by standing: in_sync, pending, drifted, unknown (as of the last look)",
            nodes.clone(),
        );
        let commands = Family::<Labels, Counter>::default();
        registry.register(
            "dopi_commands",
            "dopi commands finished since the server started, by result",
            commands.clone(),
        );
        let subscribers = Family::<Labels, Gauge>::default();
        registry.register(
            "websocket_subscribers",
            "Open websocket streams, by stream",
            subscribers.clone(),
        );
        let refreshes_skipped = Family::<Labels, Counter>::default();
        registry.register(
            "monitor_refreshes_skipped",
            "Scheduled refreshes skipped because one was still queued or running, by plan",
            refreshes_skipped.clone(),
        );
        let auto_syncs = Family::<Labels, Counter>::default();
        registry.register(
            "monitor_auto_syncs",
            "Syncs the monitor queued, by plan",
            auto_syncs.clone(),
        );
        Metrics {
            registry,
            scrape: Mutex::new(()),
            executions,
            queue,
            durations,
            nodes,
            commands,
            subscribers,
            refreshes_skipped,
            auto_syncs,
        }
    }
}

/// Holds one websocket subscriber counted while it lives.
pub struct Subscriber {
    metrics: Arc<Metrics>,
    stream: Stream,
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.metrics
            .subscribers
            .get_or_create(&labels(&[("stream", self.stream.name())]))
            .dec();
    }
}

impl Metrics {
    /// Counts a websocket subscriber until the returned guard is dropped.
    pub fn subscriber(self: &Arc<Self>, stream: Stream) -> Subscriber {
        self.subscribers
            .get_or_create(&labels(&[("stream", stream.name())]))
            .inc();
        Subscriber {
            metrics: self.clone(),
            stream,
        }
    }

    /// A finished execution's run time.
    pub fn execution_finished(&self, task: Task, status: Status, seconds: f64) {
        self.durations
            .get_or_create(&labels(&[("task", task.name()), ("status", status.name())]))
            .observe(seconds);
    }

    /// A dopi command finished: `done`, `failed`, `stopped` or `skipped`.
    pub fn command_finished(&self, result: &str) {
        self.commands
            .get_or_create(&labels(&[("result", result)]))
            .inc();
    }

    /// The monitor skipped a refresh of `plan`.
    pub fn refresh_skipped(&self, plan: &str) {
        self.refreshes_skipped
            .get_or_create(&labels(&[("plan", plan)]))
            .inc();
    }

    /// The monitor queued a sync of `plan`.
    pub fn auto_sync(&self, plan: &str) {
        self.auto_syncs
            .get_or_create(&labels(&[("plan", plan)]))
            .inc();
    }

    /// The text to serve: store-derived gauges read now, then everything encoded.
    pub fn scrape(
        &self,
        store: &Store,
        book: &crate::book::ExecutionBook,
        providers: &dopv::provider::ProviderOptions,
    ) -> Result<String, String> {
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        let executions: Vec<Execution> = book.list(|_| true);
        self.executions.clear();
        let mut waiting = 0;
        for e in &executions {
            waiting += i64::from(matches!(e.status, Status::New | Status::Queued));
            self.executions
                .get_or_create(&labels(&[
                    ("task", e.task.name()),
                    ("status", e.status.name()),
                ]))
                .inc();
        }
        self.queue.set(waiting);
        self.nodes.clear();
        for entry in store.list().map_err(|e| e.to_string())? {
            let name = entry.name;
            // A plan whose state cannot be read now is left out of this scrape, not failed.
            let Ok((_, standings)) = dopv::standing::of_stored_plan(
                store,
                &name,
                providers,
                dopv::Permissions::default(),
            ) else {
                continue;
            };
            for word in dopv::standing::SyncState::ALL {
                let n = standings.iter().filter(|s| s.state == word).count();
                self.nodes
                    .get_or_create(&labels(&[("plan", &name), ("state", word.name())]))
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        let mut text = String::new();
        encode(&mut text, &self.registry).map_err(|e| e.to_string())?;
        Ok(text)
    }
}

/// A scrape without the samples labelled with a plan that `allows` refuses (for a token limited
/// to some plans, whose names stay hidden). Plan names cannot hold a quote, so the label's
/// value ends at the next one.
pub fn only_plans(text: &str, allows: impl Fn(&str) -> bool) -> String {
    text.lines()
        .filter(|line| {
            let plan = line
                .split_once("plan=\"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .map(|(name, _)| name);
            line.starts_with('#') || plan.is_none_or(&allows)
        })
        .flat_map(|line| [line, "\n"])
        .collect()
}

/// The content type of [`Metrics::scrape`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
