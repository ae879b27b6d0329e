//! The execution queue: one running execution per plan, the others wait in order; each runs
//! as a task on the server's runtime, awaiting the dopv and dopi libraries and writing one
//! execution log (no thread and no runtime of its own: their store and provider work goes to
//! the runtime's blocking pool). Records are persisted at every status change, so the queue
//! and history survive a restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use dop_core::LookupSettings;
use dop_core::{EventKind, Level};
use dop_run::{Echo, ExecutionLog, Masker, Stop};
use dop_store::{now_ms, rfc3339, PlanLock, Store};
use dopc_client::api::{DopiOutcome, DopiSummary, DopvSummary, ExecutionResult};
use serde_json::json;
use tokio::sync::watch;

use crate::error::ApiError;
use crate::execution::{Execution, Status, Task};

/// How long an execution waits for its plan's run lock held by another writer.
const PLAN_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// What to run, and who asks.
#[derive(Clone, Debug)]
pub struct Request {
    /// The plan.
    pub plan: String,
    /// The task.
    pub task: Task,
    /// Its options.
    pub options: crate::execution::ExecOptions,
    /// The token's name, or `monitor`.
    pub created_by: String,
    /// Why, when no person asked.
    pub reason: Option<String>,
}

/// Where the runner keeps things.
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// Execution logs.
    pub log_dir: PathBuf,
    /// What dopv's providers need: the `local` provider's directory, cloud API timeouts.
    pub providers: dopv::provider::ProviderOptions,
    /// Seconds dopi waits for a node's SSH server.
    pub connect_timeout: u64,
    /// The time and output limits of the programs executions start on this host (`dop.conf`).
    pub limits: dop_core::ProgramLimits,
    /// How the nodes' roles resolve (`dop.conf`).
    pub lookup: LookupSettings,
}

struct Running {
    id: u64,
    stop: watch::Sender<Stop>,
    /// Stopped because the server shuts down: hand it back (queued) instead of cancelling.
    shutdown: bool,
}

#[derive(Default)]
struct Inner {
    running: HashMap<String, Running>,
    logs: HashMap<u64, Arc<ExecutionLog>>,
    accepting: bool,
    /// Execution tasks not yet returned. An execution leaves `running` before its task has
    /// saved it and looked at the queue; the server must not exit under those writes.
    tasks: usize,
}

/// The answer to a request to run a plan that is not stored (or that the caller may not see:
/// the same body, so that a token learns nothing of plans outside its scope).
pub fn no_plan_to_run(name: &str) -> ApiError {
    ApiError::invalid(
        "no_such_plan",
        format!("there is no plan '{name}' in the store; add it first"),
    )
}

