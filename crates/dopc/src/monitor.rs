//! The monitor: per plan, a `refresh` execution every `interval_secs` (dopv asks the providers
//! how the nodes are and records it; nothing changes), and, when the refresh finds nodes
//! drifted or plan changes pending and the plan's auto-sync policy allows, a `sync` of exactly
//! those nodes, within the policy's permissions. What the policy does not allow is reported in
//! the plan's monitor status and the state, never applied. Its executions are ordinary ones
//! (`created_by: monitor`), so they queue behind, and are listed with, everything else.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dop_store::{now_ms, rfc3339, Store};
use dopc_client::api::{MonitorDocument, MonitorFinding, MonitorSource, MonitorStatus};
use dopv::standing::{Standing, SyncState};

use crate::error::ApiError;
use crate::execution::{ExecOptions, Execution, Status, Task};
use crate::metrics::Metrics;
use crate::records::{self, Kind};
use crate::runner::{Request, Runner};

/// `created_by` of the monitor's executions.
pub const MONITOR: &str = "monitor";

/// How often the schedule is looked at.
const TICK: Duration = Duration::from_millis(500);

pub use dopc_client::api::{AutoSync, MonitorSettings};

/// What a sync queued by the monitor may do: what the plan's policy allows.
fn permissions(settings: &MonitorSettings) -> dopv::Permissions {
    dopv::Permissions {
        destructive: settings.auto_sync.destructive,
        interruptive: settings.auto_sync.interruptive,
    }
}

/// The monitor of every plan.
pub struct Monitor {
    runner: Arc<Runner>,
    metrics: Arc<Metrics>,
    providers: dopv::provider::ProviderOptions,
    configured: BTreeMap<String, MonitorSettings>,
    /// Per plan: when the next refresh is due (ms since the epoch), and the status.
    status: Mutex<HashMap<String, (u64, MonitorStatus)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Monitor {
    /// A monitor with the file's settings.
    pub fn new(
        runner: Arc<Runner>,
        metrics: Arc<Metrics>,
        providers: dopv::provider::ProviderOptions,
        configured: BTreeMap<String, MonitorSettings>,
    ) -> Arc<Monitor> {
        Arc::new(Monitor {
            runner,
            metrics,
            providers,
            configured,
            status: Mutex::new(HashMap::new()),
        })
    }

    fn store(&self) -> &Arc<Store> {
        self.runner.store()
    }

    /// The settings in force for `plan`, and where they come from.
    pub fn settings(
        &self,
        plan: &str,
    ) -> Result<(Option<MonitorSettings>, MonitorSource), ApiError> {
        if let Some(set) = records::get(self.store(), Kind::Monitor, plan)? {
            return Ok((Some(set), MonitorSource::Api));
        }
        Ok(match self.configured.get(plan) {
            Some(set) => (Some(set.clone()), MonitorSource::Config),
            None => (None, MonitorSource::None),
        })
    }

    /// Sets (`Some`) or removes the API setting of `plan`; the schedule starts over.
    pub fn set(&self, plan: &str, settings: Option<MonitorSettings>) -> Result<(), ApiError> {
        if let Some(s) = &settings {
            s.check()
                .map_err(|e| ApiError::invalid("invalid_monitor", e))?;
        }
        records::write(self.store(), Kind::Monitor, &[(plan.to_string(), settings)])?;
        lock(&self.status).remove(plan);
        Ok(())
    }

    /// The monitor document of a plan: settings, their source, the file's, and the status.
    pub fn document(&self, plan: &str) -> Result<MonitorDocument, ApiError> {
        let (settings, source) = self.settings(plan)?;
        let status = lock(&self.status)
            .get(plan)
            .map(|(_, s)| s.clone())
            .unwrap_or_default();
        Ok(MonitorDocument {
            plan: plan.to_string(),
            settings,
            source,
            configured: self.configured.get(plan).cloned(),
            status,
        })
    }

    /// Runs the schedule until `closing` turns true.
    pub async fn run(self: Arc<Self>, mut closing: tokio::sync::watch::Receiver<bool>) {
        let mut finished = self.runner.subscribe_finished();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = closing.changed() => return,
                _ = tick.tick() => {
                    let me = self.clone();
                    let _ = tokio::task::spawn_blocking(move || me.schedule()).await;
                }
                e = finished.recv() => match e {
                    Ok(e) if e.task == Task::Refresh && e.created_by == MONITOR => {
                        let me = self.clone();
                        let _ = tokio::task::spawn_blocking(move || me.refreshed(&e)).await;
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "the monitor missed finished executions");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }

    /// Queues the refreshes that are due; one still queued or running makes this one skip.
    fn schedule(&self) {
        let plans = match self.store().list() {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "the monitor cannot list the plans");
                return;
            }
        };
        let now = now_ms();
        for entry in plans {
            let plan = entry.name;
            let settings = match self.settings(&plan) {
                Ok((Some(s), _)) if s.enabled => s,
                Ok(_) => continue,
                Err(e) => {
                    tracing::error!(plan, error = e.message, "cannot read the monitor settings");
                    continue;
                }
            };
            let interval_ms = settings.interval_secs.saturating_mul(1000);
            let due = {
                let mut status = lock(&self.status);
                let (next, st) = status.entry(plan.clone()).or_default();
                if *next == 0 {
                    // First look since the start (or a new setting): refresh now.
                    *next = now;
                }
                let due = now >= *next;
                if due {
                    *next = now + interval_ms;
                }
                st.next_due_at = Some(rfc3339(*next));
                due
            };
            if !due {
                continue;
            }
            match self.runner.has_pending(&plan, Task::Refresh) {
                Ok(true) => {
                    if let Some((_, s)) = lock(&self.status).get_mut(&plan) {
                        s.skipped += 1;
                    }
                    self.metrics.refresh_skipped(&plan);
                    tracing::info!(plan, "refresh due, one still waiting or running: skipped");
                    continue;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(plan, error = %e, "cannot read the queue");
                    continue;
                }
            }
            let submitted = self.runner.submit(Request {
                plan: plan.clone(),
                task: Task::Refresh,
                options: ExecOptions::default(),
                created_by: MONITOR.into(),
                reason: Some(format!(
                    "scheduled refresh (every {} s)",
                    settings.interval_secs
                )),
            });
            match submitted {
                Ok(e) => {
                    if let Some((_, s)) = lock(&self.status).get_mut(&plan) {
                        s.last_refresh = Some(e.id);
                    }
                }
                Err(e) => tracing::error!(plan, error = e.message, "cannot queue a refresh"),
            }
        }
    }

