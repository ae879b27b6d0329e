//! The provider interface: the few operations a cloud (or the local host) must offer. The
//! lifecycle built from them (create with disks and hooks, rollback, destroy, in-place changes,
//! reboots) lives once, in the driver, for every provider.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dop_core::plan::{Credential, DataDisk, Node, Plan, ProviderKind};
use dop_run::logs::NodeLog;
use serde::{Deserialize, Serialize};

use crate::actual::Actual;
use crate::state::DiskRecord;

/// What a change of one plan field costs on a provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// Applied to the running node.
    InPlace,
    /// Applied, then the node is restarted (`--interruptive`).
    Reboot,
    /// The node is destroyed and created again (`--destructive`).
    Redeploy,
}

/// Everything a provider needs to know about a node: the plan entry and what it refers to.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// The plan's name.
    pub plan: String,
    /// The node's plan entry.
    pub node: Node,
    /// Its SSH port (the infrastructure's `ssh_port`, else 22).
    pub ssh_port: u16,
    /// The plan credentials the node names, for the provider to install.
    pub credentials: Vec<Credential>,
    /// The node's Puppet autosign challenge in the clear, set only for a create: the provider
    /// hands it to the node as Puppet's `csr_attributes.yaml` and keeps it nowhere else
    /// (`dop_puppet::challenge` keeps only its hash).
    pub puppet_challenge: Option<String>,
}

/// A provider operation that failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProviderError(pub String);

impl ProviderError {
    /// An error from a message.
    pub fn new(message: impl Into<String>) -> ProviderError {
        ProviderError(message.into())
    }
}

/// Provider result.
pub type Result<T> = std::result::Result<T, ProviderError>;

/// The operations of one infrastructure.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Checks that the provider can be reached and used, before any node is touched.
    async fn check(&self) -> Result<()>;

    /// Problems that keep this provider from making the node as planned (empty: none).
    fn check_node(&self, spec: &NodeSpec) -> Vec<String>;

    /// What [`Provider::read`] reports for the node deployed and running as planned.
    fn expected(&self, spec: &NodeSpec) -> Actual;

    /// The node as it is (`exists: false` when there is none). `spec` is the entry it was
    /// deployed from when dopv knows one, else the plan's.
    async fn read(&self, spec: &NodeSpec) -> Result<Actual>;

    /// Creates the node without starting it. Recorded data disks are attached afterwards.
    async fn create(&self, spec: &NodeSpec, log: &NodeLog) -> Result<()>;

    /// Destroys the node (disks are detached first, by the driver). Gone already is success.
    async fn destroy(&self, spec: &NodeSpec, log: &NodeLog) -> Result<()>;

    /// Starts (`true`) or stops the node; returns once it is up (SSH answers) or down.
    async fn power(&self, spec: &NodeSpec, on: bool, log: &NodeLog) -> Result<()>;

    /// What changing `field` (a plan key, or `infrastructure_properties.<key>`) costs.
    /// Anything not implemented is a redeploy.
    fn change_kind(&self, field: &str) -> ChangeKind;

    /// What changing `field` from one value to another costs, for providers where that
    /// depends on the values (OpenStack: a floating IP added to an interface is in place, a
    /// new fixed address is not). The values are plan-shaped for plan changes and
    /// [`Actual`]-shaped for drift.
    fn change_kind_of(
        &self,
        field: &str,
        _from: &serde_json::Value,
        _to: &serde_json::Value,
    ) -> ChangeKind {
        self.change_kind(field)
    }

    /// Applies `spec`'s value of `field` to the existing node (for fields whose kind is
    /// in-place or reboot; the driver reboots afterwards when one needs it). Disks are the
    /// driver's, through the disk operations below.
    async fn apply(&self, spec: &NodeSpec, field: &str, log: &NodeLog) -> Result<()>;

    /// False for providers that cannot give a node a file at its first boot (`baremetal`):
    /// dopv then issues no autosign challenge for it (the operator does, for a pre-provisioned
    /// machine).
    fn hands_over_puppet_challenge(&self) -> bool {
        true
    }

    /// False for providers whose nodes' disks dopv does not manage (the plan's `disks` are
    /// then only recorded).
    fn manages_disks(&self) -> bool {
        true
    }

    /// Creates a data disk for the node; the driver records it in the disk DB.
    async fn add_disk(&self, spec: &NodeSpec, disk: &DataDisk) -> Result<DiskRecord>;

    /// Attaches a recorded disk to the node.
    async fn attach_disk(&self, spec: &NodeSpec, disk: &DiskRecord) -> Result<()>;

    /// Detaches a disk from the node, keeping it.
    async fn detach_disk(&self, spec: &NodeSpec, disk: &DiskRecord) -> Result<()>;

    /// Deletes a (detached) disk of the node.
    async fn destroy_disk(&self, spec: &NodeSpec, disk: &DiskRecord) -> Result<()>;
}

