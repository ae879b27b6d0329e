//! Nodes: their provider settings, interfaces, disks and DNS, and node generation (`{i}`).

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::check::{
    boolean, field, integer, mapping, named_mappings, non_empty_string, string, string_list,
    warn_unknown_keys,
};
use super::credential::{check_login_name, Credential, CredentialKind};
use super::infrastructure::{Gateway, Infrastructure, ProviderKind};
use super::jump::{self, JumpHost};
use crate::datasize::DataSize;
use crate::diagnostic::{index, join, Collector};
use crate::yaml::{Value, Yaml};

/// A node of the plan (after generation: `web{i}` with a range is several nodes).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// The node's name (the key, with `{i}` replaced).
    pub name: String,
    /// The fully qualified name; the node name unless set.
    pub fqdn: String,
    /// The infrastructure it lives on.
    pub infrastructure: String,
    /// The image to create it from (not used for baremetal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// oVirt: clone the template fully (default) or thinly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_clone: Option<bool>,
    /// vSphere: thin clone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thin_clone: Option<bool>,
    /// Network interfaces, in the order they are configured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    /// The flavor: any name on OpenStack, else one of tiny, small, medium, large, xlarge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flavor: Option<String>,
    /// CPU cores, when set explicitly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cores: Option<u32>,
    /// Memory, when set explicitly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<DataSize>,
    /// Root disk size, when set explicitly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<DataSize>,
    /// Time zone (required on vSphere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Windows product key (vSphere sysprep).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_id: Option<String>,
    /// Windows organisation name (vSphere sysprep).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organization_name: Option<String>,
    /// Names of plan credentials dopv puts on the node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<String>,
    /// DNS settings.
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
    /// Data disks, in plan order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<DataDisk>,
    /// vSphere tags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Vec<String>>,
    /// Power the node off hard when it must be stopped.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force_stop: bool,
    /// ProviderKind-specific settings.
    #[serde(default, skip_serializing_if = "InfrastructureProperties::is_empty")]
    pub infrastructure_properties: InfrastructureProperties,
    /// The SSH jump host chain to the node: its own `jump_hosts`, else its infrastructure's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jump_hosts: Vec<JumpHost>,
}

/// Cores, memory and storage of a flavor, and the built-in flavors of non-OpenStack providers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sizing {
    /// CPU cores.
    pub cores: u32,
    /// Memory.
    pub memory: DataSize,
    /// Root disk.
    pub storage: DataSize,
}

const GIB: u64 = 1024 * 1024 * 1024;

/// The built-in flavors (`medium` is the default).
pub const FLAVORS: [(&str, Sizing); 5] = [
    (
        "tiny",
        Sizing {
            cores: 1,
            memory: DataSize(GIB / 2),
            storage: DataSize(GIB),
        },
    ),
    (
        "small",
        Sizing {
            cores: 1,
            memory: DataSize(2 * GIB),
            storage: DataSize(10 * GIB),
        },
    ),
    (
        "medium",
        Sizing {
            cores: 2,
            memory: DataSize(4 * GIB),
            storage: DataSize(10 * GIB),
        },
    ),
    (
        "large",
        Sizing {
            cores: 4,
            memory: DataSize(8 * GIB),
            storage: DataSize(10 * GIB),
        },
    ),
    (
        "xlarge",
        Sizing {
            cores: 8,
            memory: DataSize(16 * GIB),
            storage: DataSize(10 * GIB),
        },
    ),
];

impl Node {
    /// The first label of the fqdn.
    pub fn hostname(&self) -> &str {
        self.fqdn.split('.').next().unwrap_or(&self.fqdn)
    }

    /// Everything after the first dot of the fqdn (the whole fqdn when it has no dot, as in
    /// the original).
    pub fn domainname(&self) -> &str {
        self.fqdn.split_once('.').map_or(&self.fqdn, |(_, d)| d)
    }

    /// Cores, memory and storage for providers that size nodes themselves: explicit values,
    /// else the flavor's, else `medium`. `None` on OpenStack, where the flavor decides.
    pub fn sizing(&self, provider: ProviderKind) -> Option<Sizing> {
        if provider == ProviderKind::Openstack {
            return None;
        }
        let flavor = self.flavor.as_deref().unwrap_or("medium");
        let base = FLAVORS
            .iter()
            .find(|(n, _)| *n == flavor)
            .map_or(FLAVORS[2].1, |(_, s)| *s);
        Some(Sizing {
            cores: self.cores.unwrap_or(base.cores),
            memory: self.memory.unwrap_or(base.memory),
            storage: self.storage.unwrap_or(base.storage),
        })
    }
}