    /// A refresh the monitor queued finished: record the findings, and queue a sync of the
    /// nodes the policy lets it change.
    fn refreshed(&self, e: &Execution) {
        let (verdict, findings, sync) = match self.judge(e) {
            Ok(v) => v,
            Err(message) => (message, Vec::new(), None),
        };
        tracing::info!(plan = e.plan, refresh = e.id, "{verdict}");
        let mut status = lock(&self.status);
        let (_, st) = status.entry(e.plan.clone()).or_default();
        st.last_checked_at = e.finished_at.clone();
        st.verdict = Some(verdict);
        st.findings = findings;
        if sync.is_some() {
            st.last_auto_sync = sync;
        }
    }

    /// The verdict, the findings and the sync queued (if any).
    #[allow(clippy::type_complexity)]
    fn judge(&self, e: &Execution) -> Result<(String, Vec<MonitorFinding>, Option<u64>), String> {
        let (settings, _) = self.settings(&e.plan).map_err(|e| e.message)?;
        let Some(settings) = settings else {
            return Err("the plan is no longer monitored".into());
        };
        let (plan, standings) = dopv::standing::of_stored_plan(
            self.store(),
            &e.plan,
            &self.providers,
            permissions(&settings),
        )?;
        let off: Vec<&Standing> = standings
            .iter()
            .filter(|s| s.state != SyncState::InSync)
            .collect();
        let findings = off.iter().map(|s| finding(s)).collect();
        let unknown = off.iter().any(|s| s.state == SyncState::Unknown);
        if e.status != Status::Done {
            let why = e.error.as_deref().unwrap_or("it did not finish");
            let verdict = if unknown {
                format!("refresh {} failed, the actual state of some nodes is unknown: nothing is synced ({why})", e.id)
            } else {
                format!(
                    "refresh {} {}: nothing is synced ({why})",
                    e.id,
                    e.status.name()
                )
            };
            return Ok((verdict, findings, None));
        }
        if off.is_empty() {
            return Ok((
                format!("refresh {}: every node is in sync", e.id),
                findings,
                None,
            ));
        }
        let summary = off
            .iter()
            .map(|s| format!("{} {}", s.node, s.state.name()))
            .collect::<Vec<_>>()
            .join(", ");
        if !settings.auto_sync.enabled {
            return Ok((
                format!(
                    "refresh {}: {summary}; auto-sync is off, reported only",
                    e.id
                ),
                findings,
                None,
            ));
        }
        if unknown {
            return Ok((
                format!(
                    "refresh {}: {summary}; some nodes are unknown, nothing is synced",
                    e.id
                ),
                findings,
                None,
            ));
        }
        let actionable: Vec<&str> = off
            .iter()
            .filter(|s| s.actionable())
            .map(|s| s.node.as_str())
            .collect();
        let held: Vec<String> = off
            .iter()
            .filter(|s| !s.actionable())
            .map(|s| held_back(s))
            .collect();
        let held_note = if held.is_empty() {
            String::new()
        } else {
            format!("; held back by the policy: {}", held.join(", "))
        };
        if actionable.is_empty() {
            return Ok((
                format!(
                    "refresh {}: {summary}; nothing the policy allows{held_note}",
                    e.id
                ),
                findings,
                None,
            ));
        }
        if self
            .runner
            .has_pending(&e.plan, Task::Sync)
            .map_err(|e| e.to_string())?
        {
            return Ok((
                format!(
                    "refresh {}: {summary}; a sync is already waiting or running{held_note}",
                    e.id
                ),
                findings,
                None,
            ));
        }
        // Run the steps afterwards only where the plan has the step set to run.
        let run = settings.auto_sync.run && plan.step_set("default").is_some();
        let request = Request {
            plan: e.plan.clone(),
            task: Task::Sync,
            options: ExecOptions {
                nodes: Some(actionable.join(",")),
                destructive: settings.auto_sync.destructive,
                interruptive: settings.auto_sync.interruptive,
                run: Some(run),
                ..ExecOptions::default()
            },
            created_by: MONITOR.into(),
            reason: Some(format!(
                "auto-sync after refresh {}: {}{held_note}",
                e.id,
                actionable.join(", ")
            )),
        };
        let sync = self.runner.submit(request).map_err(|e| e.message)?;
        self.metrics.auto_sync(&e.plan);
        Ok((
            format!(
                "refresh {}: {summary}; queued sync {} of {}{held_note}",
                e.id,
                sync.id,
                actionable.join(", ")
            ),
            findings,
            Some(sync.id),
        ))
    }
}

