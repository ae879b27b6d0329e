//! Property-based tests (proptest) on how state writes merge: any sequence of writes (sets and
//! removals, by tool), direct or through a run's state session, leaves exactly what applying
//! them in order to a map leaves, each tool's records apart, the serial counting the writes;
//! on sled and on PostgreSQL (`common`).

#[macro_use]
mod common;

use std::collections::BTreeMap;

use dop_store::App;
use proptest::prelude::*;

const APPS: [App; 3] = [App::Dopi, App::Dopv, App::Hosts];

type Write = (usize, Vec<(u8, Option<i64>)>);

fn writes() -> impl Strategy<Value = Vec<Write>> {
    prop::collection::vec(
        (
            0..APPS.len(),
            prop::collection::vec((0..6u8, prop::option::of(-50..50i64)), 0..4),
        ),
        1..10,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn state_writes_merge_like_a_map_applied_in_order_on_sled(
        writes in writes(),
        through_session in any::<bool>(),
    ) {
        merge_like_a_map(&common::Bed::sled(), &writes, through_session)?;
    }
}

/// The same on PostgreSQL, a database per case; one bed is kept for the whole run so that the
/// cluster is started once.
#[test]
fn state_writes_merge_like_a_map_applied_in_order_on_postgres() {
    let _cluster_kept_up = common::Bed::postgres();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(24));
    runner
        .run(&(writes(), any::<bool>()), |(writes, through_session)| {
            merge_like_a_map(&common::Bed::postgres(), &writes, through_session)
        })
        .unwrap();
}

fn merge_like_a_map(
    bed: &common::Bed,
    writes: &[Write],
    through_session: bool,
) -> Result<(), TestCaseError> {
    let store = bed.open();
    let lock = store.lock("prop", "proptest").unwrap();
    let session = through_session.then(|| store.state_session(&lock));
    let mut model: BTreeMap<(usize, String), i64> = BTreeMap::new();
    let mut last = 0;
    for (n, (app, changes)) in writes.iter().enumerate() {
        let changes: Vec<(String, Option<serde_json::Value>)> = changes
            .iter()
            .map(|(k, v)| (format!("k{k}"), v.map(serde_json::Value::from)))
            .collect();
        for (key, value) in &changes {
            match value {
                Some(v) => model.insert((*app, key.clone()), v.as_i64().unwrap()),
                None => model.remove(&(*app, key.clone())),
            };
        }
        let serial = match &session {
            Some(s) => s.write(APPS[*app], changes).unwrap(),
            None => store
                .write_state(&lock, APPS[*app], &changes, Some(last))
                .unwrap(),
        };
        prop_assert!(serial > last, "write {} did not move the serial", n);
        if session.is_none() {
            prop_assert_eq!(serial, n as u64 + 1);
        }
        last = serial;
    }
    drop(session);
    for (a, app) in APPS.iter().enumerate() {
        let state = store.state("prop", *app).unwrap();
        let expected: BTreeMap<String, serde_json::Value> = model
            .iter()
            .filter(|((m, _), _)| *m == a)
            .map(|((_, k), v)| (k.clone(), (*v).into()))
            .collect();
        prop_assert_eq!(state.records, expected);
        prop_assert_eq!(state.serial, last);
    }
    Ok(())
}
