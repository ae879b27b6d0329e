//! What dopv's provider tests share beyond dop-testbed's lab (which cannot depend on dopi):
//! dopi, the library, running a plan's steps on the nodes dopv deployed in a lab.

use dop_testbed::dopv::DopvLab;

/// Runs the `default` step set of `plan` with dopi on the lab's store and logs, quietly, on
/// every node, giving each node `connect_timeout` seconds to answer.
pub fn dopi_run(
    lab: &DopvLab,
    plan: &str,
    redeployed: dopi::Redeployed,
    connect_timeout: u64,
) -> Result<dopi::RunReport, dopi::RunError> {
    let store = std::sync::Arc::new(dop_store::Store::open(&lab.store_dir()).unwrap());
    let opts = dopi::RunOptions {
        step_set: "default".into(),
        filter: dop_core::NodeFilter::all(),
        noop: false,
        settings: dop_core::LookupSettings::default(),
        log_dir: lab.log_dir(),
        echo: dopi::Echo::Quiet,
        handle_signals: false,
        connect_timeout,
        max_connections: None,
        limits: dop_core::ProgramLimits::default(),
        redeployed,
        stop: None,
        log: None,
        lock: None,
    };
    dop_run::blocking::runtime().unwrap().block_on(dopi::run(
        store,
        plan,
        &opts,
        &dopi::Registry::local(),
    ))
}