/// How an interface gets its address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpSetting {
    /// `dhcp`.
    Dhcp,
    /// `none`: no address.
    None,
    /// A static address from the network's pool.
    Static(IpAddr),
}

/// A network interface of a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// The key it is defined under (`eth0`).
    pub name: String,
    /// The network of the node's infrastructure it connects to.
    pub network: String,
    /// Its address.
    pub ip: IpSetting,
    /// Whether it gets the network's default gateway.
    pub set_gateway: bool,
    /// vSphere distributed switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub virtual_switch: Option<String>,
    /// OpenStack network to take a floating IP from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floating_network: Option<String>,
}

/// A data disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataDisk {
    /// The key it is defined under.
    pub name: String,
    /// The storage pool: its own, else `infrastructure_properties.default_pool`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Its size.
    pub size: DataSize,
    /// Thin provisioning (default true).
    pub thin: bool,
}

/// DNS settings of a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub name_servers: Vec<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search_domains: Vec<String>,
}

impl Dns {
    fn is_empty(&self) -> bool {
        self.name_servers.is_empty() && self.search_domains.is_empty()
    }
}

/// ProviderKind-specific node settings. Values that do not apply to the node's provider are
/// dropped, as in the original.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct InfrastructureProperties {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datacenter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_config_drive: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_ha: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub affinity_groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_pool: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dest_folder: Option<String>,
    /// libvirt: the domain type, `kvm` (default) or `qemu` (software emulation, for hosts
    /// without usable KVM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_type: Option<String>,
    /// libvirt, for tests: the node's first interface is qemu user networking instead of a
    /// libvirt network, and this host address and port forward to the guest's SSH port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_network_ssh: Option<std::net::SocketAddr>,
    /// Effective security groups: `security_groups`, or the infrastructure's defaults plus
    /// `additional_security_groups`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_groups: Vec<String>,
}

impl InfrastructureProperties {
    fn is_empty(&self) -> bool {
        *self == InfrastructureProperties::default()
    }
}

/// What node parsing needs to know about the rest of the plan.
pub(crate) struct NodeContext<'a> {
    /// Every infrastructure name defined (valid or not).
    pub infrastructure_names: Vec<&'a str>,
    /// The infrastructures that are valid.
    pub infrastructures: &'a [Infrastructure],
    /// Every credential name defined (valid or not).
    pub credential_names: Vec<&'a str>,
    /// The credentials that are valid.
    pub credentials: &'a [Credential],
}

const KEYS: [&str; 24] = [
    "infrastructure",
    "jump_hosts",
    "fqdn",
    "infrastructure_properties",
    "image",
    "full_clone",
    "thin_clone",
    "interfaces",
    "flavor",
    "cores",
    "memory",
    "storage",
    "timezone",
    "product_id",
    "organization_name",
    "credentials",
    "dns",
    "disks",
    "tags",
    "force_stop",
    "range",
    "digits",
    // Accepted by old versions of the format and ignored since; no warning for them.
    "datacenter",
    "cluster",
];

