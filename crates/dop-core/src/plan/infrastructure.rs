//! Infrastructures (providers), their networks and affinity groups.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::check::{
    boolean, field, integer, mapping, named_mappings, non_empty_string, string, string_list,
    warn_unknown_keys,
};
use super::jump::{self, JumpHost};
use super::run_options::{self, Concurrency};
use crate::diagnostic::{join, Collector};
use crate::yaml::Yaml;

/// The kind of provider an infrastructure is, aliases resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// Machines that exist already; dopv leaves them alone.
    Baremetal,
    /// OpenStack (`rhos` is an alias).
    Openstack,
    /// oVirt / RHV (`rhev`, `rhevm` are aliases).
    Ovirt,
    /// VMware vSphere (`vmware` is an alias).
    Vsphere,
    /// Local test nodes on the dop host (new in dop).
    Local,
    /// Virtual machines on a libvirt host (KVM/qemu; new in dop).
    Libvirt,
}

impl ProviderKind {
    /// Reads a type name, case-insensitively, with the original aliases.
    pub fn from_type(name: &str) -> Option<ProviderKind> {
        Some(match name.to_ascii_lowercase().as_str() {
            "baremetal" => ProviderKind::Baremetal,
            "openstack" | "rhos" => ProviderKind::Openstack,
            "ovirt" | "rhev" | "rhevm" => ProviderKind::Ovirt,
            "vsphere" | "vmware" => ProviderKind::Vsphere,
            "local" => ProviderKind::Local,
            "libvirt" => ProviderKind::Libvirt,
            _ => return None,
        })
    }

    /// True for providers that need no endpoint, API credentials or networks.
    pub fn is_unmanaged(self) -> bool {
        matches!(self, ProviderKind::Baremetal | ProviderKind::Local)
    }

    /// True for providers whose API needs a plan credential. libvirt authenticates through
    /// its connection (the local socket, or SSH keys for `qemu+ssh://`).
    pub fn needs_api_credentials(self) -> bool {
        !self.is_unmanaged() && self != ProviderKind::Libvirt
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProviderKind::Baremetal => "baremetal",
            ProviderKind::Openstack => "openstack",
            ProviderKind::Ovirt => "ovirt",
            ProviderKind::Vsphere => "vsphere",
            ProviderKind::Local => "local",
            ProviderKind::Libvirt => "libvirt",
        })
    }
}

/// One entry of `infrastructures`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Infrastructure {
    /// The key it is defined under.
    pub name: String,
    /// The provider, aliases resolved.
    pub provider: ProviderKind,
    /// The `type` as written (`rhev`), for display.
    pub type_name: String,
    /// The provider API URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The name of the plan credential used for the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<String>,
    /// Networks, in plan order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<Network>,
    /// Affinity groups, in plan order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub affinity_groups: Vec<AffinityGroup>,
    /// Security groups every node gets (OpenStack).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub default_security_groups: Vec<String>,
    /// Run options for the nodes of this infrastructure.
    #[serde(default)]
    pub run_options: Concurrency,
    /// The SSH jump host chain to its nodes (first hop first); empty: connect directly.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jump_hosts: Vec<JumpHost>,
    /// The port its nodes' sshd listens on (the `local` provider's nodes listen there; dopi
    /// connects there unless a command sets `port`). Unset: 22.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_port: Option<u16>,
}

impl Infrastructure {
    /// The network called `name`.
    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| n.name == name)
    }
}

/// The default gateway of a network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gateway {
    /// `ip_defgw: false`: the network has no gateway.
    None,
    /// The gateway's address.
    Ip(IpAddr),
}

/// A network of an infrastructure. An empty definition (`{}`) is a DHCP or unmanaged network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Network {
    /// The key it is defined under (for OpenStack, the subnet name).
    pub name: String,
    /// First and last address nodes may use, inclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_pool: Option<(IpAddr, IpAddr)>,
    /// The netmask, dotted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_netmask: Option<IpAddr>,
    /// The default gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_defgw: Option<Gateway>,
}

/// An affinity group definition (used by oVirt).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AffinityGroup {
    /// The key it is defined under.
    pub name: String,
    /// Keep members together (`true`) or apart.
    pub positive: bool,
    /// Hard rule (`true`) or preference.
    pub enforce: bool,
    /// The cluster it applies to.
    pub cluster: String,
}

const KEYS: [&str; 8] = [
    "type",
    "jump_hosts",
    "ssh_port",
    "endpoint",
    "credentials",
    "networks",
    "affinity_groups",
    "default_security_groups",
];

