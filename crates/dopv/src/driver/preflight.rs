//! The preflight: everything that can refuse a run, checked before it writes anything (the
//! lock, the state's serial, the providers and what they say of each planned node).

use std::collections::HashMap;
use std::sync::Arc;

use dop_core::plan::{Node, ProviderKind};
use dop_core::{NodeFacts, Plan, Resolver};
use dop_store::{App, Iteration, PlanLock, Store};

use super::{DopvError, Operation, RunOptions, Subject};
use crate::provider::{self, Provider};
use crate::standing::{spec_for, ssh_port};
use crate::state::DopvState;

/// What the preflight found: the run may go on with these.
pub(super) struct Checked {
    pub(super) command: String,
    pub(super) lock: Option<PlanLock>,
    pub(super) plan: Plan,
    pub(super) iteration: u64,
    pub(super) state: DopvState,
    /// Node patterns of the filter that match no node.
    pub(super) unmatched: Vec<String>,
    pub(super) subjects: Vec<Subject>,
    pub(super) unavailable: HashMap<String, String>,
}

/// Takes the plan (unless a preview), reads plan and state, and checks the selected nodes'
/// providers; every problem found is reported at once.
pub(super) async fn preflight(
    store: &Arc<Store>,
    plan_name: &str,
    opts: &RunOptions,
) -> Result<Checked, DopvError> {
    let command = format!(
        "dopv {}{}",
        opts.operation.name(),
        if opts.noop { " --noop" } else { "" }
    );
    let (lock, iteration, state) = {
        let (store, name, command, noop) = (
            store.clone(),
            plan_name.to_string(),
            command.clone(),
            opts.noop,
        );
        let held = opts.lock.clone().filter(|l| l.plan() == plan_name);
        dop_run::off_workers(move || read_plan(&store, &name, &command, noop, held)).await?
    };
    let plan = iteration.plan;
    if let Some(expected) = opts.expect_serial.filter(|e| *e != state.serial) {
        return Err(DopvError::StaleSerial {
            plan: plan_name.to_string(),
            expected,
            actual: state.serial,
        });
    }

    // Every node the run may look at: the plan's, then those only the state still knows.
    let mut universe = plan.clone();
    for (name, record) in &state.nodes {
        if plan.node(name).is_none() {
            universe.nodes.push(record.desired.clone());
        }
    }
    let resolver = Resolver::new(&universe, &opts.settings)?;
    let selection = opts.filter.select(&resolver);

    let mut checks = Checks {
        plan_name,
        plan: &plan,
        opts,
        providers: HashMap::new(),
        unavailable: HashMap::new(),
        problems: Vec::new(),
    };
    let mut subjects = Vec::new();
    for &i in &selection.nodes {
        let name = resolver.name(i);
        let node = &universe.nodes[i];
        if let Some(subject) = checks.subject(name, node, &state).await {
            subjects.push(subject);
        }
    }
    let Checks {
        unavailable,
        mut problems,
        ..
    } = checks;
    problems.dedup();
    if !problems.is_empty() {
        return Err(DopvError::Preflight(problems));
    }
    Ok(Checked {
        command,
        lock,
        iteration: iteration.info.number,
        plan,
        state,
        unmatched: selection.unmatched,
        subjects,
        unavailable,
    })
}

/// Takes the plan (unless the caller holds it, or a preview: it writes nothing) and reads it
/// and its dopv state; store work, so the caller runs it off the async workers.
fn read_plan(
    store: &Store,
    plan_name: &str,
    command: &str,
    noop: bool,
    held: Option<PlanLock>,
) -> Result<(Option<PlanLock>, Iteration, DopvState), DopvError> {
    let lock = match held {
        Some(held) => Some(held),
        None if noop => None,
        None => Some(store.lock(plan_name, command)?),
    };
    let iteration = store.iteration(plan_name, None)?;
    let records = store.state(plan_name, App::Dopv)?;
    let state = DopvState::from_records(&records).map_err(|reason| DopvError::State {
        plan: plan_name.to_string(),
        reason,
    })?;
    Ok((lock, iteration, state))
}

/// The providers met so far, and what was wrong with them or with the nodes.
struct Checks<'a> {
    plan_name: &'a str,
    plan: &'a Plan,
    opts: &'a RunOptions,
    providers: HashMap<(String, ProviderKind), Arc<dyn Provider>>,
    // `refresh` only looks: a provider that cannot be reached makes its nodes' standing
    // unknown (recorded), where the other commands refuse to start.
    unavailable: HashMap<String, String>,
    problems: Vec<String>,
}

impl Checks<'_> {
    /// The node as the run sees it, with its provider; `None` when it has none to be had.
    async fn subject(&mut self, name: &str, node: &Node, state: &DopvState) -> Option<Subject> {
        let plan = self.plan;
        let record = state.nodes.get(name).cloned();
        let in_plan = plan.node(name).is_some();
        let (kind, port) = match (plan.infrastructure(&node.infrastructure), &record) {
            (Some(infra), _) if in_plan => (infra.provider, ssh_port(plan, &infra.name)),
            (_, Some(r)) => (r.provider, r.ssh_port),
            (Some(infra), None) => (infra.provider, ssh_port(plan, &infra.name)),
            (None, None) => return None,
        };
        let provider = self.provider(kind, &node.infrastructure).await?;
        let spec = spec_for(plan, self.plan_name, node, port);
        if in_plan
            && !matches!(
                self.opts.operation,
                Operation::Undeploy { .. } | Operation::Refresh
            )
        {
            for p in provider.check_node(&spec) {
                self.problems.push(format!("nodes.{name}: {p}"));
            }
        }
        Some(Subject {
            spec,
            in_plan,
            record,
            provider,
            infrastructure: node.infrastructure.clone(),
        })
    }

    /// The infrastructure's provider, made and checked the first time it is asked for.
    async fn provider(
        &mut self,
        kind: ProviderKind,
        infrastructure: &str,
    ) -> Option<Arc<dyn Provider>> {
        let key = (infrastructure.to_string(), kind);
        if let Some(p) = self.providers.get(&key) {
            return Some(p.clone());
        }
        let made = provider::for_infrastructure(
            kind,
            infrastructure,
            self.plan_name,
            self.plan,
            &self.opts.providers,
        );
        match made {
            Ok(p) => {
                if let Err(e) = p.check().await {
                    let problem = format!("infrastructure '{infrastructure}': {e}");
                    if self.opts.operation == Operation::Refresh {
                        self.unavailable.insert(infrastructure.to_string(), problem);
                    } else {
                        self.problems.push(problem);
                    }
                }
                self.providers.insert(key, p.clone());
                Some(p)
            }
            Err(e) => {
                // Not kept: every node of the infrastructure tries again, and `dedup` folds the
                // repeated problem into one.
                self.problems.push(e.to_string());
                None
            }
        }
    }
}