/// What the providers need from the caller.
#[derive(Clone, Debug)]
pub struct ProviderOptions {
    /// Where the `local` provider keeps its nodes and disks.
    pub local_dir: PathBuf,
    /// How long one request to a cloud API may take before it counts as unanswered.
    pub api_timeout: Duration,
    /// How long to wait for a cloud resource to reach a status (a server `ACTIVE`, a volume
    /// attached) before the node fails with the resource's last status.
    pub wait_timeout: Duration,
    /// Where dopv issues the created nodes' Puppet autosign challenges (the Hiera data
    /// directory, `dop_puppet::challenge`); `None`: nodes are created without one, and
    /// `dop-puppet-autosign` signs none of them.
    pub puppet_hiera_dir: Option<PathBuf>,
}

impl ProviderOptions {
    /// Default API timeout.
    pub const API_TIMEOUT: Duration = Duration::from_secs(60);
    /// Default wait timeout.
    pub const WAIT_TIMEOUT: Duration = Duration::from_secs(600);

    /// The options with default timeouts.
    pub fn new(local_dir: PathBuf) -> ProviderOptions {
        ProviderOptions {
            local_dir,
            api_timeout: Self::API_TIMEOUT,
            wait_timeout: Self::WAIT_TIMEOUT,
            puppet_hiera_dir: None,
        }
    }
}

/// The provider of an infrastructure (named for messages), or why there is none. `plan` is
/// the newest plan; an infrastructure no longer in it can only be reached by the providers
/// that need no settings from it.
#[cfg_attr(
    not(any(feature = "openstack", feature = "libvirt")),
    allow(unused_variables)
)]
pub fn for_infrastructure(
    kind: ProviderKind,
    infrastructure: &str,
    plan_name: &str,
    plan: &Plan,
    options: &ProviderOptions,
) -> Result<Arc<dyn Provider>> {
    match kind {
        ProviderKind::Baremetal => Ok(Arc::new(crate::providers::baremetal::Baremetal)),
        ProviderKind::Local => Ok(Arc::new(crate::providers::local::Local::new(
            &options.local_dir,
            plan_name,
        ))),
        #[cfg(feature = "openstack")]
        ProviderKind::Openstack => {
            let infra = plan.infrastructure(infrastructure).ok_or_else(|| {
                ProviderError::new(format!(
                    "infrastructure '{infrastructure}' is no longer in the plan: dopv needs its \
                     endpoint and credentials to reach its nodes; put it back to remove them"
                ))
            })?;
            Ok(Arc::new(crate::providers::openstack::OpenStack::new(
                infra, plan, plan_name, options,
            )?))
        }
        #[cfg(feature = "libvirt")]
        ProviderKind::Libvirt => {
            let infra = plan.infrastructure(infrastructure).ok_or_else(|| {
                ProviderError::new(format!(
                    "infrastructure '{infrastructure}' is no longer in the plan: dopv needs its \
                     connection URI to reach its nodes; put it back to remove them"
                ))
            })?;
            Ok(Arc::new(crate::providers::libvirt::Libvirt::new(
                infra, plan_name, options,
            )?))
        }
        other => Err(ProviderError::new(unavailable(infrastructure, other))),
    }
}

/// The providers this build of dopv has, by their plan `type`.
pub fn available() -> Vec<ProviderKind> {
    let mut kinds = vec![ProviderKind::Baremetal, ProviderKind::Local];
    if cfg!(feature = "openstack") {
        kinds.push(ProviderKind::Openstack);
    }
    if cfg!(feature = "libvirt") {
        kinds.push(ProviderKind::Libvirt);
    }
    kinds
}

/// The cargo feature that builds a provider into dopv, for providers that are one.
pub fn feature_of(kind: ProviderKind) -> Option<&'static str> {
    match kind {
        ProviderKind::Openstack => Some("openstack"),
        ProviderKind::Libvirt => Some("libvirt"),
        _ => None,
    }
}