/// Reads the body of a node entry. `name` is the key (a template for generated nodes); the
/// fqdn is not checked here because generated nodes each have their own.
pub(crate) fn parse(
    c: &mut Collector<'_>,
    name: &str,
    v: &Yaml,
    path: &str,
    ctx: &NodeContext<'_>,
) -> Option<Node> {
    let errors = c.error_count();
    warn_unknown_keys(c, v, path, &KEYS);

    let infra_path = join(path, "infrastructure");
    let infrastructure = match field(v, "infrastructure") {
        None => {
            c.error(v, &infra_path, "the node needs an 'infrastructure' (the name of one defined under 'infrastructures')");
            None
        }
        Some(i) => string(c, i, &infra_path, "the 'infrastructure' pointer").and_then(|s| {
            if ctx.infrastructure_names.contains(&s.as_str()) {
                Some(s)
            } else {
                let defined = if ctx.infrastructure_names.is_empty() {
                    "the plan defines no infrastructures".to_string()
                } else {
                    format!("defined: {}", ctx.infrastructure_names.join(", "))
                };
                c.error(
                    i,
                    &infra_path,
                    format!("no such infrastructure '{s}'; {defined}"),
                );
                None
            }
        }),
    };
    // Checks that depend on the provider are skipped when the infrastructure itself is broken:
    // its own error says what to fix.
    let infra = infrastructure
        .as_deref()
        .and_then(|n| ctx.infrastructures.iter().find(|i| i.name == n));
    let provider = infra.map(|i| i.provider);
    let is = |p: ProviderKind| provider == Some(p);

    let fqdn = field(v, "fqdn").and_then(|f| string(c, f, &join(path, "fqdn"), "the fqdn"));
    if let Some(f) = &fqdn {
        if let Err(e) = check_fqdn(f) {
            c.error(v.get("fqdn").unwrap_or(v), &join(path, "fqdn"), e);
        }
    }

    let image = match field(v, "image") {
        Some(i) => string(c, i, &join(path, "image"), "the 'image'"),
        None if provider.is_some_and(|p| !p.is_unmanaged()) => {
            c.error(
                v,
                &join(path, "image"),
                format!(
                    "an 'image' is required on {}",
                    provider.unwrap_or(ProviderKind::Baremetal)
                ),
            );
            None
        }
        None => None,
    };

    let provider_only = |c: &mut Collector<'_>, key: &str, allowed: ProviderKind| {
        let x = field(v, key)?;
        let p = join(path, key);
        let b = boolean(c, x, &p, &format!("'{key}'"))?;
        if provider.is_some() && !is(allowed) {
            c.error(
                x,
                &p,
                format!("'{key}' can only be used on {allowed} infrastructures"),
            );
            return None;
        }
        Some(b)
    };
    let full_clone = provider_only(c, "full_clone", ProviderKind::Ovirt);
    let thin_clone = provider_only(c, "thin_clone", ProviderKind::Vsphere);

    let interfaces = field(v, "interfaces")
        .map(|i| parse_interfaces(c, i, &join(path, "interfaces"), infra))
        .unwrap_or_default();

    let (flavor, cores, memory, storage) = parse_sizing(c, v, path, provider);

    let timezone = match field(v, "timezone") {
        Some(t) => non_empty_string(c, t, &join(path, "timezone"), "'timezone'"),
        None if is(ProviderKind::Vsphere) => {
            c.error(
                v,
                &join(path, "timezone"),
                "'timezone' is required on vsphere",
            );
            None
        }
        None => None,
    };
    let product_id = field(v, "product_id")
        .and_then(|p| string(c, p, &join(path, "product_id"), "'product_id'"));
    let organization_name = field(v, "organization_name").and_then(|o| {
        non_empty_string(
            c,
            o,
            &join(path, "organization_name"),
            "'organization_name'",
        )
    });

    let credentials = field(v, "credentials")
        .map(|cr| parse_node_credentials(c, cr, &join(path, "credentials"), ctx, provider))
        .unwrap_or_default();

    let dns = match v.get("dns") {
        Some(d) => parse_dns(c, d, &join(path, "dns")),
        None => Dns::default(),
    };
    let disks = field(v, "disks")
        .map(|d| parse_disks(c, d, &join(path, "disks"), provider, v))
        .unwrap_or_default();

    let tags = field(v, "tags").and_then(|t| {
        let p = join(path, "tags");
        let list: Option<Vec<String>> = match &t.value {
            Value::Str(s) | Value::Sym(s) => Some(vec![s.clone()]),
            Value::Seq(items) => items
                .iter()
                .map(|i| i.as_str_or_sym().map(str::to_string))
                .collect(),
            _ => None,
        };
        if list.is_none() {
            c.error(t, &p, "'tags' must be a string or a list of strings");
        } else if provider.is_some() && !is(ProviderKind::Vsphere) {
            c.error(t, &p, "'tags' can only be used on vsphere infrastructures");
            return None;
        }
        list
    });
    let force_stop = field(v, "force_stop")
        .and_then(|f| boolean(c, f, &join(path, "force_stop"), "'force_stop'"))
        .unwrap_or(false);

    let infrastructure_properties = parse_properties(c, v, path, infra);
    let jump_hosts = match field(v, "jump_hosts") {
        Some(j) => {
            jump::parse(c, j, &join(path, "jump_hosts"), &ctx.credential_names).unwrap_or_default()
        }
        None => infra.map(|i| i.jump_hosts.clone()).unwrap_or_default(),
    };

    (c.error_count() == errors).then(|| Node {
        name: name.to_string(),
        fqdn: fqdn.unwrap_or_else(|| name.to_string()),
        infrastructure: infrastructure.unwrap_or_default(),
        image,
        full_clone,
        thin_clone,
        interfaces,
        flavor,
        cores,
        memory,
        storage,
        timezone,
        product_id,
        organization_name,
        credentials,
        dns,
        disks,
        tags,
        force_stop,
        infrastructure_properties,
        jump_hosts,
    })
}

