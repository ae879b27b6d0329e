//! The XML libvirt speaks: the domain, volume and disk definitions dopv writes, and the parts
//! of a domain's description it reads back (its mark, sizes, disks, interfaces).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::actual::{ActualInterface, SshEndpoint};

/// The XML namespace of dopv's mark in a domain's `<metadata>`. A domain without it was not
/// made by dopv and is never touched.
pub const NAMESPACE: &str = "https://dop.invalid/dopv/libvirt/1";
const QEMU_NAMESPACE: &str = "http://libvirt.org/schemas/domain/qemu/1.0";

/// XML text escaping for attribute values and element text.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// What dopv records in the domain about how it made it: the settings that live inside the
/// guest (given to it through the seed), which libvirt cannot report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seeded {
    /// The base volume the root disk was cloned from.
    pub image: String,
    /// The pool of the root disk and the seed.
    pub pool: String,
    /// The interfaces and the addresses the seed gave them.
    pub interfaces: Vec<ActualInterface>,
    /// Where dopi reaches the node when that is fixed (a static address or a forward).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh: Option<SshEndpoint>,
}

/// dopv's mark on a domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The plan that made it.
    pub plan: String,
    /// The node it is.
    pub node: String,
    /// How it was made.
    pub seeded: Option<Seeded>,
}

/// A network card.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Nic {
    /// On a libvirt network.
    Network {
        /// Its MAC address.
        mac: String,
        /// The libvirt network.
        network: String,
    },
    /// Test attachment: qemu user networking, `host` forwarded to the guest's SSH port.
    User {
        /// Its MAC address.
        mac: String,
        /// The guest's network (`10.0.2.0/24`).
        net: String,
        /// The gateway qemu plays, when the plan names one inside `net`.
        gateway: Option<IpAddr>,
        /// The host address and port forwarded.
        host: SocketAddr,
        /// The guest's address.
        guest: IpAddr,
    },
}

/// A disk of a domain: a pool volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    /// The pool.
    pub pool: String,
    /// The volume.
    pub volume: String,
    /// `qcow2` or `raw`.
    pub format: String,
    /// The guest device (`vda`).
    pub target: String,
    /// The serial number the guest sees (the plan's disk name).
    pub serial: Option<String>,
    /// Read-only (the seed).
    pub readonly: bool,
}

/// Everything a new domain is made from.
#[derive(Clone, Debug)]
pub struct DomainDef {
    /// The domain's name (the node's).
    pub name: String,
    /// `kvm` or `qemu`.
    pub domain_type: String,
    /// dopv's mark.
    pub owner: Owner,
    /// Memory in KiB.
    pub memory_kib: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Root disk first, then the seed.
    pub disks: Vec<Disk>,
    /// Network cards, in plan order.
    pub nics: Vec<Nic>,
    /// Where libvirt logs the serial console.
    pub console_log: String,
}

/// The domain definition.
pub fn domain(def: &DomainDef) -> String {
    let mut x = String::new();
    let user_nics: Vec<&Nic> = def
        .nics
        .iter()
        .filter(|n| matches!(n, Nic::User { .. }))
        .collect();
    let _ = write!(
        x,
        "<domain type='{}'{}>\n  <name>{}</name>\n",
        escape(&def.domain_type),
        if user_nics.is_empty() {
            String::new()
        } else {
            format!(" xmlns:qemu='{QEMU_NAMESPACE}'")
        },
        escape(&def.name)
    );
    let _ = writeln!(x, "  <metadata>{}</metadata>", owner(&def.owner));
    let _ = writeln!(x, "  <memory unit='KiB'>{}</memory>", def.memory_kib);
    let _ = writeln!(x, "  <vcpu>{}</vcpu>", def.vcpus);
    // `pc` everywhere: PCI hotplug of disks works without extra root ports.
    x.push_str("  <os><type machine='pc'>hvm</type><boot dev='hd'/></os>\n");
    if def.domain_type == "kvm" {
        x.push_str("  <features><acpi/><apic/></features>\n");
    } else {
        // A bounded translation cache: without it qemu grows by about 80 MiB per guest reboot.
        x.push_str(
            "  <features><acpi/><apic/><tcg><tb-cache unit='MiB'>64</tb-cache></tcg></features>\n",
        );
    }
    if def.domain_type == "kvm" {
        x.push_str("  <cpu mode='host-passthrough'/>\n");
    } else {
        x.push_str(
            "  <cpu mode='custom' match='exact'><model fallback='allow'>qemu64</model></cpu>\n",
        );
    }
    x.push_str(
        "  <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n",
    );
    x.push_str("  <devices>\n");
    for d in &def.disks {
        let _ = writeln!(x, "    {}", disk(d));
    }
    for n in &def.nics {
        if let Nic::Network { mac, network } = n {
            let _ = writeln!(
                x,
                "    <interface type='network'><mac address='{}'/><source network='{}'/><model type='virtio'/></interface>",
                escape(mac),
                escape(network)
            );
        }
    }
    let _ = writeln!(
        x,
        "    <serial type='pty'><log file='{}' append='off'/><target port='0'/></serial>",
        escape(&def.console_log)
    );
    x.push_str("    <console type='pty'><target type='serial' port='0'/></console>\n");
    x.push_str("    <memballoon model='none'/>\n  </devices>\n");
    if !user_nics.is_empty() {
        x.push_str("  <qemu:commandline>\n");
        for (i, n) in user_nics.iter().enumerate() {
            if let Nic::User {
                mac,
                net,
                gateway,
                host,
                guest,
            } = n
            {
                let gateway = gateway.map(|g| format!(",host={g}")).unwrap_or_default();
                let netdev = format!(
                    "user,id=dopv{i},restrict=on,net={net}{gateway},hostfwd=tcp:{}:{}-{guest}:22",
                    host.ip(),
                    host.port()
                );
                // Slots from 0x10 on, clear of what libvirt assigns to its own devices.
                let device = format!(
                    "virtio-net-pci,netdev=dopv{i},mac={mac},addr={:#x}",
                    0x10 + i
                );
                for arg in ["-netdev", &netdev, "-device", &device] {
                    let _ = writeln!(x, "    <qemu:arg value='{}'/>", escape(arg));
                }
            }
        }
        x.push_str("  </qemu:commandline>\n");
    }
    x.push_str("</domain>\n");
    x
}

