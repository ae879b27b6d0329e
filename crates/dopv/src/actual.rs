//! A node as its provider reports it, in the shape of the plan's node entry, and the fields in
//! which it differs from what the plan wants (drift).

use dop_core::plan::{DataDisk, Dns, Interface, IpSetting};
use dop_core::DataSize;
use serde::{Deserialize, Serialize};

/// Whether a node runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Power {
    /// Running.
    On,
    /// Stopped.
    Off,
}

/// An interface as it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActualInterface {
    /// The interface name (`eth0`).
    pub name: String,
    /// Its address (`dhcp` / `none` when it has no fixed one).
    pub ip: String,
    /// The network its floating IP comes from (OpenStack), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floating_network: Option<String>,
}

impl ActualInterface {
    /// How the plan's address setting reads in an [`ActualInterface`]: the address, or
    /// `dhcp` / `none`.
    pub fn ip_word(ip: &IpSetting) -> String {
        match ip {
            IpSetting::Static(ip) => ip.to_string(),
            IpSetting::Dhcp => "dhcp".into(),
            IpSetting::None => "none".into(),
        }
    }

    /// The plan's interfaces as a provider reports them when deployed as planned.
    pub fn planned(interfaces: &[Interface]) -> Vec<ActualInterface> {
        interfaces
            .iter()
            .map(|i| ActualInterface {
                name: i.name.clone(),
                ip: ActualInterface::ip_word(&i.ip),
                floating_network: i.floating_network.clone(),
            })
            .collect()
    }
}

/// A data disk as it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActualDisk {
    /// The disk's plan name.
    pub name: String,
    /// Its size.
    pub size: DataSize,
}

impl ActualDisk {
    /// The plan's data disks as a provider reports them when all are attached: by name.
    pub fn planned(disks: &[DataDisk]) -> Vec<ActualDisk> {
        let mut out: Vec<ActualDisk> = disks
            .iter()
            .map(|d| ActualDisk {
                name: d.name.clone(),
                size: d.size,
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// Where dopi reaches the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshEndpoint {
    /// The address sshd listens on.
    pub address: String,
    /// Its port.
    pub port: u16,
}

/// A node as its provider reports it. A field is `None` when the provider cannot tell; only
/// fields both sides know are compared.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actual {
    /// Whether the node exists at all.
    pub exists: bool,
    /// On or off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub power: Option<Power>,
    /// Its host name, fully qualified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fqdn: Option<String>,
    /// The image it was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The cloud's flavor (OpenStack).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flavor: Option<String>,
    /// CPU cores.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<u32>,
    /// Memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<DataSize>,
    /// Root disk size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<DataSize>,
    /// Interfaces, in plan order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<ActualInterface>>,
    /// Data disks, by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<ActualDisk>>,
    /// Users that can log in with a plan credential, sorted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Vec<String>>,
    /// DNS settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    /// Tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Security groups, sorted (OpenStack).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_groups: Option<Vec<String>>,
    /// The SSH port of the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,
    /// Where dopi reaches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshEndpoint>,
}

/// One field in which the node differs from what is wanted.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Difference {
    /// The plan key (`cores`, `disks`, …) or `power` / `exists`.
    pub field: String,
    /// What it is.
    pub actual: serde_json::Value,
    /// What it should be.
    pub expected: serde_json::Value,
}

impl Actual {
    /// The fields in which this node differs from `expected`; fields either side does not know
    /// are skipped. A node that does not exist differs only in `exists`.
    pub fn drift(&self, expected: &Actual) -> Vec<Difference> {
        if self.exists != expected.exists {
            return vec![Difference {
                field: "exists".into(),
                actual: self.exists.into(),
                expected: expected.exists.into(),
            }];
        }
        let ours = to_map(self);
        let wanted = to_map(expected);
        COMPARED
            .iter()
            .filter_map(|field| {
                let (a, e) = (ours.get(*field)?, wanted.get(*field)?);
                (a != e).then(|| Difference {
                    field: field.to_string(),
                    actual: a.clone(),
                    expected: e.clone(),
                })
            })
            .collect()
    }
}

/// The fields drift is computed on (`ssh` is where the node is, not how it is).
const COMPARED: [&str; 14] = [
    "power",
    "fqdn",
    "image",
    "flavor",
    "cores",
    "memory",
    "storage",
    "interfaces",
    "disks",
    "credentials",
    "dns",
    "tags",
    "security_groups",
    "ssh_port",
];

fn to_map(actual: &Actual) -> serde_json::Map<String, serde_json::Value> {
    match serde_json::to_value(actual) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drift_compares_only_what_both_sides_know() {
        let expected = Actual {
            exists: true,
            power: Some(Power::On),
            cores: Some(2),
            memory: Some(DataSize(4 << 30)),
            ..Actual::default()
        };
        let actual = Actual {
            exists: true,
            power: Some(Power::Off),
            cores: Some(2),
            tags: Some(vec!["x".into()]),
            ..Actual::default()
        };
        let drift = actual.drift(&expected);
        assert_eq!(drift.len(), 1, "{drift:?}");
        assert_eq!(drift[0].field, "power");
        assert_eq!(drift[0].actual, "off");
        let gone = Actual::default().drift(&expected);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].field, "exists");
    }
}