/// Checks a host name: at most 255 characters, labels of 1-63 letters, digits and inner `-`.
pub fn check_fqdn(fqdn: &str) -> Result<(), String> {
    if fqdn.len() > 255 {
        return Err(format!(
            "the fqdn '{fqdn:.40}...' is longer than 255 characters"
        ));
    }
    let trimmed = fqdn.strip_suffix('.').unwrap_or(fqdn);
    let valid = trimmed.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "'{fqdn}' is not a valid host name (labels of letters, digits and inner '-'); give \
             the node an explicit 'fqdn' if its name is not a host name"
        ))
    }
}

fn parse_sizing(
    c: &mut Collector<'_>,
    v: &Yaml,
    path: &str,
    provider: Option<ProviderKind>,
) -> (
    Option<String>,
    Option<u32>,
    Option<DataSize>,
    Option<DataSize>,
) {
    let present: Vec<&str> = ["cores", "memory", "storage"]
        .into_iter()
        .filter(|k| v.get(k).is_some())
        .collect();
    if let (Some(f), false) = (v.get("flavor"), present.is_empty()) {
        c.error(
            f,
            &join(path, "flavor"),
            "'flavor' cannot be combined with cores, memory or storage",
        );
        return (None, None, None, None);
    }
    let openstack = provider == Some(ProviderKind::Openstack);
    let flavor = field(v, "flavor").and_then(|f| {
        let p = join(path, "flavor");
        let name = string(c, f, &p, "the flavor")?;
        if !openstack && provider.is_some() && !FLAVORS.iter().any(|(n, _)| *n == name) {
            c.error(
                f,
                &p,
                format!("invalid flavor '{name}': use tiny, small, medium, large or xlarge"),
            );
            return None;
        }
        Some(name)
    });
    if openstack {
        for key in &present {
            if let Some(x) = v.get(key) {
                c.error(
                    x,
                    &join(path, key),
                    format!("'{key}' cannot be set on openstack; choose a 'flavor'"),
                );
            }
        }
        return (flavor, None, None, None);
    }
    let cores = field(v, "cores").and_then(|x| {
        let p = join(path, "cores");
        match integer(c, x, &p, "cores")? {
            n if n > 0 && n <= i64::from(u32::MAX) => u32::try_from(n).ok(),
            n if n > 0 => {
                c.error(
                    x,
                    &p,
                    format!("cores must be at most {}, not {n}", u32::MAX),
                );
                None
            }
            n => {
                c.error(x, &p, format!("cores must be a positive number, not {n}"));
                None
            }
        }
    });
    let size = |c: &mut Collector<'_>, key: &str| {
        let x = field(v, key)?;
        let p = join(path, key);
        let parsed = match &x.value {
            Value::Int(n) if *n > 0 => Ok(DataSize(n.unsigned_abs())),
            Value::Int(n) => Err(crate::datasize::DataSizeError::NotPositive(n.to_string())),
            Value::Str(s) => DataSize::parse(s),
            _ => Err(crate::datasize::DataSizeError::Type(x.describe())),
        };
        parsed.map_err(|e| c.error(x, &p, e.to_string())).ok()
    };
    let memory = size(c, "memory");
    let storage = size(c, "storage");
    (flavor, cores, memory, storage)
}

fn parse_interfaces(
    c: &mut Collector<'_>,
    v: &Yaml,
    path: &str,
    infra: Option<&Infrastructure>,
) -> Vec<Interface> {
    named_mappings(c, v, path, "'interfaces'", "an interface")
        .into_iter()
        .filter_map(|(name, def, p)| parse_interface(c, name, def, &p, infra))
        .collect()
}