fn finding(s: &Standing) -> MonitorFinding {
    let (reason, held_back) = crate::api::mirror::action(s);
    MonitorFinding {
        node: s.node.clone(),
        state: crate::api::mirror::sync_state(s.state),
        reason,
        held_back,
        read_error: s.read_error.clone(),
    }
}

fn held_back(s: &Standing) -> String {
    let needs = s
        .action
        .as_ref()
        .map(|a| {
            a.held_back
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(" and ")
        })
        .unwrap_or_default();
    if needs.is_empty() {
        s.node.clone()
    } else {
        format!("{} (needs {needs})", s.node)
    }
}

#[cfg(test)]
mod tests {
    use crate::server::ServeConfig;

    #[test]
    fn the_shipped_dopc_toml_parses_with_every_example_switched_on() {
        let shipped = include_str!("../../../packaging/dopc.toml");
        let on: String = shipped
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| l.contains('=') || l.starts_with('['))
            .map(|l| format!("{l}\n"))
            .collect();
        let config = ServeConfig::from_toml(&on).unwrap_or_else(|e| panic!("{e}\n{on}"));
        let web = &config.monitor["web"];
        assert_eq!(web.interval_secs, 300);
        assert!(web.enabled && !web.auto_sync.enabled && web.auto_sync.run);
        assert!(config.tls.is_some());
    }

    #[test]
    fn monitor_settings_that_cannot_work_are_refused_naming_the_section() {
        let zero = ServeConfig::from_toml("[monitor.web]\ninterval_secs = 0\n").unwrap_err();
        assert_eq!(zero, "[monitor.web]: interval_secs must be at least 1");
        let unknown = ServeConfig::from_toml("[monitor.web]\ninterval_secs = 5\nauto_sink = {}\n")
            .unwrap_err();
        assert!(unknown.contains("unknown field `auto_sink`"), "{unknown}");
        let missing = ServeConfig::from_toml("[monitor.web]\nenabled = true\n").unwrap_err();
        assert!(
            missing.contains("missing field `interval_secs`"),
            "{missing}"
        );
    }
}