/// Reads one infrastructure definition.
pub(crate) fn parse(
    c: &mut Collector<'_>,
    name: &str,
    v: &Yaml,
    path: &str,
    credential_names: &[&str],
) -> Option<Infrastructure> {
    mapping(c, v, path, "an infrastructure definition")?;
    let known: Vec<&str> = KEYS
        .iter()
        .chain(run_options::KEYS.iter())
        .copied()
        .collect();
    warn_unknown_keys(c, v, path, &known);
    let errors = c.error_count();

    let type_path = join(path, "type");
    let (provider, type_name) = match field(v, "type") {
        None => {
            c.error(
                v,
                &type_path,
                "the provider type is required: one of baremetal, openstack, ovirt, vsphere, local, libvirt",
            );
            (None, String::new())
        }
        Some(t) => match string(c, t, &type_path, "the provider type") {
            None => (None, String::new()),
            Some(s) => match ProviderKind::from_type(&s) {
                Some(p) => (Some(p), s),
                None => {
                    c.error(
                        t,
                        &type_path,
                        format!(
                            "invalid provider type '{s}': use one of baremetal, openstack, ovirt, \
                             vsphere, local, libvirt (or the aliases rhev, rhevm, rhos, vmware)"
                        ),
                    );
                    (None, s)
                }
            },
        },
    };
    let unmanaged = provider.is_none_or(ProviderKind::is_unmanaged);

    let endpoint = match field(v, "endpoint") {
        Some(e) => {
            let p = join(path, "endpoint");
            string(c, e, &p, "the endpoint").and_then(|s| {
                if s.is_empty() || s.chars().any(|ch| ch.is_whitespace() || ch.is_control()) {
                    c.error(e, &p, format!("the endpoint URL '{s}' is invalid"));
                    None
                } else {
                    Some(s)
                }
            })
        }
        None if !unmanaged => {
            c.error(
                v,
                &join(path, "endpoint"),
                "the endpoint is required for this provider",
            );
            None
        }
        None => None,
    };

    let credentials = match field(v, "credentials") {
        Some(cr) => {
            let p = join(path, "credentials");
            let name = match cr.as_str_or_sym() {
                Some(s) => Some(s.to_string()),
                None => {
                    c.error(
                        cr,
                        &p,
                        format!(
                            "the credentials pointer must be a credential name, not {}",
                            cr.describe()
                        ),
                    );
                    None
                }
            };
            name.and_then(|s| {
                if credential_names.contains(&s.as_str()) {
                    Some(s)
                } else {
                    c.error(
                        cr,
                        &p,
                        format!("no credential '{s}' is defined in 'credentials'"),
                    );
                    None
                }
            })
        }
        None if provider.is_some_and(ProviderKind::needs_api_credentials) => {
            c.error(
                v,
                &join(path, "credentials"),
                "the credentials for the provider API are required (the name of an entry in \
                 'credentials')",
            );
            None
        }
        None => None,
    };

    let networks = match field(v, "networks") {
        Some(n) => parse_networks(c, n, &join(path, "networks")),
        None if !unmanaged => {
            c.error(
                v,
                &join(path, "networks"),
                "networks are required for this provider",
            );
            Vec::new()
        }
        None => Vec::new(),
    };

    let affinity_groups = field(v, "affinity_groups")
        .map(|a| parse_affinity_groups(c, a, &join(path, "affinity_groups")))
        .unwrap_or_default();

    let default_security_groups = field(v, "default_security_groups")
        .and_then(|s| {
            string_list(
                c,
                s,
                &join(path, "default_security_groups"),
                "default_security_groups",
                false,
            )
        })
        .unwrap_or_default();

    let run_options = Concurrency::parse(c, v, path);
    let jump_hosts = field(v, "jump_hosts")
        .and_then(|j| jump::parse(c, j, &join(path, "jump_hosts"), credential_names))
        .unwrap_or_default();
    let ssh_port = field(v, "ssh_port").and_then(|p| {
        let at = join(path, "ssh_port");
        let n = integer(c, p, &at, "the ssh_port")?;
        match u16::try_from(n) {
            Ok(port) if port > 0 => Some(port),
            _ => {
                c.error(
                    p,
                    &at,
                    format!("the ssh_port {n} is not a port (1 to 65535)"),
                );
                None
            }
        }
    });
    let provider = provider?;
    (c.error_count() == errors).then(|| Infrastructure {
        name: name.to_string(),
        provider,
        type_name,
        endpoint,
        credentials,
        networks,
        affinity_groups,
        default_security_groups,
        run_options,
        jump_hosts,
        ssh_port,
    })
}

fn parse_networks(c: &mut Collector<'_>, v: &Yaml, path: &str) -> Vec<Network> {
    named_mappings(c, v, path, "networks", "a network definition")
        .into_iter()
        .filter_map(|(name, def, p)| parse_network(c, name, def, &p))
        .collect()
}

fn ip(c: &mut Collector<'_>, v: &Yaml, path: &str, what: &str) -> Option<IpAddr> {
    match v.as_str().map(str::parse::<IpAddr>) {
        Some(Ok(ip)) => Some(ip),
        _ => {
            c.error(
                v,
                path,
                format!("{what} {} is not a valid IP address", v.describe()),
            );
            None
        }
    }
}