/// Why a plan's infrastructure cannot be used by this build: the provider was left out of the
/// build (its feature is named), or dopv has no such provider (yet).
pub fn unavailable(infrastructure: &str, kind: ProviderKind) -> String {
    let available = available()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    match feature_of(kind) {
        Some(feature) => format!(
            "infrastructure '{infrastructure}': the {kind} provider is not in this build of dopv \
             (built without the cargo feature `{feature}`; available: {available}); use a dopv \
             built with it, e.g. the distribution's package, or `cargo build --features {feature}`"
        ),
        None => format!(
            "infrastructure '{infrastructure}': the {kind} provider is not available in this \
             version of dopv (available: {available})"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_provider_left_out_of_the_build_names_its_feature() {
        let message = unavailable("cloud", ProviderKind::Libvirt);
        assert!(
            message.contains("built without the cargo feature `libvirt`"),
            "{message}"
        );
        assert!(message.starts_with("infrastructure 'cloud': the libvirt provider"));
        let message = unavailable("cloud", ProviderKind::Openstack);
        assert!(message.contains("--features openstack"), "{message}");
    }

    /// A plan with one infrastructure of the given type and no nodes.
    fn plan_with(kind: &str) -> Plan {
        let text = format!(
            "name: p\ninfrastructures:\n  x:\n    type: {kind}\n    endpoint: 'https://127.0.0.1:1/'\n    \
             credentials: c\n    networks:\n      n: {{ip_pool: {{from: 10.9.0.10, to: 10.9.0.20}}, \
             ip_netmask: 255.255.255.0, ip_defgw: 10.9.0.1}}\n\
             credentials:\n  c: {{type: username_password, username: u, password: pw}}\n\
             nodes:\n  n1: {{infrastructure: x, image: img, interfaces: {{eth0: {{network: n, ip: 10.9.0.11}}}}}}\n"
        );
        let loaded = dop_core::load_str(&text, None, &dop_core::LookupSettings::default());
        let diagnostics = format!("{:?}", loaded.diagnostics);
        loaded.plan.expect(&diagnostics)
    }

    fn refusal(kind: ProviderKind, plan: &Plan) -> String {
        let options = ProviderOptions::new(std::env::temp_dir());
        match for_infrastructure(kind, "x", "p", plan, &options) {
            Ok(_) => panic!("{kind} should be refused"),
            Err(refused) => refused.to_string(),
        }
    }

    #[test]
    fn a_provider_dopv_does_not_have_is_refused_without_naming_a_feature() {
        let refused = refusal(ProviderKind::Ovirt, &plan_with("ovirt"));
        assert!(
            refused.contains("the ovirt provider is not available in this version of dopv"),
            "{refused}"
        );
        assert!(!refused.contains("cargo feature"), "{refused}");
    }

    #[test]
    fn a_vsphere_plan_is_refused_until_the_provider_exists() {
        // The plan loads (vSphere's required keys given); dopv has no vsphere provider yet.
        let text = "name: p\ninfrastructures:\n  x:\n    type: vmware\n    endpoint: 'https://127.0.0.1:1/sdk'\n    \
             credentials: c\n    networks:\n      n: {ip_pool: {from: 10.9.0.10, to: 10.9.0.20}, \
             ip_netmask: 255.255.255.0, ip_defgw: 10.9.0.1}\n\
             credentials:\n  c: {type: username_password, username: u, password: pw}\n\
             nodes:\n  n1: {infrastructure: x, image: tpl, timezone: UTC, \
             infrastructure_properties: {datacenter: DC0, cluster: DC0_C0}, \
             interfaces: {eth0: {network: n, ip: 10.9.0.11}}}\n";
        let loaded = dop_core::load_str(text, None, &dop_core::LookupSettings::default());
        let diagnostics = format!("{:?}", loaded.diagnostics);
        let plan = loaded.plan.expect(&diagnostics);
        let refused = refusal(ProviderKind::Vsphere, &plan);
        assert_eq!(
            refused,
            format!(
                "infrastructure 'x': the vsphere provider is not available in this version of \
                 dopv (available: {})",
                available()
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        );
    }

    #[test]
    fn the_build_lists_exactly_the_providers_it_has() {
        let kinds = available();
        assert_eq!(
            kinds.contains(&ProviderKind::Libvirt),
            cfg!(feature = "libvirt")
        );
        assert_eq!(
            kinds.contains(&ProviderKind::Openstack),
            cfg!(feature = "openstack")
        );
        for (kind, name) in [
            (ProviderKind::Libvirt, "libvirt"),
            (ProviderKind::Openstack, "openstack"),
        ] {
            if !kinds.contains(&kind) {
                let refused = refusal(kind, &plan_with(name));
                assert!(refused.contains("cargo feature"), "{refused}");
            }
        }
    }
}