fn parse_interface(
    c: &mut Collector<'_>,
    name: &str,
    v: &Yaml,
    path: &str,
    infra: Option<&Infrastructure>,
) -> Option<Interface> {
    warn_unknown_keys(
        c,
        v,
        path,
        &[
            "network",
            "ip",
            "set_gateway",
            "virtual_switch",
            "floating_network",
        ],
    );
    let errors = c.error_count();
    let net_path = join(path, "network");
    let network = match field(v, "network") {
        None => {
            c.error(v, &net_path, "the interface needs a 'network'");
            None
        }
        Some(n) => non_empty_string(c, n, &net_path, "'network'").and_then(|s| match infra {
            Some(i) if i.network(&s).is_none() => {
                let defined: Vec<&str> = i.networks.iter().map(|n| n.name.as_str()).collect();
                let hint = if defined.is_empty() {
                    format!("infrastructure '{}' defines no networks", i.name)
                } else {
                    format!("defined in '{}': {}", i.name, defined.join(", "))
                };
                c.error(n, &net_path, format!("no such network '{s}'; {hint}"));
                None
            }
            _ => Some(s),
        }),
    };
    let net = network.as_deref().and_then(|n| infra?.network(n));

    let ip_path = join(path, "ip");
    let ip = match field(v, "ip") {
        None => {
            c.error(
                v,
                &ip_path,
                "the interface needs an 'ip': an address, dhcp or none",
            );
            None
        }
        Some(ipv) => {
            match ipv.as_str_or_sym() {
                Some("dhcp") => Some(IpSetting::Dhcp),
                Some("none") => Some(IpSetting::None),
                Some(s) => match s.parse::<IpAddr>() {
                    Err(_) => {
                        c.error(
                            ipv,
                            &ip_path,
                            format!("'{s}' is not a valid IP address (or dhcp, none)"),
                        );
                        None
                    }
                    Ok(addr) => match net.map(|n| n.ip_pool) {
                        Some(Some((from, to))) if !(from..=to).contains(&addr) => {
                            c.error(ipv, &ip_path, format!("IP address '{addr}' is outside of the pool {from} - {to} of network '{}'", net.map_or("", |n| &n.name)));
                            None
                        }
                        Some(None) => {
                            c.error(ipv, &ip_path, format!("IP address '{addr}' is static, but network '{}' has no 'ip_pool'", net.map_or("", |n| &n.name)));
                            None
                        }
                        _ => Some(IpSetting::Static(addr)),
                    },
                },
                None => {
                    c.error(
                        ipv,
                        &ip_path,
                        format!("'ip' must be a string or symbol, not {}", ipv.describe()),
                    );
                    None
                }
            }
        }
    };

    let has_gateway = net.is_none_or(|n| n.ip_defgw != Some(Gateway::None));
    let set_gateway = match field(v, "set_gateway") {
        Some(g) => {
            let p = join(path, "set_gateway");
            let b = boolean(c, g, &p, "'set_gateway'");
            if b == Some(true) && !has_gateway {
                c.error(
                    g,
                    &p,
                    format!(
                        "no gateway is defined for network '{}'",
                        network.as_deref().unwrap_or("")
                    ),
                );
            }
            b.unwrap_or(false)
        }
        None => has_gateway,
    };
    let virtual_switch = field(v, "virtual_switch")
        .and_then(|s| non_empty_string(c, s, &join(path, "virtual_switch"), "'virtual_switch'"));
    let floating_network = field(v, "floating_network").and_then(|s| {
        non_empty_string(c, s, &join(path, "floating_network"), "'floating_network'")
    });

    (c.error_count() == errors).then(|| Interface {
        name: name.to_string(),
        network: network.unwrap_or_default(),
        ip: ip.unwrap_or(IpSetting::None),
        set_gateway,
        virtual_switch,
        floating_network,
    })
}

