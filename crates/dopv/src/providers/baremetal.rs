//! `baremetal`: machines that exist already. dopv records them (so dopi knows where they are
//! and `show` lists them) and never creates, changes, powers or removes them.

use async_trait::async_trait;
use dop_core::plan::{DataDisk, IpSetting};
use dop_run::logs::NodeLog;

use crate::actual::{Actual, SshEndpoint};
use crate::provider::{ChangeKind, NodeSpec, Provider, ProviderError, Result};
use crate::state::DiskRecord;

/// The `baremetal` provider.
pub struct Baremetal;

fn endpoint(spec: &NodeSpec) -> SshEndpoint {
    let address = spec
        .node
        .interfaces
        .iter()
        .find_map(|i| match i.ip {
            IpSetting::Static(ip) => Some(ip.to_string()),
            _ => None,
        })
        .unwrap_or_else(|| spec.node.fqdn.trim_end_matches('.').to_string());
    SshEndpoint {
        address,
        port: spec.ssh_port,
    }
}

#[async_trait]
impl Provider for Baremetal {
    async fn check(&self) -> Result<()> {
        Ok(())
    }

    fn check_node(&self, _spec: &NodeSpec) -> Vec<String> {
        Vec::new()
    }

    fn expected(&self, spec: &NodeSpec) -> Actual {
        Actual {
            exists: true,
            ssh: Some(endpoint(spec)),
            ..Actual::default()
        }
    }

    async fn read(&self, spec: &NodeSpec) -> Result<Actual> {
        Ok(self.expected(spec))
    }

    async fn create(&self, _spec: &NodeSpec, log: &NodeLog) -> Result<()> {
        log.line("baremetal: the machine exists already; dopv records it");
        Ok(())
    }

    async fn destroy(&self, _spec: &NodeSpec, log: &NodeLog) -> Result<()> {
        log.line("baremetal: dopv does not remove machines; it forgets this one");
        Ok(())
    }

    async fn power(&self, _spec: &NodeSpec, _on: bool, _log: &NodeLog) -> Result<()> {
        Ok(())
    }

    fn change_kind(&self, _field: &str) -> ChangeKind {
        // Nothing to change on a machine dopv does not manage: the new entry is recorded.
        ChangeKind::InPlace
    }

    async fn apply(&self, _spec: &NodeSpec, field: &str, log: &NodeLog) -> Result<()> {
        log.line(&format!(
            "baremetal: '{field}' recorded (dopv does not change the machine)"
        ));
        Ok(())
    }

    fn manages_disks(&self) -> bool {
        false
    }

    fn hands_over_puppet_challenge(&self) -> bool {
        false
    }

    async fn add_disk(&self, _spec: &NodeSpec, disk: &DataDisk) -> Result<DiskRecord> {
        Err(ProviderError::new(format!(
            "baremetal: dopv does not manage the disk '{}'",
            disk.name
        )))
    }

    async fn attach_disk(&self, _spec: &NodeSpec, _disk: &DiskRecord) -> Result<()> {
        Ok(())
    }

    async fn detach_disk(&self, _spec: &NodeSpec, _disk: &DiskRecord) -> Result<()> {
        Ok(())
    }

    async fn destroy_disk(&self, _spec: &NodeSpec, _disk: &DiskRecord) -> Result<()> {
        Ok(())
    }
}