/// The queue and its running executions.
pub struct Runner {
    store: Arc<Store>,
    /// The server's runtime: executions run on it as tasks.
    runtime: tokio::runtime::Handle,
    /// Every execution, as in the store (dopc is their only writer).
    book: crate::book::ExecutionBook,
    config: RunnerConfig,
    inner: Mutex<Inner>,
    /// Taken by every decision that changes an execution's status (start, cancel, finish),
    /// which is made on the execution as the book has it under this lock: two kicks cannot
    /// start one execution twice, and a cancel cannot write `running` back over the final
    /// status a finish wrote (both read and wrote without a common lock before).
    transitions: Mutex<()>,
    /// Tells waiters (shutdown) that an execution ended.
    ended: tokio::sync::Notify,
    /// Counts executions started, so that a stream of a waiting one follows it live at once.
    started: watch::Sender<u64>,
    /// Every execution that reached a final status (the monitor acts on its refreshes).
    finished: tokio::sync::broadcast::Sender<Execution>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Counts changes a cached plan state cannot see: executions ending, plans written.
    changes: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Runner {
    /// A runner, on the runtime it is called from; executions left `running` by a server that
    /// died are marked failed, never silently lost.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn start(
        store: Arc<Store>,
        config: RunnerConfig,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Arc<Runner>, dop_store::StoreError> {
        let book = crate::book::ExecutionBook::load(store.clone())?;
        let mut stale = Vec::new();
        for mut e in book.list(|e| e.status == Status::Running) {
            e.status = Status::Failed;
            e.finished_at = Some(rfc3339(now_ms()));
            e.error = Some(
                "interrupted: the server stopped while this execution ran; the plan's state \
                 records what finished, and running it again continues from there"
                    .into(),
            );
            stale.push((e.id, Some(e)));
        }
        if !stale.is_empty() {
            tracing::warn!(
                count = stale.len(),
                "executions interrupted by a server stop marked failed"
            );
            book.write(&stale)?;
        }
        let runner = Arc::new(Runner {
            store,
            runtime: tokio::runtime::Handle::current(),
            book,
            config,
            inner: Mutex::new(Inner {
                accepting: true,
                tasks: 0,
                ..Inner::default()
            }),
            transitions: Mutex::new(()),
            ended: tokio::sync::Notify::new(),
            started: watch::channel(0).0,
            finished: tokio::sync::broadcast::channel(256).0,
            metrics,
            changes: std::sync::atomic::AtomicU64::new(0),
        });
        runner.kick();
        Ok(runner)
    }

    /// Notes a change of plans or state: cached plan states are computed again.
    pub fn changed(&self) {
        self.changes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many changes were noted so far.
    pub fn changes(&self) -> u64 {
        self.changes.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Executions as they reach a final status, from now on.
    pub fn subscribe_finished(&self) -> tokio::sync::broadcast::Receiver<Execution> {
        self.finished.subscribe()
    }

    /// The store the runner works on.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// True when the plan has an execution of `task` waiting or running.
    pub fn has_pending(&self, plan: &str, task: Task) -> Result<bool, dop_store::StoreError> {
        Ok(self
            .book
            .any(|e| e.plan == plan && e.task == task && !e.status.is_final()))
    }

    /// Changes whenever an execution starts (for streams of waiting executions).
    pub fn subscribe_started(&self) -> watch::Receiver<u64> {
        self.started.subscribe()
    }

    /// The log of a running execution (for live streams).
    pub fn live_log(&self, id: u64) -> Option<Arc<ExecutionLog>> {
        lock(&self.inner).logs.get(&id).cloned()
    }

    /// True when an execution of the plan is running.
    pub fn plan_busy(&self, plan: &str) -> bool {
        lock(&self.inner).running.contains_key(plan)
    }

    /// The executions, as stored.
    pub fn book(&self) -> &crate::book::ExecutionBook {
        &self.book
    }

    fn save(&self, e: &Execution) {
        if let Err(err) = self.book.save(e) {
            tracing::error!(execution = e.id, error = %err, "cannot record the execution");
        }
    }

    /// Checks a request (the plan exists, its step set, the node filter) and queues it; it
    /// starts at once when its plan has no running execution.
    pub fn submit(self: &Arc<Self>, request: Request) -> Result<Execution, ApiError> {
        let Request {
            plan: name,
            task,
            options,
            created_by,
            reason,
        } = request;
        dop_core::check_plan_name(&name)
            .map_err(|e| ApiError::invalid("invalid_name", format!("plan name '{name}': {e}")))?;
        let plan = match self.store.iteration(&name, None) {
            Ok(it) => it.plan,
            Err(dop_store::StoreError::NoSuchPlan(_)) => return Err(no_plan_to_run(&name)),
            Err(e) => return Err(e.into()),
        };
        options
            .filter()
            .map_err(|e| ApiError::invalid("invalid_options", e.to_string()))?;
        if task.runs_steps() && plan.step_set(options.step_set()).is_none() {
            return Err(ApiError::invalid(
                "invalid_options",
                format!(
                    "plan '{}' has no step set '{}'; it has: {}",
                    plan.name,
                    options.step_set(),
                    plan.step_sets
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        if task == Task::Reset {
            let opts = dopi::ResetOptions {
                step_set: options.step_set.clone(),
                step: options.step.clone(),
                ..dopi::ResetOptions::default()
            };
            dopi::chosen_steps(&plan, &opts).map_err(|e| {
                ApiError::invalid("invalid_options", format!("reset of plan '{name}': {e}"))
            })?;
        } else if options.step.is_some() {
            return Err(ApiError::invalid(
                "invalid_options",
                format!(
                    "'step' is an option of 'reset' only, not of '{}': leave it out",
                    task.name()
                ),
            ));
        }
        let e = self.book.add(|id| Execution {
            id,
            plan: name.clone(),
            task,
            status: Status::New,
            options: options.clone(),
            created_by: created_by.clone(),
            reason: reason.clone(),
            created_at: rfc3339(now_ms()),
            started_at: None,
            finished_at: None,
            log_id: format!("dopc-{id}"),
            cancel_requests: 0,
            result: ExecutionResult::default(),
            error: None,
        })?;
        self.kick();
        Ok(e)
    }

    /// Starts what can start: per plan without a running execution, its oldest waiting one.
    /// The waiting executions are read under the transitions lock, so each is started once.
    pub fn kick(self: &Arc<Self>) {
        let _turn = lock(&self.transitions);
        let waiting = self
            .book
            .list(|e| matches!(e.status, Status::New | Status::Queued));
        for mut e in waiting {
            if let Some(stop) = self.claim(&e) {
                e.status = Status::Running;
                e.started_at = Some(rfc3339(now_ms()));
                self.save(&e);
                self.clone().launch(e, stop);
            } else if e.status == Status::New {
                e.status = Status::Queued;
                self.save(&e);
            }
        }
    }

    /// Makes `e` its plan's running execution, unless the plan has one or the server stops;
    /// the stop channel its run follows.
    fn claim(&self, e: &Execution) -> Option<watch::Receiver<Stop>> {
        let mut inner = lock(&self.inner);
        if !inner.accepting || inner.running.contains_key(&e.plan) {
            return None;
        }
        let (stop, follow) = watch::channel(Stop::No);
        inner.running.insert(
            e.plan.clone(),
            Running {
                id: e.id,
                stop,
                shutdown: false,
            },
        );
        inner.tasks += 1;
        Some(follow)
    }

    /// Runs a claimed execution as a task; everything that can fail or panic in it ends as
    /// the execution's status, and the plan is given back in every case.
    fn launch(self: Arc<Self>, e: Execution, stop: watch::Receiver<Stop>) {
        let runner = self.clone();
        self.runtime.spawn(async move {
            // Its own task, so that a panic anywhere in a run fails the execution instead of
            // leaving it running for ever.
            let (status, result, error) = guarded(runner.clone().execute(e.clone(), stop)).await;
            // Saving the record and starting what waited are store work: off the workers.
            let ending = runner.clone();
            dop_run::off_workers(move || ending.finish(e, status, result, error)).await;
            lock(&runner.inner).tasks -= 1;
            runner.ended.notify_waiters();
        });
    }

    /// Takes the plan's run lock for the whole execution, opens its log and runs its parts.
    async fn execute(
        self: Arc<Self>,
        e: Execution,
        stop: watch::Receiver<Stop>,
    ) -> (Status, ExecutionResult, Option<String>) {
        let opened = {
            let runner = self.clone();
            let e = e.clone();
            dop_run::off_workers(move || runner.open(&e)).await
        };
        let (plan_lock, log) = match opened {
            Ok(opened) => opened,
            Err(message) => return (Status::Failed, ExecutionResult::default(), Some(message)),
        };
        log.event_with(
            Level::Info,
            EventKind::ExecutionStarted,
            None,
            None,
            format!(
                "execution {} started: {} of plan '{}' (by {})",
                e.id,
                e.task.name(),
                e.plan,
                e.created_by
            ),
            json!({"execution": e.id, "task": e.task}),
        );
        let (status, result, error) =
            run_task(&self.store, &self.config, &e, &log, stop, &plan_lock).await;
        log.event_with(
            if status == Status::Done {
                Level::Info
            } else {
                Level::Error
            },
            EventKind::ExecutionFinished,
            None,
            None,
            format!("execution {} {}", e.id, status.name()),
            json!({"execution": e.id, "status": status}),
        );
        // Released (an fsync) before the execution is finished, so that the next one of the
        // plan can take it.
        dop_run::off_workers(move || drop(plan_lock)).await;
        (status, result, error)
    }

    /// The plan's run lock, held from before the first part reads the plan to after the last
    /// (a plan update cannot come between dopv's part and dopi's, and a preview holds it too),
    /// and the execution's log, live for streams.
    fn open(&self, e: &Execution) -> Result<(PlanLock, Arc<ExecutionLog>), String> {
        let plan_lock = self
            .take_plan(e)
            .map_err(|err| format!("cannot take plan '{}': {err}", e.plan))?;
        // The plan's literal secrets now; those from files and programs are resolved below,
        // inside the execution (secret programs run nowhere else), before anything is logged.
        let plan = self.store.iteration(&e.plan, None).ok().map(|i| i.plan);
        let masker = plan.as_ref().map(Masker::for_literals).unwrap_or_default();
        let log = ExecutionLog::create(
            &self.config.log_dir,
            &e.plan,
            &e.log_id,
            Echo::Quiet,
            masker,
        )
        .map_err(|err| {
            format!(
                "cannot write the logs under {}: {err}",
                self.config.log_dir.display()
            )
        })?;
        if let Some(plan) = &plan {
            log.masker().learn_sources(plan);
        }
        let metrics = self.metrics.clone();
        log.observe(Box::new(move |event| {
            if event.kind == EventKind::CommandFinished {
                let state = event.fields.get("state").and_then(|v| v.as_str());
                let skipped = event.fields.get("skipped") == Some(&json!(true));
                metrics.command_finished(match state {
                    Some("done") if skipped => "skipped",
                    Some("done") => "done",
                    Some("ready") => "stopped",
                    _ => "failed",
                });
            }
        }));
        lock(&self.inner).logs.insert(e.id, log.clone());
        self.started.send_modify(|n| *n += 1);
        Ok((plan_lock, log))
    }

    /// The plan's run lock for the execution. A plan write (an upload, a reset by the API)
    /// holds it for a moment: waited for, up to [`PLAN_LOCK_WAIT`]; a holder that keeps it
    /// longer (a `dopi run` on the command line) fails the execution, naming the holder.
    fn take_plan(&self, e: &Execution) -> Result<PlanLock, dop_store::StoreError> {
        let command = format!("dopc execution {} ({})", e.id, e.task.name());
        let deadline = std::time::Instant::now() + PLAN_LOCK_WAIT;
        loop {
            match self.store.lock(&e.plan, &command) {
                Err(dop_store::StoreError::Locked { .. })
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                taken => return taken,
            }
        }
    }

    /// Records how an execution ended, gives its plan back and starts what waits.
    fn finish(
        self: &Arc<Self>,
        e: Execution,
        status: Status,
        result: ExecutionResult,
        error: Option<String>,
    ) {
        let e = self.record_end(e, status, result, error);
        self.changed();
        if e.status.is_final() {
            let _ = self.finished.send(e.clone());
        }
        self.ended.notify_waiters();
        self.kick();
    }

    /// The end of an execution in the book, and the plan no longer running it: one step under
    /// the transitions lock, so that no kick sees the plan free with the execution running, and
    /// no cancel writes over the end.
    fn record_end(
        &self,
        e: Execution,
        status: Status,
        result: ExecutionResult,
        error: Option<String>,
    ) -> Execution {
        let _turn = lock(&self.transitions);
        let handed_back = {
            let mut inner = lock(&self.inner);
            inner.logs.remove(&e.id);
            let shutdown = inner
                .running
                .get(&e.plan)
                .is_some_and(|r| r.id == e.id && r.shutdown);
            if inner.running.get(&e.plan).is_some_and(|r| r.id == e.id) {
                inner.running.remove(&e.plan);
            }
            shutdown && status == Status::Cancelled
        };
        // As the book has it: a cancel may have counted requests meanwhile.
        let mut e = self.book.get(e.id).unwrap_or(e);
        if handed_back {
            e.status = Status::Queued;
            e.error = Some(
                "handed back when the server stopped; it continues when the server starts again"
                    .into(),
            );
        } else {
            e.status = status;
            e.error = error;
            e.finished_at = Some(rfc3339(now_ms()));
            if let Some(started) = e.started_at.as_deref().and_then(dop_store::parse_rfc3339) {
                let ms = now_ms().saturating_sub(started);
                self.metrics
                    .execution_finished(e.task, status, ms as f64 / 1000.0);
            }
        }
        e.result = result;
        self.save(&e);
        e
    }

    /// Cancels an execution: a waiting one at once; a running one is asked to stop, more
    /// firmly with every request (1: start nothing new, 2: terminate running commands, 3: kill
    /// them); `force` goes straight to terminate.
    /// Decided on the execution as the book has it under the transitions lock: a cancel racing
    /// the execution's end either counts before it or is refused after it.
    pub fn cancel(self: &Arc<Self>, id: u64, force: bool) -> Result<Execution, ApiError> {
        let _turn = lock(&self.transitions);
        let mut e: Execution = self
            .book
            .get(id)
            .ok_or_else(|| ApiError::not_found(format!("no execution {id}")))?;
        match e.status {
            Status::New | Status::Queued => {
                e.status = Status::Cancelled;
                e.finished_at = Some(rfc3339(now_ms()));
                e.error = Some("cancelled before it started".into());
                self.save(&e);
                Ok(e)
            }
            Status::Running => {
                e.cancel_requests = e.cancel_requests.saturating_add(1);
                let level = match (e.cancel_requests, force) {
                    (1, false) => Stop::Graceful,
                    (1, true) | (2, _) => Stop::Terminate,
                    _ => Stop::Kill,
                };
                if let Some(r) = lock(&self.inner)
                    .running
                    .get(&e.plan)
                    .filter(|r| r.id == id)
                {
                    r.stop.send_if_modified(|current| {
                        let raise = level > *current;
                        if raise {
                            *current = level;
                        }
                        raise
                    });
                }
                self.save(&e);
                Ok(e)
            }
            _ => Err(ApiError::conflict(format!(
                "execution {id} has already finished ({})",
                e.status.name()
            ))),
        }
    }

    /// Stops taking new work, asks running executions to stop gracefully and waits up to
    /// `timeout` for them; those that stop are handed back to the queue (they continue at the
    /// next start), those that do not are marked failed at the next start.
    pub async fn shutdown(self: &Arc<Self>, timeout: std::time::Duration) {
        {
            let mut inner = lock(&self.inner);
            inner.accepting = false;
            for r in inner.running.values_mut() {
                r.shutdown = true;
                r.stop.send_replace(Stop::Graceful);
            }
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.ended.notified();
            let idle = {
                let inner = lock(&self.inner);
                inner.running.is_empty() && inner.tasks == 0
            };
            if idle {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::warn!("executions still running at shutdown; they are marked failed at the next start");
                return;
            }
        }
    }
}

/// Awaits an execution on a task of its own: a panic in it becomes a failed execution (with
/// why), never an execution left running with its plan busy.
async fn guarded(
    run: impl std::future::Future<Output = (Status, ExecutionResult, Option<String>)> + Send + 'static,
) -> (Status, ExecutionResult, Option<String>) {
    tokio::spawn(run).await.unwrap_or_else(|failed| {
        (
            Status::Failed,
            ExecutionResult::default(),
            Some(format!(
                "internal error: the execution's task ended abnormally ({failed}); \
                 the plan's state records what finished"
            )),
        )
    })
}

/// Runs the task's parts in order; returns the status, per part a summary, and the error.
async fn run_task(
    store: &Arc<Store>,
    config: &RunnerConfig,
    e: &Execution,
    log: &Arc<ExecutionLog>,
    stop: watch::Receiver<Stop>,
    plan_lock: &PlanLock,
) -> (Status, ExecutionResult, Option<String>) {
    let filter = match e.options.filter() {
        Ok(f) => f,
        Err(err) => {
            return (
                Status::Failed,
                ExecutionResult::default(),
                Some(err.to_string()),
            )
        }
    };
    let part = Part {
        store,
        config,
        e,
        log,
        stop,
        plan_lock,
        filter,
        settings: config.lookup.clone(),
    };
    let o = &e.options;
    let mut result = ExecutionResult::default();
    let outcome: Result<(), (Status, String)> = async {
        let r = &mut result;
        match e.task {
            Task::Deploy => r.dopv = Some(part.dopv(dopv::Operation::Deploy).await?),
            Task::Undeploy => {
                r.dopv = Some(
                    part.dopv(dopv::Operation::Undeploy { rmdisk: o.rmdisk })
                        .await?,
                )
            }
            Task::Run => r.dopi = Some(part.dopi_run().await?),
            Task::Setup => {
                r.dopv = Some(part.dopv(dopv::Operation::Deploy).await?);
                r.dopi = Some(part.dopi_run().await?);
            }
            Task::Teardown => {
                r.dopv = Some(
                    part.dopv(dopv::Operation::Undeploy { rmdisk: o.rmdisk })
                        .await?,
                );
                if !o.noop {
                    r.dopi = Some(part.dopi_reset(true, None, None).await?);
                }
            }
            Task::Sync => {
                let permissions = dopv::Permissions {
                    destructive: o.destructive,
                    interruptive: o.interruptive,
                };
                r.dopv = Some(part.dopv(dopv::Operation::Sync(permissions)).await?);
                if o.run != Some(false) {
                    r.dopi = Some(part.dopi_run().await?);
                }
            }
            Task::Reset => {
                r.dopi = Some(
                    part.dopi_reset(o.force, o.step_set.clone(), o.step.clone())
                        .await?,
                )
            }
            Task::Refresh => r.dopv = Some(part.dopv(dopv::Operation::Refresh).await?),
        }
        Ok(())
    }
    .await;
    match outcome {
        Ok(()) => (Status::Done, result, None),
        Err((status, message)) => {
            // It may quote a command line or a program's output: never a secret in clear.
            let message = log.masker().mask(&message).into_owned();
            log.event_with(
                Level::Error,
                EventKind::Message,
                None,
                None,
                message.clone(),
                json!({}),
            );
            (status, result, Some(message))
        }
    }
}

/// What each part of an execution (a dopv command, a dopi run or reset) is given.
struct Part<'a> {
    store: &'a Arc<Store>,
    config: &'a RunnerConfig,
    e: &'a Execution,
    log: &'a Arc<ExecutionLog>,
    stop: watch::Receiver<Stop>,
    /// The execution's hold on the plan, handed to each part.
    plan_lock: &'a PlanLock,
    filter: dop_core::NodeFilter,
    settings: LookupSettings,
}

impl Part<'_> {
    async fn dopv(&self, operation: dopv::Operation) -> Result<DopvSummary, (Status, String)> {
        let opts = dopv::RunOptions {
            operation,
            filter: self.filter.clone(),
            noop: self.e.options.noop,
            settings: self.settings.clone(),
            log_dir: self.config.log_dir.clone(),
            echo: Echo::Quiet,
            providers: self.config.providers.clone(),
            expect_serial: None,
            limits: self.config.limits,
            handle_signals: false,
            stop: Some(self.stop.clone()),
            log: Some(self.log.clone()),
            lock: Some(self.plan_lock.clone()),
        };
        let report = dopv::run(self.store.clone(), &self.e.plan, &opts)
            .await
            .map_err(|err| (Status::Failed, err.to_string()))?;
        let summary = crate::api::mirror::dopv_summary(&report);
        if report.failed() {
            let failures: Vec<String> = report
                .unreadable
                .iter()
                .chain(&report.outcomes)
                .filter_map(|o| Some(format!("{}: {}", o.node, o.error.as_deref()?)))
                .collect();
            Err((
                Status::Failed,
                format!(
                    "dopv {} failed on some nodes: {}",
                    report.operation,
                    failures.join("; ")
                ),
            ))
        } else if report.stopped {
            Err((
                Status::Cancelled,
                format!("dopv {} was stopped", report.operation),
            ))
        } else {
            Ok(summary)
        }
    }

    async fn dopi_run(&self) -> Result<DopiSummary, (Status, String)> {
        let opts = dopi::RunOptions {
            step_set: self.e.options.step_set().to_string(),
            filter: self.filter.clone(),
            noop: self.e.options.noop,
            settings: self.settings.clone(),
            log_dir: self.config.log_dir.clone(),
            echo: Echo::Quiet,
            handle_signals: false,
            connect_timeout: self.config.connect_timeout,
            max_connections: None,
            limits: self.config.limits,
            // dopc orchestrates both tools: a node dopv redeployed runs its steps again.
            redeployed: dopi::Redeployed::Reset,
            stop: Some(self.stop.clone()),
            log: Some(self.log.clone()),
            lock: Some(self.plan_lock.clone()),
        };
        let report = dopi::run(
            self.store.clone(),
            &self.e.plan,
            &opts,
            &dopi::Registry::local(),
        )
        .await
        .map_err(|err| (Status::Failed, err.to_string()))?;
        match report.result {
            dopi::RunResult::Done => Ok(DopiSummary {
                result: Some(DopiOutcome::Done),
                recovered: Some(report.recovered),
                ..DopiSummary::default()
            }),
            dopi::RunResult::Noop { lines } => Ok(DopiSummary {
                result: Some(DopiOutcome::Noop),
                would_run: Some(lines),
                ..DopiSummary::default()
            }),
            dopi::RunResult::Failed { failures } => Err((
                Status::Failed,
                format!("dopi run failed: {}", failures.join("; ")),
            )),
            dopi::RunResult::Stopped => Err((Status::Cancelled, "dopi run was stopped".into())),
        }
    }

    /// Resets dopi's state of the selected nodes: of one step set, or one step of it, when
    /// given (as `dopi reset --stepset S --step N`), else of every step set.
    async fn dopi_reset(
        &self,
        force: bool,
        step_set: Option<String>,
        step: Option<String>,
    ) -> Result<DopiSummary, (Status, String)> {
        let opts = dopi::ResetOptions {
            step_set,
            step,
            filter: self.filter.clone(),
            force,
        };
        let (store, plan_lock, settings) = (
            self.store.clone(),
            self.plan_lock.clone(),
            self.settings.clone(),
        );
        let n =
            dop_run::off_workers(move || dopi::reset_holding(&store, &plan_lock, &opts, &settings))
                .await
                .map_err(|err| (Status::Failed, err.to_string()))?;
        self.log.event_with(
            Level::Info,
            EventKind::Message,
            None,
            None,
            format!("dopi reset: {n} node record(s) put back to ready"),
            json!({"reset": n}),
        );
        Ok(DopiSummary {
            reset: Some(n),
            ..DopiSummary::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_in_an_execution_fails_it_with_why() {
        let (status, result, error) = guarded(async { panic!("a bug in a part") }).await;
        assert_eq!(status, Status::Failed);
        assert_eq!(result, ExecutionResult::default());
        let error = error.unwrap();
        assert!(
            error.starts_with("internal error: the execution's task ended abnormally")
                && error.contains("a bug in a part"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_execution_that_returns_keeps_its_status() {
        let ended = guarded(async { (Status::Cancelled, ExecutionResult::default(), None) }).await;
        assert_eq!(ended, (Status::Cancelled, ExecutionResult::default(), None));
    }
}