/// The `<metadata>` element that marks a domain as dopv's.
pub fn owner(owner: &Owner) -> String {
    let seeded = owner
        .seeded
        .as_ref()
        .and_then(|s| serde_json::to_string(s).ok())
        .map(|json| format!("<dopv:seeded>{}</dopv:seeded>", escape(&json)))
        .unwrap_or_default();
    format!(
        "<dopv:node xmlns:dopv='{NAMESPACE}' plan='{}' node='{}'>{seeded}</dopv:node>",
        escape(&owner.plan),
        escape(&owner.node)
    )
}

/// A disk device, for a definition or a hot (un)plug.
pub fn disk(d: &Disk) -> String {
    format!(
        "<disk type='volume' device='disk'><driver name='qemu' type='{}'/><source pool='{}' volume='{}'/><target dev='{}' bus='virtio'/>{}{}</disk>",
        escape(&d.format),
        escape(&d.pool),
        escape(&d.volume),
        escape(&d.target),
        d.serial
            .as_deref()
            .map(|s| format!("<serial>{}</serial>", escape(s)))
            .unwrap_or_default(),
        if d.readonly { "<readonly/>" } else { "" }
    )
}

/// A volume definition: `capacity` bytes in `format`, optionally a copy-on-write overlay of
/// `backing` (its path and format).
pub fn volume(name: &str, capacity: u64, format: &str, backing: Option<(&str, &str)>) -> String {
    let backing = backing
        .map(|(path, format)| {
            format!(
                "<backingStore><path>{}</path><format type='{}'/></backingStore>",
                escape(path),
                escape(format)
            )
        })
        .unwrap_or_default();
    format!(
        "<volume><name>{}</name><capacity unit='bytes'>{capacity}</capacity><target><format type='{}'/></target>{backing}</volume>",
        escape(name),
        escape(format)
    )
}

/// What dopv reads back from a domain's description.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DomainView {
    /// dopv's mark, when it has one.
    pub owner: Option<Owner>,
    /// Virtual CPUs.
    pub vcpus: Option<u32>,
    /// Memory in KiB.
    pub memory_kib: Option<u64>,
    /// Its disks that are pool volumes.
    pub disks: Vec<Disk>,
    /// Guest device names in use.
    pub targets: Vec<String>,
    /// MAC addresses of its libvirt-network cards.
    pub macs: Vec<String>,
}

fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

