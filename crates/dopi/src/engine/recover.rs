//! Recovery from a run that died: commands it left `running` go back to ready.

use dop_store::{App, StateSession, StoreError};

use crate::state::{PlanState, RunState};

/// Puts commands found `running` back to ready: the run that started them is gone (we hold the
/// lock), so they were interrupted and must run again.
pub(super) fn recover_interrupted(session: &StateSession) -> Result<usize, StoreError> {
    let state = PlanState::from_records(&session.read(App::Dopi)?);
    let mut changes = Vec::new();
    let mut count = 0;
    for (key, record) in state.records {
        if !record.commands.iter().any(|c| c.state == RunState::Running) {
            continue;
        }
        let mut record = record;
        for c in &mut record.commands {
            if c.state == RunState::Running {
                c.state = RunState::Ready;
                c.message = Some(
                    "interrupted: the run that started it ended before it finished; it runs again"
                        .into(),
                );
                count += 1;
            }
        }
        record.refresh();
        changes.push((key, Some(serde_json::to_value(&record).unwrap_or_default())));
    }
    if !changes.is_empty() {
        session.write(App::Dopi, changes)?;
    }
    Ok(count)
}
