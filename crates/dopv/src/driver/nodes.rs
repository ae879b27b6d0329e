//! The node lifecycle: create, adopt, destroy, redeploy and update one node over its
//! provider, with the plan's hooks and a rollback of a failed create, writing the node's
//! record before and after every step.

use dop_core::plan::{Node, ProviderKind};
use dop_core::{EventKind, Level};
use dop_run::logs::NodeLog;
use dop_store::now_ms;
use serde_json::json;

use super::disks::{attach_disks, current_disks, delete_disk};
use super::Ctx;
use crate::actual::Actual;
use crate::hooks::{self, Hook};
use crate::planner::{self, Action, ActionKind};
use crate::provider::{ChangeKind, NodeSpec, Provider};
use crate::state::{node_change, NodeRecord, Status};
use dop_puppet::challenge::Origin;

#[allow(clippy::too_many_arguments)]
pub(super) async fn execute(
    ctx: &Ctx,
    action: &Action,
    spec: &NodeSpec,
    record: Option<&NodeRecord>,
    actual: Option<&Actual>,
    provider: &dyn Provider,
    rmdisk: bool,
    log: &NodeLog,
) -> Result<(), String> {
    let deployed_spec = record.map(|r| NodeSpec {
        node: r.desired.clone(),
        ssh_port: r.ssh_port,
        ..spec.clone()
    });
    let exists = actual.is_some_and(|a| a.exists);
    match action.action {
        ActionKind::Create => create(ctx, spec, record, provider, log).await,
        ActionKind::Adopt => {
            let actual = provider.read(spec).await.map_err(|e| e.to_string())?;
            let record = NodeRecord {
                actual: Some(actual),
                refreshed_ms: Some(now_ms()),
                ..fresh_record(ctx, spec, Status::Deployed, None)
            };
            ctx.write(vec![node_change(&spec.node.name, Some(&record))])
                .await
        }
        ActionKind::Destroy => {
            let target = deployed_spec.as_ref().unwrap_or(spec);
            destroy(ctx, target, record, provider, rmdisk, exists, log).await
        }
        ActionKind::Redeploy => {
            let target = deployed_spec.as_ref().unwrap_or(spec);
            destroy(ctx, target, record, provider, false, true, log).await?;
            create(ctx, spec, record, provider, log).await
        }
        ActionKind::Update => update(ctx, action, spec, record, provider, log).await,
    }
}

/// A record for a node starting out: the plan entry, a new generation, nothing seen yet.
fn fresh_record(
    ctx: &Ctx,
    spec: &NodeSpec,
    status: Status,
    old: Option<&NodeRecord>,
) -> NodeRecord {
    NodeRecord {
        status,
        desired: spec.node.clone(),
        ssh_port: spec.ssh_port,
        provider: ctx
            .plan
            .infrastructure(&spec.node.infrastructure)
            .map_or(ProviderKind::Baremetal, |i| i.provider),
        iteration: ctx.iteration,
        generation: new_generation(old),
        actual: None,
        refreshed_ms: None,
        read_error: None,
        updated_ms: now_ms(),
        error: None,
    }
}

/// A generation newer than `old`'s: the time in milliseconds, moved past the old one.
fn new_generation(old: Option<&NodeRecord>) -> u64 {
    let now = now_ms();
    old.map_or(now, |r| now.max(r.generation + 1))
}

async fn run_hook(
    ctx: &Ctx,
    hook: Hook,
    spec: &NodeSpec,
    changed: bool,
    log: &NodeLog,
) -> Result<(), String> {
    let warnings = hooks::run(
        &ctx.plan.hooks,
        hook,
        &ctx.plan_name,
        &spec.node,
        changed,
        ctx.limits,
        log,
    )
    .await?;
    for w in warnings {
        ctx.event(
            Level::Warn,
            EventKind::Message,
            Some(&spec.node.name),
            w,
            json!({"hook": hook.key()}),
        );
    }
    Ok(())
}

fn with_status(base: &NodeRecord, status: Status, error: Option<String>) -> NodeRecord {
    NodeRecord {
        status,
        error,
        updated_ms: now_ms(),
        ..base.clone()
    }
}