fn parse_node_credentials(
    c: &mut Collector<'_>,
    v: &Yaml,
    path: &str,
    ctx: &NodeContext<'_>,
    provider: Option<ProviderKind>,
) -> Vec<String> {
    let items: Vec<&Yaml> = match &v.value {
        Value::Str(_) | Value::Sym(_) => vec![v],
        Value::Seq(items) => items.iter().collect(),
        _ => {
            c.error(
                v,
                path,
                "'credentials' must be a credential name or a list of names",
            );
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let p = if matches!(v.value, Value::Seq(_)) {
            index(path, i)
        } else {
            path.to_string()
        };
        let Some(name) = item.as_str_or_sym() else {
            c.error(
                item,
                &p,
                format!("credential names must be strings, not {}", item.describe()),
            );
            continue;
        };
        if !ctx.credential_names.contains(&name) {
            c.error(item, &p, format!("the credential '{name}' does not exist"));
            continue;
        }
        let kind = ctx
            .credentials
            .iter()
            .find(|cr| cr.name == name)
            .map(|cr| &cr.kind);
        if let Some(CredentialKind::SshKey {
            public_key: None, ..
        }) = kind
        {
            c.error(
                item,
                &p,
                format!("the ssh_key credential '{name}' needs a 'public_key' to be put on a node"),
            );
            continue;
        }
        // The local provider makes each login a file name and a line of chpasswd's input.
        let login = match kind {
            Some(CredentialKind::SshKey { username, .. })
            | Some(CredentialKind::UsernamePassword { username, .. }) => Some(username),
            _ => None,
        };
        if let (Some(ProviderKind::Local), Some(Err(e))) =
            (provider, login.map(|u| check_login_name(u)))
        {
            c.error(
                item,
                &p,
                format!("the credential '{name}' cannot log in to a local node: {e}"),
            );
            continue;
        }
        out.push(name.to_string());
    }
    out
}

fn parse_dns(c: &mut Collector<'_>, v: &Yaml, path: &str) -> Dns {
    let mut dns = Dns::default();
    if mapping(c, v, path, "'dns'").is_none() {
        return dns;
    }
    warn_unknown_keys(c, v, path, &["name_servers", "search_domains"]);
    if let Some(ns) = v.get("name_servers") {
        let p = join(path, "name_servers");
        if let Some(list) = string_list(c, ns, &p, "name_servers", true) {
            for (i, server) in list.iter().enumerate() {
                // The original (Ruby IPAddr) also took `address/prefix`; keep that, but check it.
                let (address, prefix) = match server.split_once('/') {
                    Some((a, p)) => (a, Some(p)),
                    None => (server.as_str(), None),
                };
                let valid = address.parse::<IpAddr>().is_ok_and(|ip| {
                    let max = if ip.is_ipv4() { 32 } else { 128 };
                    prefix.is_none_or(|p| p.parse::<u8>().is_ok_and(|p| p <= max))
                });
                if !valid {
                    c.error(
                        ns,
                        &index(&p, i),
                        format!("the name server '{server}' is not a valid IP address"),
                    );
                }
            }
            dns.name_servers = list;
        }
    }
    if let Some(sd) = v.get("search_domains") {
        let p = join(path, "search_domains");
        if let Some(list) = string_list(c, sd, &p, "search_domains", true) {
            for (i, domain) in list.iter().enumerate() {
                if !is_search_domain(domain) {
                    c.error(
                        sd,
                        &index(&p, i),
                        format!(
                            "the search domain '{domain}' is not a valid domain name (lower case)"
                        ),
                    );
                }
            }
            dns.search_domains = list;
        }
    }
    dns
}

/// The original's lower-case domain rule: one label `[a-z0-9]+(-[a-z0-9]+)*`, or dotted labels
/// of at most 63 characters ending in an alphabetic top-level label of 2 to 63 letters.
fn is_search_domain(domain: &str) -> bool {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && !l.contains("--")
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    let labels: Vec<&str> = domain.split('.').collect();
    match labels.as_slice() {
        [one] => label_ok(one),
        [init @ .., tld] => {
            init.iter().all(|l| label_ok(l))
                && (2..=63).contains(&tld.len())
                && tld.bytes().all(|b| b.is_ascii_lowercase())
        }
        [] => false,
    }
}

fn parse_disks(
    c: &mut Collector<'_>,
    v: &Yaml,
    path: &str,
    provider: Option<ProviderKind>,
    node: &Yaml,
) -> Vec<DataDisk> {
    let Some(entries) = mapping(c, v, path, "'disks'") else {
        return Vec::new();
    };
    // A disk without a pool uses the node's default pool.
    let default_pool = node
        .get("infrastructure_properties")
        .and_then(|p| p.get("default_pool"))
        .and_then(Yaml::as_str)
        .map(str::to_string);
    let mut out = Vec::new();
    for (key, def) in entries {
        let name = key.key_text();
        let p = join(path, &name);
        if mapping(c, def, &p, "a disk").is_none() {
            continue;
        }
        warn_unknown_keys(c, def, &p, &["pool", "size", "thin"]);
        let errors = c.error_count();
        let pool = match field(def, "pool") {
            Some(pl) => non_empty_string(c, pl, &join(&p, "pool"), "'pool'"),
            None if default_pool.is_none()
                && matches!(provider, Some(ProviderKind::Ovirt | ProviderKind::Vsphere)) =>
            {
                c.error(def, &join(&p, "pool"), format!("a 'pool' is required on {} (or set infrastructure_properties.default_pool)", provider.unwrap_or(ProviderKind::Ovirt)));
                None
            }
            None => default_pool.clone(),
        };
        let size = match field(def, "size") {
            None => {
                c.error(def, &join(&p, "size"), "'size' is required");
                None
            }
            Some(s) => match &s.value {
                Value::Str(text) => DataSize::parse(text)
                    .map_err(|e| c.error(s, &join(&p, "size"), e.to_string()))
                    .ok(),
                _ => {
                    c.error(
                        s,
                        &join(&p, "size"),
                        format!(
                            "'size' must be a string such as '10G', not {}",
                            s.describe()
                        ),
                    );
                    None
                }
            },
        };
        let thin = match def.get("thin") {
            Some(t) => boolean(c, t, &join(&p, "thin"), "'thin'").unwrap_or(true),
            None => true,
        };
        if let (Some(size), true) = (size, c.error_count() == errors) {
            out.push(DataDisk {
                name,
                pool,
                size,
                thin,
            });
        }
    }
    out
}

const PROPERTY_KEYS: [&str; 14] = [
    "datacenter",
    "cluster",
    "tenant",
    "domain_id",
    "endpoint_type",
    "use_config_drive",
    "keep_ha",
    "affinity_groups",
    "default_pool",
    "dest_folder",
    "security_groups",
    "additional_security_groups",
    "domain_type",
    "user_network_ssh",
];

fn parse_properties(
    c: &mut Collector<'_>,
    node: &Yaml,
    node_path: &str,
    infra: Option<&Infrastructure>,
) -> InfrastructureProperties {
    let path = join(node_path, "infrastructure_properties");
    let provider = infra.map(|i| i.provider);
    let mut props = InfrastructureProperties::default();
    let Some(v) = node.get("infrastructure_properties") else {
        // The original skipped every check when the block is missing; the provider needs
        // these, so say so without refusing plans that only dopi uses.
        let needed: &[&str] = match provider {
            Some(ProviderKind::Ovirt | ProviderKind::Vsphere) => &["datacenter", "cluster"],
            Some(ProviderKind::Openstack) => &["tenant"],
            _ => &[],
        };
        if !needed.is_empty() {
            c.warn(
                node,
                &path,
                format!(
                    "no infrastructure_properties: {} needs {} to deploy this node",
                    provider.unwrap_or(ProviderKind::Ovirt),
                    needed.join(" and ")
                ),
            );
        }
        if let Some(i) = infra {
            props.security_groups = i.default_security_groups.clone();
        }
        return props;
    };
    if mapping(c, v, &path, "'infrastructure_properties'").is_none() {
        return props;
    }
    warn_unknown_keys(c, v, &path, &PROPERTY_KEYS);
    let text = |c: &mut Collector<'_>, key: &str| {
        field(v, key).and_then(|x| non_empty_string(c, x, &join(&path, key), &format!("'{key}'")))
    };
    let is = |p: ProviderKind| provider == Some(p);
    let required = |c: &mut Collector<'_>, key: &str, applies: bool| {
        if !applies {
            return None;
        }
        let found = text(c, key);
        if found.is_none() && field(v, key).is_none() {
            c.error(
                v,
                &join(&path, key),
                format!(
                    "'{key}' is required on {}",
                    provider.unwrap_or(ProviderKind::Ovirt)
                ),
            );
        }
        found
    };
    let vm = is(ProviderKind::Ovirt) || is(ProviderKind::Vsphere);
    props.datacenter = required(c, "datacenter", vm);
    props.cluster = required(c, "cluster", vm);
    props.tenant = required(c, "tenant", is(ProviderKind::Openstack));
    if is(ProviderKind::Openstack) {
        props.domain_id = Some(text(c, "domain_id").unwrap_or_else(|| "default".to_string()));
        props.endpoint_type = Some(match field(v, "endpoint_type") {
            Some(e) => match e.as_str() {
                Some(t @ ("publicURL" | "internalURL" | "adminURL")) => t.to_string(),
                _ => {
                    c.error(
                        e,
                        &join(&path, "endpoint_type"),
                        "the endpoint type must be 'publicURL', 'internalURL' or 'adminURL'",
                    );
                    "publicURL".to_string()
                }
            },
            None => "publicURL".to_string(),
        });
    }
    let flag = |c: &mut Collector<'_>, key: &str, allowed: ProviderKind, default: bool| {
        let value = match field(v, key) {
            Some(x) => {
                let b = boolean(c, x, &join(&path, key), &format!("'{key}'"));
                if provider.is_some() && !is(allowed) {
                    c.error(
                        x,
                        &join(&path, key),
                        format!("'{key}' is valid only on {allowed} infrastructures"),
                    );
                }
                b
            }
            None => None,
        };
        is(allowed).then(|| value.unwrap_or(default))
    };
    props.use_config_drive = flag(c, "use_config_drive", ProviderKind::Openstack, false);
    props.keep_ha = flag(c, "keep_ha", ProviderKind::Ovirt, true);
    if let Some(a) = field(v, "affinity_groups") {
        let p = join(&path, "affinity_groups");
        if let Some(groups) = string_list(c, a, &p, "affinity_groups", true) {
            if let Some(i) = infra {
                for g in &groups {
                    if !i.affinity_groups.iter().any(|d| &d.name == g) {
                        c.warn(
                            a,
                            &p,
                            format!(
                                "affinity group '{g}' is not defined in infrastructure '{}'",
                                i.name
                            ),
                        );
                    }
                }
            }
            props.affinity_groups = groups;
        }
    }
    props.default_pool = text(c, "default_pool");
    props.dest_folder = text(c, "dest_folder");
    parse_libvirt_properties(c, v, &path, provider, &mut props);
    let explicit = field(v, "security_groups");
    let additional = field(v, "additional_security_groups");
    if let (Some(_), Some(a)) = (explicit, additional) {
        c.error(
            a,
            &join(&path, "additional_security_groups"),
            "security_groups and additional_security_groups are mutually exclusive",
        );
    } else if let Some(s) = explicit {
        props.security_groups = string_list(
            c,
            s,
            &join(&path, "security_groups"),
            "security_groups",
            true,
        )
        .unwrap_or_default();
    } else {
        let mut groups = infra
            .map(|i| i.default_security_groups.clone())
            .unwrap_or_default();
        if let Some(a) = additional {
            for g in string_list(
                c,
                a,
                &join(&path, "additional_security_groups"),
                "additional_security_groups",
                true,
            )
            .unwrap_or_default()
            {
                if !groups.contains(&g) {
                    groups.push(g);
                }
            }
        }
        props.security_groups = groups;
    }
    props
}