/// Reads a domain's description.
pub fn parse_domain(text: &str) -> Result<DomainView, String> {
    let doc = roxmltree::Document::parse(text)
        .map_err(|e| format!("libvirt's description of the domain is not XML: {e}"))?;
    let root = doc.root_element();
    let mut view = DomainView {
        vcpus: child(root, "vcpu").and_then(|v| v.text()?.trim().parse().ok()),
        memory_kib: child(root, "memory").and_then(|m| {
            let n: u64 = m.text()?.trim().parse().ok()?;
            Some(match m.attribute("unit").unwrap_or("KiB") {
                "b" | "bytes" => n / 1024,
                "M" | "MiB" => n * 1024,
                "G" | "GiB" => n << 20,
                _ => n,
            })
        }),
        ..DomainView::default()
    };
    if let Some(mark) = child(root, "metadata").and_then(|m| {
        m.children().find(|c| {
            c.is_element()
                && c.tag_name().namespace() == Some(NAMESPACE)
                && c.tag_name().name() == "node"
        })
    }) {
        let seeded = mark
            .children()
            .find(|c| c.is_element() && c.tag_name().name() == "seeded")
            .and_then(|s| serde_json::from_str(s.text()?).ok());
        view.owner = Some(Owner {
            plan: mark.attribute("plan").unwrap_or_default().to_string(),
            node: mark.attribute("node").unwrap_or_default().to_string(),
            seeded,
        });
    }
    if let Some(devices) = child(root, "devices") {
        for d in devices.children().filter(|c| c.is_element()) {
            match d.tag_name().name() {
                "disk" => {
                    let target = child(d, "target").and_then(|t| t.attribute("dev"));
                    if let Some(t) = target {
                        view.targets.push(t.to_string());
                    }
                    let source = child(d, "source");
                    let (Some(pool), Some(volume), Some(target)) = (
                        source.and_then(|s| s.attribute("pool")),
                        source.and_then(|s| s.attribute("volume")),
                        target,
                    ) else {
                        continue;
                    };
                    view.disks.push(Disk {
                        pool: pool.to_string(),
                        volume: volume.to_string(),
                        format: child(d, "driver")
                            .and_then(|x| x.attribute("type"))
                            .unwrap_or("raw")
                            .to_string(),
                        target: target.to_string(),
                        serial: child(d, "serial")
                            .and_then(|s| s.text())
                            .map(str::to_string),
                        readonly: child(d, "readonly").is_some(),
                    });
                }
                "interface" => {
                    if let Some(mac) = child(d, "mac").and_then(|m| m.attribute("address")) {
                        view.macs.push(mac.to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Ok(view)
}

/// A volume's format (`<target><format type=…>`) and, for an overlay, its backing file.
pub fn parse_volume(text: &str) -> Result<(Option<String>, Option<String>), String> {
    let doc = roxmltree::Document::parse(text)
        .map_err(|e| format!("libvirt's description of the volume is not XML: {e}"))?;
    let root = doc.root_element();
    let find = |parent: &str, name: &str| {
        root.children()
            .find(|c| c.is_element() && c.tag_name().name() == parent)
            .and_then(|p| {
                p.children()
                    .find(|c| c.is_element() && c.tag_name().name() == name)
            })
    };
    let format = find("target", "format")
        .and_then(|f| f.attribute("type"))
        .map(str::to_string);
    let backing = find("backingStore", "path")
        .and_then(|p| p.text())
        .map(str::to_string);
    Ok((format, backing))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> DomainDef {
        DomainDef {
            name: "web01".into(),
            domain_type: "qemu".into(),
            owner: Owner {
                plan: "p&q".into(),
                node: "web01".into(),
                seeded: Some(Seeded {
                    image: "base.raw".into(),
                    pool: "dop-test".into(),
                    interfaces: vec![ActualInterface {
                        name: "eth0".into(),
                        ip: "10.0.2.11".into(),
                        floating_network: None,
                    }],
                    ssh: Some(SshEndpoint {
                        address: "127.0.80.11".into(),
                        port: 2222,
                    }),
                }),
            },
            memory_kib: 196_608,
            vcpus: 1,
            disks: vec![
                Disk {
                    pool: "dop-test".into(),
                    volume: "p--web01--root.qcow2".into(),
                    format: "qcow2".into(),
                    target: "vda".into(),
                    serial: None,
                    readonly: false,
                },
                Disk {
                    pool: "dop-test".into(),
                    volume: "p--web01--seed.img".into(),
                    format: "raw".into(),
                    target: "vdb".into(),
                    serial: None,
                    readonly: true,
                },
            ],
            nics: vec![
                Nic::User {
                    mac: "52:54:00:00:00:01".into(),
                    net: "10.0.2.0/24".into(),
                    gateway: Some("10.0.2.2".parse().unwrap()),
                    host: "127.0.80.11:2222".parse().unwrap(),
                    guest: "10.0.2.11".parse().unwrap(),
                },
                Nic::Network {
                    mac: "52:54:00:00:00:02".into(),
                    network: "backend".into(),
                },
            ],
            console_log: "/var/log/libvirt/qemu/web01-console.log".into(),
        }
    }

    #[test]
    fn a_domain_definition_reads_back_as_written() {
        let xml = domain(&def());
        insta::assert_snapshot!(xml);
        let view = parse_domain(&xml).unwrap();
        assert_eq!(view.owner, Some(def().owner));
        assert_eq!(view.vcpus, Some(1));
        assert_eq!(view.memory_kib, Some(196_608));
        assert_eq!(view.disks, def().disks);
        assert_eq!(view.targets, ["vda", "vdb"]);
        assert_eq!(view.macs, ["52:54:00:00:00:02"]);
    }

    #[test]
    fn a_domain_without_the_mark_has_no_owner() {
        let xml = "<domain type='kvm'><name>x</name><metadata><other:node xmlns:other='https://example.com/x' plan='p' node='x'/></metadata><memory unit='MiB'>2</memory></domain>";
        let view = parse_domain(xml).unwrap();
        assert_eq!(view.owner, None);
        assert_eq!(view.memory_kib, Some(2048));
        assert!(parse_domain("<domain").is_err());
    }

    #[test]
    fn volumes_read_back_format_and_backing_file() {
        let xml = volume("o.qcow2", 1 << 30, "qcow2", Some(("/pool/base.raw", "raw")));
        assert_eq!(
            parse_volume(&xml).unwrap(),
            (Some("qcow2".into()), Some("/pool/base.raw".into()))
        );
    }
}