fn parse_network(c: &mut Collector<'_>, name: &str, v: &Yaml, path: &str) -> Option<Network> {
    warn_unknown_keys(c, v, path, &["ip_pool", "ip_netmask", "ip_defgw"]);
    if v.as_map().is_some_and(<[_]>::is_empty) {
        return Some(Network {
            name: name.to_string(),
            ip_pool: None,
            ip_netmask: None,
            ip_defgw: None,
        });
    }
    let errors = c.error_count();
    // A network with any key must be complete: netmask, gateway (or `false`) and pool.
    let netmask = match v.get("ip_netmask") {
        Some(m) => ip(c, m, &join(path, "ip_netmask"), "the netmask"),
        None => {
            c.error(
                v,
                &join(path, "ip_netmask"),
                "a managed network needs 'ip_netmask'",
            );
            None
        }
    };
    let gateway = match v.get("ip_defgw") {
        Some(Yaml {
            value: crate::yaml::Value::Bool(false),
            ..
        }) => Some(Gateway::None),
        Some(g) => ip(c, g, &join(path, "ip_defgw"), "the default gateway").map(Gateway::Ip),
        None => {
            c.error(
                v,
                &join(path, "ip_defgw"),
                "a managed network needs 'ip_defgw' (an address, or false for no gateway)",
            );
            None
        }
    };
    let pool_path = join(path, "ip_pool");
    let pool = match v.get("ip_pool") {
        Some(pool) if pool.get("from").is_some() && pool.get("to").is_some() => {
            let from = pool
                .get("from")
                .and_then(|f| ip(c, f, &join(&pool_path, "from"), "'from'"));
            let to = pool
                .get("to")
                .and_then(|t| ip(c, t, &join(&pool_path, "to"), "'to'"));
            match (from, to) {
                (Some(from), Some(to)) if from.is_ipv4() != to.is_ipv4() || from >= to => {
                    c.error(
                        pool,
                        &pool_path,
                        format!("'from' ({from}) must be lower than 'to' ({to})"),
                    );
                    None
                }
                (Some(from), Some(to)) => Some((from, to)),
                _ => None,
            }
        }
        _ => {
            c.error(
                v.get("ip_pool").unwrap_or(v),
                &pool_path,
                "an IP pool must be a mapping with 'from' and 'to' keys",
            );
            None
        }
    };
    if let (Some((from, to)), Some(Gateway::Ip(gw)), Some(mask)) = (pool, gateway, netmask) {
        if (from..=to).contains(&gw) {
            c.error(
                v,
                &join(path, "ip_defgw"),
                format!("the default gateway {gw} must be outside the IP pool {from} - {to}"),
            );
        } else if masked(gw, mask) != masked(from, mask) || masked(gw, mask) != masked(to, mask) {
            c.error(
                v,
                &pool_path,
                format!("the IP pool {from} - {to} and the default gateway {gw} must be in the same network (netmask {mask})"),
            );
        }
    }
    (c.error_count() == errors).then(|| Network {
        name: name.to_string(),
        ip_pool: pool,
        ip_netmask: netmask,
        ip_defgw: gateway,
    })
}

/// `ip & mask`, or `None` for mixed families.
fn masked(ip: IpAddr, mask: IpAddr) -> Option<u128> {
    match (ip, mask) {
        (IpAddr::V4(i), IpAddr::V4(m)) => Some(u128::from(u32::from(i) & u32::from(m))),
        (IpAddr::V6(i), IpAddr::V6(m)) => Some(u128::from(i) & u128::from(m)),
        _ => None,
    }
}

fn parse_affinity_groups(c: &mut Collector<'_>, v: &Yaml, path: &str) -> Vec<AffinityGroup> {
    let mut out = Vec::new();
    for (name, def, p) in named_mappings(c, v, path, "affinity_groups", "an affinity group") {
        warn_unknown_keys(c, def, &p, &["positive", "enforce", "cluster"]);
        let mut flag = |key: &str| match def.get(key) {
            Some(b) => boolean(c, b, &join(&p, key), &format!("the '{key}' flag")),
            None => {
                c.error(
                    def,
                    &join(&p, key),
                    format!("the '{key}' flag (true or false) is required"),
                );
                None
            }
        };
        let positive = flag("positive");
        let enforce = flag("enforce");
        let cluster = match def.get("cluster") {
            Some(cl) => non_empty_string(c, cl, &join(&p, "cluster"), "the cluster"),
            None => {
                c.error(def, &join(&p, "cluster"), "the cluster is required");
                None
            }
        };
        if let (Some(positive), Some(enforce), Some(cluster)) = (positive, enforce, cluster) {
            out.push(AffinityGroup {
                name: name.to_string(),
                positive,
                enforce,
                cluster,
            });
        }
    }
    out
}