/// The libvirt-only keys: refused on other providers, checked on libvirt.
fn parse_libvirt_properties(
    c: &mut Collector<'_>,
    v: &Yaml,
    path: &str,
    provider: Option<ProviderKind>,
    props: &mut InfrastructureProperties,
) {
    let libvirt = provider == Some(ProviderKind::Libvirt);
    for key in ["domain_type", "user_network_ssh"] {
        if let (Some(x), Some(p)) = (field(v, key), provider) {
            if !libvirt {
                c.error(
                    x,
                    &join(path, key),
                    format!("'{key}' is valid only on libvirt infrastructures, not {p}"),
                );
            }
        }
    }
    if !libvirt {
        return;
    }
    props.domain_type = Some(match field(v, "domain_type") {
        Some(x) => match x.as_str() {
            Some(t @ ("kvm" | "qemu")) => t.to_string(),
            _ => {
                c.error(
                    x,
                    &join(path, "domain_type"),
                    "the domain type must be 'kvm' (hardware virtualization) or 'qemu' \
                     (software emulation)",
                );
                "kvm".to_string()
            }
        },
        None => "kvm".to_string(),
    });
    if let Some(x) = field(v, "user_network_ssh") {
        let p = join(path, "user_network_ssh");
        props.user_network_ssh = match x.as_str().map(str::parse::<std::net::SocketAddr>) {
            Some(Ok(addr)) => Some(addr),
            _ => {
                c.error(
                    x,
                    &p,
                    format!(
                        "'user_network_ssh' must be a host address and port such as \
                         '127.0.80.11:2222', not {}",
                        x.describe()
                    ),
                );
                None
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fqdn_rules() {
        assert!(check_fqdn("web01.example.com.").is_ok());
        assert!(check_fqdn("f!").is_err());
        assert!(check_fqdn("mssql01_mgt01").is_err());
        assert!(check_fqdn(&"a".repeat(64)).is_err());
        assert!(check_fqdn("-a.b").is_err());
    }

    #[test]
    fn search_domains_are_lower_case() {
        for ok in ["f", "foo-bar", "a.bc", "int.example.com"] {
            assert!(is_search_domain(ok), "{ok}");
        }
        for bad in ["Example.com", "foo.b", "a..b", "x.c0m"] {
            assert!(!is_search_domain(bad), "{bad}");
        }
    }
}
