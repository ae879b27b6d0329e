//! dopv's and dopi's types in the API's words. The client cannot depend on dopv or dopi, so
//! `dopc_client::api` mirrors the parts of their types the API shows; these functions fill the
//! mirrors with exhaustive matches and destructuring, so that a variant or a field added over
//! there breaks this build instead of silently changing (or missing from) the wire format.

use dopc_client::api::{
    ActionKind, ActionOutcome, ActualDisk, ActualInterface, ActualNode, ChangeCost, ChangeSource,
    DeployStatus, DopvSummary, Drift, NeededFlag, NodeAction, NodeFieldChange, NodeSync,
    OutcomeResult, Power, RunState, SshEndpoint, SyncReason, SyncState,
};

/// A node's standing, in one word.
pub fn sync_state(state: dopv::standing::SyncState) -> SyncState {
    use dopv::standing::SyncState as S;
    match state {
        S::InSync => SyncState::InSync,
        S::Pending => SyncState::Pending,
        S::Drifted => SyncState::Drifted,
        S::Unknown => SyncState::Unknown,
    }
}

/// Why a sync would act on a node.
pub fn reason(reason: dopv::planner::Reason) -> SyncReason {
    use dopv::planner::Reason as R;
    match reason {
        R::NewInPlan => SyncReason::NewInPlan,
        R::RemovedFromPlan => SyncReason::RemovedFromPlan,
        R::ChangedInPlace => SyncReason::ChangedInPlace,
        R::ChangedRequiresReboot => SyncReason::ChangedRequiresReboot,
        R::ChangedRequiresRedeploy => SyncReason::ChangedRequiresRedeploy,
        R::Drifted => SyncReason::Drifted,
        R::Missing => SyncReason::Missing,
        R::Interrupted => SyncReason::Interrupted,
        R::FailedBefore => SyncReason::FailedBefore,
        R::FoundExisting => SyncReason::FoundExisting,
        R::UndeployRequested => SyncReason::UndeployRequested,
    }
}

/// A flag a held-back action needs.
pub fn flag(flag: dopv::planner::Flag) -> NeededFlag {
    match flag {
        dopv::planner::Flag::Destructive => NeededFlag::Destructive,
        dopv::planner::Flag::Interruptive => NeededFlag::Interruptive,
    }
}

/// What a sync would do about the node and why, and the flags it would need.
pub fn action(standing: &dopv::standing::Standing) -> (Option<SyncReason>, Vec<NeededFlag>) {
    match &standing.action {
        Some(a) => (
            Some(reason(a.reason)),
            a.held_back.iter().copied().map(flag).collect(),
        ),
        None => (None, Vec::new()),
    }
}

/// A node's standing as the state document shows it.
pub fn node_sync(standing: &dopv::standing::Standing) -> NodeSync {
    let (reason, held_back) = action(standing);
    NodeSync {
        state: sync_state(standing.state),
        reason,
        held_back,
        drift: standing
            .drift
            .iter()
            .map(|d| {
                let dopv::actual::Difference {
                    field,
                    actual,
                    expected,
                } = d.clone();
                Drift {
                    field,
                    actual,
                    expected,
                }
            })
            .collect(),
        pending: standing.pending.clone(),
        refreshed_at: standing.refreshed_ms.map(dop_core::time::rfc3339),
        read_error: standing.read_error.clone(),
    }
}

/// Where a node's deployment stands.
pub fn deploy_status(status: dopv::state::Status) -> DeployStatus {
    use dopv::state::Status as S;
    match status {
        S::Creating => DeployStatus::Creating,
        S::Deployed => DeployStatus::Deployed,
        S::Updating => DeployStatus::Updating,
        S::Destroying => DeployStatus::Destroying,
        S::Failed => DeployStatus::Failed,
    }
}

/// A node as its provider last reported it.
pub fn actual(actual: &dopv::actual::Actual) -> ActualNode {
    let dopv::actual::Actual {
        exists,
        power,
        fqdn,
        image,
        flavor,
        cores,
        memory,
        storage,
        interfaces,
        disks,
        credentials,
        dns,
        tags,
        security_groups,
        ssh_port,
        ssh,
    } = actual.clone();
    ActualNode {
        exists,
        power: power.map(|p| match p {
            dopv::actual::Power::On => Power::On,
            dopv::actual::Power::Off => Power::Off,
        }),
        fqdn,
        image,
        flavor,
        cores,
        memory,
        storage,
        interfaces: interfaces.map(|list| {
            list.into_iter()
                .map(|i| {
                    let dopv::actual::ActualInterface {
                        name,
                        ip,
                        floating_network,
                    } = i;
                    ActualInterface {
                        name,
                        ip,
                        floating_network,
                    }
                })
                .collect()
        }),
        disks: disks.map(|list| {
            list.into_iter()
                .map(|d| {
                    let dopv::actual::ActualDisk { name, size } = d;
                    ActualDisk { name, size }
                })
                .collect()
        }),
        credentials,
        dns,
        tags,
        security_groups,
        ssh_port,
        ssh: ssh.map(|s| {
            let dopv::actual::SshEndpoint { address, port } = s;
            SshEndpoint { address, port }
        }),
    }
}