async fn create(
    ctx: &Ctx,
    spec: &NodeSpec,
    old: Option<&NodeRecord>,
    provider: &dyn Provider,
    log: &NodeLog,
) -> Result<(), String> {
    run_hook(ctx, Hook::PreCreate, spec, true, log).await?;
    let record = fresh_record(ctx, spec, Status::Creating, old);
    ctx.write(vec![node_change(&spec.node.name, Some(&record))])
        .await?;
    // Issued before the provider is asked: the node may ask Puppet for its certificate as soon
    // as it boots, before dopv sees it up.
    let spec = &NodeSpec {
        puppet_challenge: issue_challenge(ctx, spec, &record, provider).await?,
        ..spec.clone()
    };
    match build(ctx, spec, provider, log).await {
        Ok(actual) => {
            let done = NodeRecord {
                actual: Some(actual),
                refreshed_ms: Some(now_ms()),
                ..with_status(&record, Status::Deployed, None)
            };
            ctx.write(vec![node_change(&spec.node.name, Some(&done))])
                .await?;
            run_hook(ctx, Hook::PostCreate, spec, true, log).await
        }
        Err(e) => {
            // Roll back what was built; recorded disks stay (detached) for the next try.
            log.line(&format!("create failed: {e}; rolling back"));
            for disk in ctx.disks.get(&spec.node.name).into_iter().flatten() {
                let _ = provider.detach_disk(spec, disk).await;
            }
            if let Err(r) = provider.destroy(spec, log).await {
                log.line(&format!("rollback failed too: {r}"));
            }
            revoke_challenge(ctx, &spec.node.name, log).await;
            let failed = with_status(&record, Status::Failed, Some(e.clone()));
            ctx.write(vec![node_change(&spec.node.name, Some(&failed))])
                .await?;
            Err(e)
        }
    }
}

/// Creates the node, its disks, and starts it; returns how it is.
async fn build(
    ctx: &Ctx,
    spec: &NodeSpec,
    provider: &dyn Provider,
    log: &NodeLog,
) -> Result<Actual, String> {
    // An earlier, interrupted create may have left a half-built node.
    if provider.read(spec).await.map_err(|e| e.to_string())?.exists {
        provider
            .destroy(spec, log)
            .await
            .map_err(|e| e.to_string())?;
    }
    provider
        .create(spec, log)
        .await
        .map_err(|e| e.to_string())?;
    if provider.manages_disks() {
        attach_disks(ctx, spec, provider, log, false).await?;
    }
    provider
        .power(spec, true, log)
        .await
        .map_err(|e| e.to_string())?;
    provider.read(spec).await.map_err(|e| e.to_string())
}

async fn destroy(
    ctx: &Ctx,
    spec: &NodeSpec,
    record: Option<&NodeRecord>,
    provider: &dyn Provider,
    rmdisk: bool,
    exists: bool,
    log: &NodeLog,
) -> Result<(), String> {
    let name = &spec.node.name;
    run_hook(ctx, Hook::PreDestroy, spec, exists, log).await?;
    if let Some(r) = record {
        ctx.write(vec![node_change(
            name,
            Some(&with_status(r, Status::Destroying, None)),
        )])
        .await?;
    }
    if provider.manages_disks() {
        let mut disks = current_disks(ctx, name).await;
        for disk in disks.clone() {
            if let Err(e) = provider.detach_disk(spec, &disk).await {
                log.line(&format!(
                    "warning: cannot detach the data disk '{}': {e}",
                    disk.name
                ));
            }
            if rmdisk {
                delete_disk(ctx, provider, spec, &mut disks, &disk, log).await?;
            }
        }
    }
    // A node the provider does not report may still have parts left by a run that stopped
    // half-way through it; a provider's destroy takes "gone already" for success.
    if exists || record.is_some_and(|r| r.status.may_have_left_parts()) {
        provider
            .destroy(spec, log)
            .await
            .map_err(|e| e.to_string())?;
    }
    revoke_challenge(ctx, name, log).await;
    ctx.write(vec![node_change(name, None)]).await?;
    run_hook(ctx, Hook::PostDestroy, spec, exists, log).await
}

/// A new Puppet autosign challenge for the node being created (generation `record`'s), when
/// its provider can hand it over; only its hash is kept (`dop_puppet::challenge`).
async fn issue_challenge(
    ctx: &Ctx,
    spec: &NodeSpec,
    record: &NodeRecord,
    provider: &dyn Provider,
) -> Result<Option<String>, String> {
    let Some(dir) = ctx.puppet_hiera_dir.clone() else {
        return Ok(None);
    };
    if !provider.hands_over_puppet_challenge() {
        return Ok(None);
    }
    let (plan, node, generation) = (
        ctx.plan_name.clone(),
        spec.node.name.clone(),
        record.generation,
    );
    dop_run::blocking::off_workers(move || {
        dop_puppet::challenge::issue(&dir, &plan, &node, generation, Origin::Dopv)
    })
    .await
    .map(Some)
    .map_err(|e| format!("cannot issue the node's Puppet autosign challenge: {e}"))
}

