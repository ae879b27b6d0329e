//! Data disks: the plan's disks made, attached and recorded; disks the plan dropped detached,
//! and deleted only when asked.

use dop_run::logs::NodeLog;
use dop_store::App;

use super::Ctx;
use crate::provider::{NodeSpec, Provider};
use crate::state::{disks_change, DiskRecord, DopvState};

/// The disk algorithm: recorded disks the plan has are attached, plan disks without a record
/// are made and recorded, recorded disks the plan dropped are detached (and, when `drop`,
/// deleted and forgotten).
pub(super) async fn attach_disks(
    ctx: &Ctx,
    spec: &NodeSpec,
    provider: &dyn Provider,
    log: &NodeLog,
    drop: bool,
) -> Result<(), String> {
    let name = &spec.node.name;
    let mut recorded: Vec<DiskRecord> = current_disks(ctx, name).await;
    for disk in recorded.clone() {
        match spec.node.disks.iter().find(|d| d.name == disk.name) {
            Some(planned) if planned.size.bytes() != disk.size => {
                return Err(format!(
                    "the data disk '{}' is {} bytes, the plan says {}: dopv does not resize disks; add a disk under a new name",
                    disk.name, disk.size, planned.size.bytes()
                ));
            }
            Some(_) => provider
                .attach_disk(spec, &disk)
                .await
                .map_err(|e| e.to_string())?,
            None => {
                provider
                    .detach_disk(spec, &disk)
                    .await
                    .map_err(|e| e.to_string())?;
                if drop {
                    delete_disk(ctx, provider, spec, &mut recorded, &disk, log).await?;
                } else {
                    log.line(&format!(
                        "the data disk '{}' is not in the plan: kept, detached ({})",
                        disk.name, disk.id
                    ));
                }
            }
        }
    }
    for planned in &spec.node.disks {
        if recorded.iter().any(|d| d.name == planned.name) {
            continue;
        }
        let disk = provider
            .add_disk(spec, planned)
            .await
            .map_err(|e| e.to_string())?;
        recorded.push(disk.clone());
        ctx.write(vec![disks_change(name, &recorded)]).await?;
        provider
            .attach_disk(spec, &disk)
            .await
            .map_err(|e| e.to_string())?;
        log.line(&format!("made the data disk '{}' ({})", disk.name, disk.id));
    }
    Ok(())
}

/// Deletes a (detached) disk, then drops it from the node's disk DB entry.
pub(super) async fn delete_disk(
    ctx: &Ctx,
    provider: &dyn Provider,
    spec: &NodeSpec,
    recorded: &mut Vec<DiskRecord>,
    disk: &DiskRecord,
    log: &NodeLog,
) -> Result<(), String> {
    provider
        .destroy_disk(spec, disk)
        .await
        .map_err(|e| e.to_string())?;
    recorded.retain(|d| d.name != disk.name);
    ctx.write(vec![disks_change(&spec.node.name, recorded)])
        .await?;
    log.line(&format!(
        "deleted the data disk '{}' ({})",
        disk.name, disk.id
    ));
    Ok(())
}

/// The node's disks as the state has them now (other runs' writes included).
pub(super) async fn current_disks(ctx: &Ctx, node: &str) -> Vec<DiskRecord> {
    if let Some(state) = &ctx.state {
        if let Ok(records) = state.read_async(App::Dopv).await {
            if let Ok(s) = DopvState::from_records(&records) {
                return s.disks.get(node).cloned().unwrap_or_default();
            }
        }
    }
    ctx.disks.get(node).cloned().unwrap_or_default()
}