/// Where a step, a step set or a node's part of a step stands.
pub fn run_state(state: dopi::RunState) -> RunState {
    match state {
        dopi::RunState::Ready => RunState::Ready,
        dopi::RunState::Running => RunState::Running,
        dopi::RunState::Done => RunState::Done,
        dopi::RunState::Failed => RunState::Failed,
    }
}

/// dopv's report as an execution's result.
pub fn dopv_summary(report: &dopv::Report) -> DopvSummary {
    let dopv::Report {
        plan: _,
        operation,
        iteration,
        serial,
        noop,
        actions,
        in_sync,
        outcomes,
        unreadable,
        stopped: _,
        execution_id: _,
        log_dir: _,
    } = report;
    DopvSummary {
        operation: operation.to_string(),
        iteration: *iteration,
        serial: *serial,
        noop: *noop,
        actions: actions.iter().map(node_action).collect(),
        in_sync: in_sync.clone(),
        outcomes: outcomes.iter().map(outcome).collect(),
        unreadable: unreadable.iter().map(outcome).collect(),
    }
}

fn action_kind(kind: dopv::planner::ActionKind) -> ActionKind {
    use dopv::planner::ActionKind as K;
    match kind {
        K::Create => ActionKind::Create,
        K::Adopt => ActionKind::Adopt,
        K::Update => ActionKind::Update,
        K::Redeploy => ActionKind::Redeploy,
        K::Destroy => ActionKind::Destroy,
    }
}

fn node_action(a: &dopv::planner::Action) -> NodeAction {
    let dopv::planner::Action {
        node,
        action,
        reason: why,
        changes,
        held_back,
        out_of_scope,
    } = a;
    NodeAction {
        node: node.clone(),
        action: action_kind(*action),
        reason: reason(*why),
        changes: changes.iter().map(field_change).collect(),
        held_back: held_back.iter().copied().map(flag).collect(),
        out_of_scope: *out_of_scope,
    }
}

fn field_change(c: &dopv::planner::Change) -> NodeFieldChange {
    use dopv::planner::Source;
    use dopv::provider::ChangeKind;
    let dopv::planner::Change {
        field,
        from,
        to,
        kind,
        source,
        destructive,
    } = c;
    NodeFieldChange {
        field: field.clone(),
        from: from.clone(),
        to: to.clone(),
        kind: match kind {
            ChangeKind::InPlace => ChangeCost::InPlace,
            ChangeKind::Reboot => ChangeCost::Reboot,
            ChangeKind::Redeploy => ChangeCost::Redeploy,
        },
        source: match source {
            Source::Plan => ChangeSource::Plan,
            Source::Drift => ChangeSource::Drift,
        },
        destructive: *destructive,
    }
}

fn outcome(o: &dopv::NodeOutcome) -> ActionOutcome {
    ActionOutcome {
        node: o.node.clone(),
        action: action_kind(o.action),
        result: match o.result {
            dopv::ActionResult::Done => OutcomeResult::Done,
            dopv::ActionResult::Failed => OutcomeResult::Failed,
            dopv::ActionResult::Skipped => OutcomeResult::Skipped,
            dopv::ActionResult::Stopped => OutcomeResult::Stopped,
        },
        error: o.error.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mirrors serialize as dopv's own types did before the API had them: clients that
    /// read the JSON see no difference.
    #[test]
    fn an_actual_node_reads_as_dopvs_report() {
        let report = dopv::actual::Actual {
            exists: true,
            power: Some(dopv::actual::Power::On),
            cores: Some(2),
            memory: Some(dop_core::DataSize(1 << 30)),
            interfaces: Some(vec![dopv::actual::ActualInterface {
                name: "eth0".into(),
                ip: "dhcp".into(),
                floating_network: None,
            }]),
            ssh: Some(dopv::actual::SshEndpoint {
                address: "10.0.0.5".into(),
                port: 22,
            }),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(actual(&report)).unwrap(),
            serde_json::to_value(&report).unwrap()
        );
    }

    #[test]
    fn every_word_is_dopvs_and_dopis_word() {
        use dopv::planner::Reason as R;
        for r in [
            R::NewInPlan,
            R::RemovedFromPlan,
            R::ChangedInPlace,
            R::ChangedRequiresReboot,
            R::ChangedRequiresRedeploy,
            R::Drifted,
            R::Missing,
            R::Interrupted,
            R::FailedBefore,
            R::FoundExisting,
            R::UndeployRequested,
        ] {
            assert_eq!(
                serde_json::to_value(reason(r)).unwrap(),
                serde_json::to_value(r).unwrap()
            );
            assert_eq!(serde_json::to_value(r).unwrap(), reason(r).name());
        }
        for s in dopv::standing::SyncState::ALL {
            assert_eq!(sync_state(s).name(), s.name());
        }
        for f in [
            dopv::planner::Flag::Destructive,
            dopv::planner::Flag::Interruptive,
        ] {
            assert_eq!(flag(f).to_string(), f.to_string());
        }
        use dopv::state::Status as S;
        for s in [
            S::Creating,
            S::Deployed,
            S::Updating,
            S::Destroying,
            S::Failed,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), deploy_status(s).name());
        }
        for s in [
            dopi::RunState::Ready,
            dopi::RunState::Running,
            dopi::RunState::Done,
            dopi::RunState::Failed,
        ] {
            assert_eq!(run_state(s).name(), s.as_str());
        }
    }
}