/// Takes back the challenge dopv issued the node (gone, or never made): no request signs with
/// it any more. A failure is said and does not stop the destroy (the challenge is with the
/// gone node only).
async fn revoke_challenge(ctx: &Ctx, node: &str, log: &NodeLog) {
    let Some(dir) = ctx.puppet_hiera_dir.clone() else {
        return;
    };
    let node_name = node.to_string();
    let revoked = dop_run::blocking::off_workers(move || {
        dop_puppet::challenge::revoke(&dir, &node_name, Origin::Dopv)
    })
    .await;
    if let Err(e) = revoked {
        log.line(&format!(
            "warning: the Puppet autosign challenge was not taken back: {e}"
        ));
    }
}

/// The deployed entry after an update: the old one with the fields the update applied taken
/// from the plan (a held-back part stays pending).
fn applied(old: &Node, new: &Node, action: &Action) -> Result<Node, String> {
    let mut merged = serde_json::to_value(old).map_err(|e| e.to_string())?;
    let planned = serde_json::to_value(new).map_err(|e| e.to_string())?;
    for change in action
        .changes
        .iter()
        .filter(|c| c.source == planner::Source::Plan)
    {
        // `infrastructure_properties.<key>` changes one setting of that map.
        let (parent, key) = match change.field.split_once('.') {
            Some((parent, key)) => (Some(parent), key),
            None => (None, change.field.as_str()),
        };
        let (from, into) = match parent {
            Some(p) => (planned.get(p), merged.get_mut(p)),
            None => (Some(&planned), Some(&mut merged)),
        };
        let value = from.and_then(|f| f.get(key)).cloned();
        match (into, value) {
            (Some(into), Some(v)) if into.is_object() => into[key] = v,
            (Some(into), None) => {
                if let Some(m) = into.as_object_mut() {
                    m.remove(key);
                }
            }
            (None, Some(v)) => {
                if let (Some(p), Some(m)) = (parent, merged.as_object_mut()) {
                    m.insert(p.to_string(), serde_json::json!({ key: v }));
                }
            }
            _ => {}
        }
    }
    serde_json::from_value(merged).map_err(|e| format!("cannot merge the node entry: {e}"))
}

async fn update(
    ctx: &Ctx,
    action: &Action,
    spec: &NodeSpec,
    record: Option<&NodeRecord>,
    provider: &dyn Provider,
    log: &NodeLog,
) -> Result<(), String> {
    let record = record.ok_or("no record of the node to update")?;
    // What the node becomes: only the fields this action applies change.
    let target = NodeSpec {
        node: applied(&record.desired, &spec.node, action)?,
        ..spec.clone()
    };
    let spec = &target;
    run_hook(ctx, Hook::PreUpdate, spec, true, log).await?;
    ctx.write(vec![node_change(
        &spec.node.name,
        Some(&with_status(record, Status::Updating, None)),
    )])
    .await?;
    let result = async {
        let mut reboot = false;
        for change in &action.changes {
            match change.field.as_str() {
                "disks" => attach_disks(ctx, spec, provider, log, true).await?,
                "power" => provider
                    .power(spec, true, log)
                    .await
                    .map_err(|e| e.to_string())?,
                field => provider
                    .apply(spec, field, log)
                    .await
                    .map_err(|e| e.to_string())?,
            }
            reboot |= change.kind == ChangeKind::Reboot;
        }
        if reboot {
            log.line("rebooting to apply the changes");
            provider
                .power(spec, false, log)
                .await
                .map_err(|e| e.to_string())?;
            provider
                .power(spec, true, log)
                .await
                .map_err(|e| e.to_string())?;
        }
        provider.read(spec).await.map_err(|e| e.to_string())
    }
    .await;
    match result {
        Ok(actual) => {
            let done = NodeRecord {
                status: Status::Deployed,
                desired: spec.node.clone(),
                ssh_port: spec.ssh_port,
                iteration: ctx.iteration,
                actual: Some(actual),
                refreshed_ms: Some(now_ms()),
                read_error: None,
                updated_ms: now_ms(),
                error: None,
                ..record.clone()
            };
            ctx.write(vec![node_change(&spec.node.name, Some(&done))])
                .await?;
            run_hook(ctx, Hook::PostUpdate, spec, true, log).await
        }
        Err(e) => {
            let failed = with_status(record, Status::Updating, Some(e.clone()));
            ctx.write(vec![node_change(&spec.node.name, Some(&failed))])
                .await?;
            Err(e)
        }
    }
}
