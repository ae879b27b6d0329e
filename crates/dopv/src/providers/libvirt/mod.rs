//! `libvirt`: virtual machines on a KVM (or qemu) host through libvirt's API. The
//! infrastructure's `endpoint` is the connection URI (`qemu:///system`,
//! `qemu+ssh://root@kvm1.example.com/system`).
//!
//! A node is a domain of the node's name with:
//! - a root disk cloned copy-on-write from the base volume the node's `image` names (a qcow2
//!   overlay `<plan>--<node>--root.qcow2` in the node's pool, `default_pool` or `default`);
//! - a NoCloud seed `<plan>--<node>--seed.img` (cloud-init's format: host name, root's SSH keys
//!   and password, static addresses), so real cloud images configure themselves unchanged;
//! - one network card per plan interface on the libvirt network of the interface's name, with
//!   a MAC address derived from plan, node and interface;
//! - data disks as qcow2 volumes `<plan>--<node>--data-<disk>.qcow2`, hot-plugged with the
//!   disk's name as serial number.
//!
//! What dopv creates it marks: the domain carries `<metadata>` in dopv's namespace with the
//! plan and node, volumes carry the plan and node in their names. A domain of the node's name
//! without the mark is never touched.
//!
//! For tests, `infrastructure_properties.user_network_ssh` attaches the first interface to
//! qemu's user networking instead, with that host address forwarded to the guest's SSH port:
//! the one difference from production, kept to the network attachment.

mod conn;
mod xml;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dop_core::plan::{DataDisk, Gateway, Infrastructure, IpSetting};
use dop_run::logs::NodeLog;
use virt::domain::Domain;
use virt::storage_pool::StoragePool;
use virt::storage_vol::StorageVol;
use virt::stream::Stream;
use virt::sys;

use self::conn::{CallError, Conn, Host};
use self::xml::{Disk, DomainDef, Nic, Owner, Seeded};
use crate::actual::{Actual, ActualDisk, ActualInterface, Power, SshEndpoint};
use crate::provider::{ChangeKind, NodeSpec, Provider, ProviderError, ProviderOptions, Result};
use crate::providers::cloudinit;
use crate::state::DiskRecord;

/// The pool a node without `default_pool` uses: libvirt's usual one.
pub const DEFAULT_POOL: &str = "default";
/// How long a guest gets to power off after the ACPI request before it is switched off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);
/// How often state and SSH are polled while waiting.
const POLL: Duration = Duration::from_millis(500);
/// Where libvirt logs the serial consoles (on the libvirt host).
const CONSOLE_DIR: &str = "/var/log/libvirt/qemu";

/// The `libvirt` provider of one infrastructure.
pub struct Libvirt {
    infrastructure: Infrastructure,
    plan: String,
    host: Host,
    wait_timeout: Duration,
}

fn error(message: impl Into<String>) -> ProviderError {
    ProviderError::new(message)
}

fn lv(e: conn::LibvirtError) -> ProviderError {
    error(e.to_string())
}

/// The pool of a node's root disk and seed.
fn node_pool(spec: &NodeSpec) -> String {
    spec.node
        .infrastructure_properties
        .default_pool
        .clone()
        .unwrap_or_else(|| DEFAULT_POOL.to_string())
}

fn root_volume(spec: &NodeSpec) -> String {
    format!("{}--{}--root.qcow2", spec.plan, spec.node.name)
}

fn seed_volume(spec: &NodeSpec) -> String {
    format!("{}--{}--seed.img", spec.plan, spec.node.name)
}

fn data_volume(spec: &NodeSpec, disk: &str) -> String {
    format!("{}--{}--data-{disk}.qcow2", spec.plan, spec.node.name)
}

/// A data disk's record id: `<pool>/<volume>`.
fn disk_id(pool: &str, volume: &str) -> String {
    format!("{pool}/{volume}")
}

fn split_disk_id(id: &str) -> Result<(String, String)> {
    id.split_once('/')
        .map(|(p, v)| (p.to_string(), v.to_string()))
        .ok_or_else(|| error(format!("the disk DB id '{id}' is not '<pool>/<volume>'")))
}

/// A stable, locally administered MAC address for a node's interface (qemu's 52:54:00 prefix).
fn mac_address(plan: &str, node: &str, interface: &str) -> String {
    // FNV-1a: stable across builds and platforms, unlike the standard library's hasher.
    let mut hash: u32 = 0x811c_9dc5;
    for b in plan
        .bytes()
        .chain([0])
        .chain(node.bytes())
        .chain([0])
        .chain(interface.bytes())
    {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    let [_, a, b, c] = hash.to_be_bytes();
    format!("52:54:00:{a:02x}:{b:02x}:{c:02x}")
}

fn sorted_disks(mut disks: Vec<ActualDisk>) -> Vec<ActualDisk> {
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    disks
}

/// The guest device name of the n-th virtio disk (`vda`, `vdb`, … `vdz`, `vdaa`).
fn target_name(n: usize) -> String {
    let letters = b"abcdefghijklmnopqrstuvwxyz";
    if n < 26 {
        format!("vd{}", letters[n] as char)
    } else {
        format!(
            "vd{}{}",
            letters[n / 26 - 1] as char,
            letters[n % 26] as char
        )
    }
}

impl Libvirt {
    /// The provider for `infrastructure`; nothing is opened until a node needs it.
    pub fn new(
        infrastructure: &Infrastructure,
        plan_name: &str,
        options: &ProviderOptions,
    ) -> Result<Libvirt> {
        let uri = infrastructure.endpoint.as_deref().ok_or_else(|| {
            error(format!(
                "infrastructure '{}': a libvirt infrastructure needs an endpoint (the connection URI, such as qemu:///system)",
                infrastructure.name
            ))
        })?;
        Ok(Libvirt {
            infrastructure: infrastructure.clone(),
            plan: plan_name.to_string(),
            host: Host::new(uri, options.api_timeout),
            wait_timeout: options.wait_timeout,
        })
    }

    /// The network cards the node gets, in plan order.
    fn nics(&self, spec: &NodeSpec) -> Result<Vec<Nic>> {
        let node = &spec.node;
        let mut nics = Vec::new();
        for (i, interface) in node.interfaces.iter().enumerate() {
            let mac = mac_address(&spec.plan, &node.name, &interface.name);
            let forward = node.infrastructure_properties.user_network_ssh;
            match (i, forward) {
                (0, Some(host)) => {
                    let IpSetting::Static(guest) = interface.ip else {
                        return Err(error(format!(
                            "interfaces.{}: user_network_ssh forwards to the first interface's static address; it has none",
                            interface.name
                        )));
                    };
                    let network = self.infrastructure.network(&interface.network);
                    let prefix = network
                        .and_then(|n| n.ip_netmask)
                        .and_then(cloudinit::prefix_len)
                        .unwrap_or(24);
                    let net = match guest {
                        IpAddr::V4(g) => {
                            let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
                            std::net::Ipv4Addr::from(u32::from(g) & mask)
                        }
                        IpAddr::V6(_) => {
                            return Err(error(
                                "user_network_ssh needs an IPv4 address on the first interface",
                            ))
                        }
                    };
                    let gateway = match network.and_then(|n| n.ip_defgw) {
                        Some(Gateway::Ip(gw)) => Some(gw),
                        _ => None,
                    };
                    nics.push(Nic::User {
                        mac,
                        net: format!("{net}/{prefix}"),
                        gateway,
                        host,
                        guest,
                    });
                }
                _ => nics.push(Nic::Network {
                    mac,
                    network: interface.network.clone(),
                }),
            }
        }
        Ok(nics)
    }

    /// Where dopi reaches the node when that is fixed by the plan: the forward, else the
    /// first static address on the node's SSH port.
    fn fixed_ssh(&self, spec: &NodeSpec) -> Option<SshEndpoint> {
        if let Some(host) = spec.node.infrastructure_properties.user_network_ssh {
            return Some(SshEndpoint {
                address: host.ip().to_string(),
                port: host.port(),
            });
        }
        spec.node.interfaces.iter().find_map(|i| match i.ip {
            IpSetting::Static(ip) => Some(SshEndpoint {
                address: ip.to_string(),
                port: spec.ssh_port,
            }),
            _ => None,
        })
    }

    /// The node's domain when dopv made it for this plan (`None`: there is none, or it is
    /// someone else's).
    async fn owned(&self, spec: &NodeSpec) -> Result<Option<(xml::DomainView, DomainState)>> {
        let name = spec.node.name.clone();
        let found = self
            .host
            .run(&format!("looking up domain '{name}'"), move |c| {
                describe(c, &name)
            })
            .await
            .map_err(lv)?;
        Ok(found.filter(|(view, _)| self.is_ours(view, spec)))
    }

    fn is_ours(&self, view: &xml::DomainView, spec: &NodeSpec) -> bool {
        view.owner
            .as_ref()
            .is_some_and(|o| o.plan == self.plan && o.node == spec.node.name)
    }

    /// Removes the node's root disk and seed (what a create makes besides the domain).
    async fn remove_volumes(&self, spec: &NodeSpec, log: &NodeLog) -> Result<()> {
        let pool = node_pool(spec);
        for volume in [root_volume(spec), seed_volume(spec)] {
            let (p, v) = (pool.clone(), volume.clone());
            let removed = self
                .host
                .run(
                    &format!("deleting volume '{volume}' in pool '{pool}'"),
                    move |c| delete_volume(c, &p, &v),
                )
                .await
                .map_err(lv)?;
            if removed {
                log.line(&format!("libvirt: volume {pool}/{volume} deleted"));
            }
        }
        Ok(())
    }

    /// Makes the root disk, the seed and the domain (not started).
    async fn build(&self, spec: &NodeSpec, log: &NodeLog) -> Result<()> {
        let node = &spec.node;
        let pool = node_pool(spec);
        let image = node
            .image
            .clone()
            .ok_or_else(|| error("a libvirt node needs an image (a volume in its storage pool)"))?;
        let sizing = node
            .sizing(dop_core::plan::ProviderKind::Libvirt)
            .ok_or_else(|| error("no sizing for a libvirt node"))?;
        // The root disk: an overlay of the base volume.
        let (p, img, root) = (pool.clone(), image.clone(), root_volume(spec));
        let storage = sizing.storage.bytes();
        self.host
            .run(&format!("cloning '{image}' into '{root}'"), move |c| {
                clone_root(c, &p, &img, &root, storage)
            })
            .await
            .map_err(lv)?;
        log.line(&format!(
            "libvirt: root disk {pool}/{} cloned from {image} ({} GiB)",
            root_volume(spec),
            storage >> 30
        ));
        // The seed.
        // A new instance id on every create: cloud-init runs its first-boot modules again.
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let instance_id = format!("{}/{}/{created}", spec.plan, node.name);
        let user_data = cloudinit::cloud_config(spec).map_err(error)?;
        let network = cloudinit::network_config(spec, &self.infrastructure, |i| {
            mac_address(&spec.plan, &node.name, i)
        })
        .map_err(error)?;
        let image_bytes = cloudinit::seed_image(
            &cloudinit::meta_data(spec, &instance_id),
            &user_data,
            &network,
        )
        .map_err(error)?;
        let (p, seed) = (pool.clone(), seed_volume(spec));
        self.host
            .run(&format!("uploading the seed '{seed}'"), move |c| {
                upload_volume(c, &p, &seed, &image_bytes)
            })
            .await
            .map_err(lv)?;
        // The domain.
        let seeded = Seeded {
            image: image.clone(),
            pool: pool.clone(),
            interfaces: ActualInterface::planned(&spec.node.interfaces),
            ssh: self.fixed_ssh(spec),
        };
        let def = DomainDef {
            name: node.name.clone(),
            domain_type: node
                .infrastructure_properties
                .domain_type
                .clone()
                .unwrap_or_else(|| "kvm".into()),
            owner: Owner {
                plan: self.plan.clone(),
                node: node.name.clone(),
                seeded: Some(seeded),
            },
            memory_kib: memory_kib(&sizing),
            vcpus: sizing.cores,
            disks: vec![
                Disk {
                    pool: pool.clone(),
                    volume: root_volume(spec),
                    format: "qcow2".into(),
                    target: target_name(0),
                    serial: None,
                    readonly: false,
                },
                Disk {
                    pool: pool.clone(),
                    volume: seed_volume(spec),
                    format: "raw".into(),
                    target: target_name(1),
                    serial: None,
                    readonly: true,
                },
            ],
            nics: self.nics(spec)?,
            console_log: format!("{CONSOLE_DIR}/{}-console.log", node.name),
        };
        let text = xml::domain(&def);
        self.host
            .run(&format!("defining domain '{}'", node.name), move |c| {
                Domain::define_xml(c, &text)
                    .map(|_| ())
                    .map_err(CallError::from)
            })
            .await
            .map_err(lv)?;
        log.line(&format!(
            "libvirt: domain {} defined ({} vCPU, {} MiB, type {})",
            node.name,
            def.vcpus,
            def.memory_kib / 1024,
            def.domain_type
        ));
        Ok(())
    }

    /// Where the node answers SSH now: the fixed endpoint, else the first address libvirt's
    /// DHCP server leased to it.
    async fn ssh_endpoint(&self, spec: &NodeSpec) -> Result<Option<SshEndpoint>> {
        if let Some(fixed) = self.fixed_ssh(spec) {
            return Ok(Some(fixed));
        }
        let name = spec.node.name.clone();
        let port = spec.ssh_port;
        let leased = self
            .host
            .run(
                &format!("reading the leases of domain '{name}'"),
                move |c| {
                    let dom = Domain::lookup_by_name(c, &name)?;
                    let interfaces =
                        dom.interface_addresses(sys::VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE, 0)?;
                    Ok(interfaces
                        .iter()
                        .flat_map(|i| i.addrs.iter())
                        .find(|a| a.typed == 0)
                        .map(|a| a.addr.clone()))
                },
            )
            .await
            .map_err(lv)?;
        Ok(leased.map(|address| SshEndpoint { address, port }))
    }

    /// Waits until the guest answers SSH, failing early when the domain stops.
    async fn wait_for_ssh(&self, spec: &NodeSpec, log: &NodeLog) -> Result<()> {
        let started = Instant::now();
        let deadline = started + self.wait_timeout;
        let name = spec.node.name.clone();
        let mut last_error: Option<String>;
        let mut heartbeat = crate::providers::Heartbeat::new(
            format!("domain '{name}' to answer SSH"),
            self.wait_timeout,
        );
        loop {
            // A libvirtd restarting in between is no reason to give up: ask again.
            match self.owned(spec).await {
                Ok(Some((_, state))) if state != DomainState::Running => {
                    return Err(error(format!(
                        "domain '{name}' stopped ({state:?}) while dopv waited for its SSH{}",
                        self.console_hint(&name)
                    )))
                }
                Ok(None) => return Err(error(format!("domain '{name}' is gone"))),
                Ok(Some(_)) => match self.ssh_endpoint(spec).await {
                    Ok(Some(endpoint)) => {
                        let addr = format!("{}:{}", endpoint.address, endpoint.port);
                        let answers = match addr.parse::<SocketAddr>() {
                            Ok(a) => tokio::task::spawn_blocking(move || super::ssh_answers(a))
                                .await
                                .unwrap_or(false),
                            Err(_) => false,
                        };
                        if answers {
                            log.line(&format!(
                                "libvirt: {name} answers SSH on {addr} after {:.1} s",
                                started.elapsed().as_secs_f64()
                            ));
                            return Ok(());
                        }
                        last_error = Some(format!("nothing answered SSH on {addr}"));
                    }
                    Ok(None) => last_error = Some("no address leased yet".into()),
                    Err(e) => last_error = Some(e.to_string()),
                },
                Err(e) => last_error = Some(e.to_string()),
            }
            heartbeat.tick(last_error.as_deref().unwrap_or("running"));
            if Instant::now() >= deadline {
                return Err(error(format!(
                    "domain '{name}' runs but did not answer SSH within {} s ({}){}",
                    self.wait_timeout.as_secs(),
                    last_error.unwrap_or_default(),
                    self.console_hint(&name)
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Where the guest's console is logged, with its last lines when this host can read it.
    fn console_hint(&self, name: &str) -> String {
        let path = format!("{CONSOLE_DIR}/{name}-console.log");
        let tail = std::fs::read_to_string(&path)
            .ok()
            .filter(|_| self.host.uri().starts_with("qemu:///"))
            .map(|text| {
                let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
                let start = lines.len().saturating_sub(5);
                format!("; its last console lines: {}", lines[start..].join(" | "))
            })
            .unwrap_or_default();
        format!("; its serial console is logged in {path} on the libvirt host{tail}")
    }

    /// Changes the domain's persistent definition (what it gets from its next start); `change`
    /// gets the domain and its inactive description.
    async fn change_definition(
        &self,
        name: &str,
        what: &str,
        change: impl FnOnce(&Domain, &xml::DomainView) -> std::result::Result<(), CallError>
            + Send
            + 'static,
    ) -> Result<()> {
        let n = name.to_string();
        self.host
            .run(&format!("setting {what} of '{name}'"), move |c| {
                let dom = Domain::lookup_by_name(c, &n)?;
                let view = xml::parse_domain(&dom.get_xml_desc(sys::VIR_DOMAIN_XML_INACTIVE)?)
                    .map_err(CallError::other)?;
                change(&dom, &view)
            })
            .await
            .map_err(lv)
    }

    async fn wait_state(
        &self,
        spec: &NodeSpec,
        want: DomainState,
        within: Duration,
    ) -> Result<bool> {
        let deadline = Instant::now() + within;
        loop {
            match self.owned(spec).await? {
                Some((_, state)) if state == want => return Ok(true),
                None => return Ok(want == DomainState::Off),
                _ => {}
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// The node's memory in KiB, the unit libvirt keeps it in (rounded up).
fn memory_kib(sizing: &dop_core::plan::Sizing) -> u64 {
    sizing.memory.bytes().div_ceil(1024)
}

/// Sets a persistent count bounded by its maximum (vCPUs, memory) to `wanted`, the count and
/// the maximum alike: the maximum is raised first and lowered last. `set(true)` sets the
/// maximum, `set(false)` the count.
fn set_with_maximum<T: PartialOrd>(
    current: T,
    wanted: T,
    set: impl Fn(bool) -> std::result::Result<(), virt::error::Error>,
) -> std::result::Result<(), CallError> {
    let order = if wanted > current {
        [true, false]
    } else {
        [false, true]
    };
    for maximum in order {
        set(maximum)?;
    }
    Ok(())
}

/// A domain's run state, as dopv tells them apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DomainState {
    Running,
    Paused,
    Off,
    Other,
}

/// The domain of that name, described, or `None`.
fn describe(
    c: &Conn,
    name: &str,
) -> std::result::Result<Option<(xml::DomainView, DomainState)>, CallError> {
    let dom = match Domain::lookup_by_name(c, name) {
        Ok(d) => d,
        Err(e) => {
            let e = CallError::from(e);
            return if e.is_missing() { Ok(None) } else { Err(e) };
        }
    };
    let text = dom.get_xml_desc(0)?;
    let view = xml::parse_domain(&text).map_err(CallError::other)?;
    let (state, _) = dom.get_state()?;
    let state = match state {
        sys::VIR_DOMAIN_RUNNING => DomainState::Running,
        sys::VIR_DOMAIN_PAUSED => DomainState::Paused,
        sys::VIR_DOMAIN_SHUTOFF => DomainState::Off,
        _ => DomainState::Other,
    };
    Ok(Some((view, state)))
}

fn active_pool(c: &Conn, pool: &str) -> std::result::Result<StoragePool, CallError> {
    let p = StoragePool::lookup_by_name(c, pool).map_err(|e| {
        let e = CallError::from(e);
        if e.is_missing() {
            let names = c
                .list_all_storage_pools(0)
                .map(|pools| pools.iter().filter_map(|p| p.get_name().ok()).collect::<Vec<_>>().join(", "))
                .unwrap_or_default();
            CallError::other(format!(
                "there is no storage pool '{pool}' (there are: {names}); set infrastructure_properties.default_pool or the disk's pool, or define it (virsh pool-define-as)"
            ))
        } else {
            e
        }
    })?;
    if !p.is_active()? {
        return Err(CallError::other(format!(
            "the storage pool '{pool}' is not active; start it (virsh pool-start {pool})"
        )));
    }
    // Files put there by hand are seen only after a refresh.
    let _ = p.refresh(0);
    Ok(p)
}

/// Deletes a volume when it exists; true when it did.
fn delete_volume(c: &Conn, pool: &str, volume: &str) -> std::result::Result<bool, CallError> {
    let p = match StoragePool::lookup_by_name(c, pool) {
        Ok(p) => p,
        Err(e) => {
            let e = CallError::from(e);
            return if e.is_missing() { Ok(false) } else { Err(e) };
        }
    };
    match StorageVol::lookup_by_name(&p, volume) {
        Ok(v) => {
            v.delete(0)?;
            Ok(true)
        }
        Err(e) => {
            let e = CallError::from(e);
            if e.is_missing() {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

fn clone_root(
    c: &Conn,
    pool: &str,
    image: &str,
    root: &str,
    capacity: u64,
) -> std::result::Result<(), CallError> {
    let p = active_pool(c, pool)?;
    let base = StorageVol::lookup_by_name(&p, image).map_err(|e| {
        let e = CallError::from(e);
        if e.is_missing() {
            let names = p.list_volumes().unwrap_or_default().join(", ");
            CallError::other(format!(
                "there is no volume '{image}' in storage pool '{pool}' to clone the root disk from (the node's image; there are: {names})"
            ))
        } else {
            e
        }
    })?;
    let base_size = base.get_info()?.capacity;
    if base_size > capacity {
        return Err(CallError::other(format!(
            "the image '{image}' is {base_size} bytes, larger than the node's storage ({capacity} bytes); give the node more storage"
        )));
    }
    let (format, _) = xml::parse_volume(&base.get_xml_desc(0)?).map_err(CallError::other)?;
    let path = base.get_path()?;
    if let Ok(stale) = StorageVol::lookup_by_name(&p, root) {
        // Left by a create that was interrupted; the domain using it is gone.
        stale.delete(0)?;
    }
    let text = xml::volume(
        root,
        capacity,
        "qcow2",
        Some((&path, format.as_deref().unwrap_or("raw"))),
    );
    StorageVol::create_xml(&p, &text, 0)?;
    Ok(())
}

fn upload_volume(
    c: &Conn,
    pool: &str,
    name: &str,
    bytes: &[u8],
) -> std::result::Result<(), CallError> {
    let p = active_pool(c, pool)?;
    if let Ok(stale) = StorageVol::lookup_by_name(&p, name) {
        stale.delete(0)?;
    }
    let vol = StorageVol::create_xml(&p, &xml::volume(name, bytes.len() as u64, "raw", None), 0)?;
    let stream = Stream::new(c, 0)?;
    vol.upload(&stream, 0, bytes.len() as u64, 0)?;
    let mut sent = 0;
    while sent < bytes.len() {
        match stream.send(&bytes[sent..]) {
            Ok(0) => return Err(CallError::other("the upload stream closed early")),
            Ok(n) => sent += n,
            Err(e) => {
                let _ = stream.abort();
                return Err(e.into());
            }
        }
    }
    stream.finish()?;
    Ok(())
}

#[async_trait]
impl Provider for Libvirt {
    async fn check(&self) -> Result<()> {
        self.host
            .run("connecting", |c| {
                c.get_lib_version().map(|_| ()).map_err(CallError::from)
            })
            .await
            .map_err(lv)
    }

    fn check_node(&self, spec: &NodeSpec) -> Vec<String> {
        let node = &spec.node;
        let mut problems = Vec::new();
        if node.image.is_none() {
            problems.push(
                "a libvirt node needs an image (the name of a volume in its storage pool, cloned copy-on-write for its root disk)".into(),
            );
        }
        if node.interfaces.is_empty() {
            problems.push("a libvirt node needs at least one interface (its network: a libvirt network's name)".into());
        }
        if let Err(e) = self.nics(spec) {
            problems.push(e.to_string());
        }
        problems
    }

    fn expected(&self, spec: &NodeSpec) -> Actual {
        let node = &spec.node;
        let sizing = node.sizing(dop_core::plan::ProviderKind::Libvirt);
        Actual {
            exists: true,
            power: Some(Power::On),
            image: node.image.clone(),
            cores: sizing.map(|s| s.cores),
            // libvirt keeps memory in KiB.
            memory: sizing.map(|s| dop_core::DataSize(memory_kib(&s) * 1024)),
            storage: sizing.map(|s| s.storage),
            interfaces: Some(ActualInterface::planned(&spec.node.interfaces)),
            disks: Some(ActualDisk::planned(&node.disks)),
            ..Actual::default()
        }
    }

    async fn read(&self, spec: &NodeSpec) -> Result<Actual> {
        let Some((view, state)) = self.owned(spec).await? else {
            return Ok(Actual::default());
        };
        let seeded = view.owner.as_ref().and_then(|o| o.seeded.clone());
        // Sizes of the root disk and the data disks, read from their volumes.
        let root = root_volume(spec);
        let prefix = format!("{}--{}--data-", spec.plan, spec.node.name);
        let disks = view.disks.clone();
        let sizes = self
            .host
            .run(
                &format!("reading the volumes of '{}'", spec.node.name),
                move |c| {
                    let mut out = Vec::new();
                    for d in &disks {
                        let Ok(p) = StoragePool::lookup_by_name(c, &d.pool) else {
                            continue;
                        };
                        if let Ok(v) = StorageVol::lookup_by_name(&p, &d.volume) {
                            out.push((d.volume.clone(), v.get_info()?.capacity));
                        }
                    }
                    Ok(out)
                },
            )
            .await
            .map_err(lv)?;
        let storage = sizes
            .iter()
            .find(|(v, _)| *v == root)
            .map(|(_, s)| dop_core::DataSize(*s));
        let disks = sizes
            .iter()
            .filter_map(|(v, size)| {
                let name = v.strip_prefix(&prefix)?.strip_suffix(".qcow2")?;
                Some(ActualDisk {
                    name: name.to_string(),
                    size: dop_core::DataSize(*size),
                })
            })
            .collect();
        let ssh = match (&seeded, state) {
            (Some(Seeded { ssh: Some(s), .. }), _) => Some(s.clone()),
            (_, DomainState::Running) => self.ssh_endpoint(spec).await.ok().flatten(),
            _ => None,
        };
        Ok(Actual {
            exists: true,
            power: match state {
                DomainState::Running | DomainState::Paused => Some(Power::On),
                DomainState::Off => Some(Power::Off),
                DomainState::Other => None,
            },
            image: seeded.as_ref().map(|s| s.image.clone()),
            cores: view.vcpus,
            memory: view.memory_kib.map(|k| dop_core::DataSize(k * 1024)),
            storage,
            interfaces: seeded.as_ref().map(|s| s.interfaces.clone()),
            disks: Some(sorted_disks(disks)),
            ssh,
            ..Actual::default()
        })
    }

    async fn create(&self, spec: &NodeSpec, log: &NodeLog) -> Result<()> {
        let name = spec.node.name.clone();
        let n = name.clone();
        let existing = self
            .host
            .run(&format!("looking up domain '{name}'"), move |c| {
                describe(c, &n)
            })
            .await
            .map_err(lv)?;
        if let Some((view, _)) = existing {
            return Err(error(match view.owner {
                Some(o) if o.plan == self.plan && o.node == name => {
                    format!("the domain '{name}' exists already")
                }
                Some(o) => format!(
                    "a domain named '{name}' exists on {} that dopv made for plan '{}': dopv never touches another plan's node; rename the node or remove that domain",
                    self.host.uri(),
                    o.plan
                ),
                None => format!(
                    "a domain named '{name}' exists on {} that dopv did not create: dopv never touches it; rename the node or remove that domain",
                    self.host.uri()
                ),
            }));
        }
        if let Err(e) = self.build(spec, log).await {
            // Leave nothing behind: the driver's rollback cannot know what was made.
            let _ = self.destroy(spec, log).await;
            return Err(e);
        }
        Ok(())
    }

    async fn destroy(&self, spec: &NodeSpec, log: &NodeLog) -> Result<()> {
        let name = spec.node.name.clone();
        if let Some((_, state)) = self.owned(spec).await? {
            let n = name.clone();
            self.host
                .run(&format!("removing domain '{name}'"), move |c| {
                    let dom = Domain::lookup_by_name(c, &n)?;
                    if state != DomainState::Off {
                        if let Err(e) = dom.destroy() {
                            // It may have stopped in between.
                            if dom.is_active()? {
                                return Err(e.into());
                            }
                        }
                    }
                    dom.undefine_flags(
                        sys::VIR_DOMAIN_UNDEFINE_NVRAM | sys::VIR_DOMAIN_UNDEFINE_MANAGED_SAVE,
                    )?;
                    Ok(())
                })
                .await
                .map_err(lv)?;
            log.line(&format!("libvirt: domain {name} removed"));
        }
        self.remove_volumes(spec, log).await
    }

    async fn power(&self, spec: &NodeSpec, on: bool, log: &NodeLog) -> Result<()> {
        let name = spec.node.name.clone();
        let (_, state) = self
            .owned(spec)
            .await?
            .ok_or_else(|| error(format!("the domain '{name}' does not exist")))?;
        if on {
            if state != DomainState::Running {
                let n = name.clone();
                self.host
                    .run(&format!("starting domain '{name}'"), move |c| {
                        let dom = Domain::lookup_by_name(c, &n)?;
                        match state {
                            DomainState::Paused => dom.resume().map(|_| ()),
                            _ => dom.create().map(|_| ()),
                        }
                        .map_err(CallError::from)
                    })
                    .await
                    .map_err(lv)?;
                log.line(&format!("libvirt: domain {name} started"));
            }
            return self.wait_for_ssh(spec, log).await;
        }
        if state == DomainState::Off {
            return Ok(());
        }
        let n = name.clone();
        // The guest's own shutdown first (ACPI), then the switch.
        let asked = self
            .host
            .run(&format!("shutting domain '{name}' down"), move |c| {
                Domain::lookup_by_name(c, &n)?
                    .shutdown()
                    .map(|_| ())
                    .map_err(CallError::from)
            })
            .await;
        let grace = SHUTDOWN_GRACE.min(self.wait_timeout);
        if asked.is_err() || !self.wait_state(spec, DomainState::Off, grace).await? {
            let n = name.clone();
            self.host
                .run(&format!("switching domain '{name}' off"), move |c| {
                    let dom = Domain::lookup_by_name(c, &n)?;
                    match dom.destroy() {
                        Ok(()) => Ok(()),
                        Err(_) if !dom.is_active()? => Ok(()),
                        Err(e) => Err(e.into()),
                    }
                })
                .await
                .map_err(lv)?;
            log.line(&format!(
                "libvirt: {name} did not power off within {} s of the ACPI request; switched off",
                grace.as_secs()
            ));
        } else {
            log.line(&format!("libvirt: domain {name} shut down"));
        }
        Ok(())
    }

    fn change_kind(&self, field: &str) -> ChangeKind {
        match field {
            "disks" | "power" => ChangeKind::InPlace,
            // Not used by this provider: recorded.
            "tags" | "timezone" | "product_id" | "organization_name" => ChangeKind::InPlace,
            // The domain's definition changes; the guest sees it when it starts again.
            "cores" | "memory" => ChangeKind::Reboot,
            // The root disk, first-boot settings (host name, addresses, credentials, DNS in
            // the seed), the network cards and the pool are fixed when the node is made; a
            // flavor changes the root disk too.
            _ => ChangeKind::Redeploy,
        }
    }

    async fn apply(&self, spec: &NodeSpec, field: &str, log: &NodeLog) -> Result<()> {
        let name = spec.node.name.clone();
        let sizing = spec
            .node
            .sizing(dop_core::plan::ProviderKind::Libvirt)
            .ok_or_else(|| error("no sizing for a libvirt node"))?;
        match field {
            "cores" => {
                let cores = sizing.cores;
                self.change_definition(&name, "the vCPUs", move |dom, view| {
                    set_with_maximum(view.vcpus.unwrap_or(1), cores, |maximum| {
                        let flags = sys::VIR_DOMAIN_VCPU_CONFIG
                            | if maximum {
                                sys::VIR_DOMAIN_VCPU_MAXIMUM
                            } else {
                                0
                            };
                        dom.set_vcpus_flags(cores, flags).map(drop)
                    })
                })
                .await?;
                log.line(&format!(
                    "libvirt: {name} gets {cores} vCPUs from its next start"
                ));
            }
            "memory" => {
                let kib = memory_kib(&sizing);
                self.change_definition(&name, "the memory", move |dom, view| {
                    set_with_maximum(view.memory_kib.unwrap_or(0), kib, |maximum| {
                        let flags = sys::VIR_DOMAIN_MEM_CONFIG
                            | if maximum {
                                sys::VIR_DOMAIN_MEM_MAXIMUM
                            } else {
                                0
                            };
                        dom.set_memory_flags(kib, flags).map(drop)
                    })
                })
                .await?;
                log.line(&format!(
                    "libvirt: {name} gets {} MiB from its next start",
                    kib / 1024
                ));
            }
            other => log.line(&format!(
                "libvirt: '{other}' recorded (nothing to change on the domain)"
            )),
        }
        Ok(())
    }

    async fn add_disk(&self, spec: &NodeSpec, disk: &DataDisk) -> Result<DiskRecord> {
        let pool = disk.pool.clone().unwrap_or_else(|| node_pool(spec));
        let volume = data_volume(spec, &disk.name);
        let size = disk.size.bytes();
        let (p, v) = (pool.clone(), volume.clone());
        self.host
            .run(
                &format!("creating volume '{volume}' for data disk '{}'", disk.name),
                move |c| {
                    let pool = active_pool(c, &p)?;
                    // A volume of this name is this node's disk, made by a run that was
                    // interrupted before the disk DB recorded it: taken over, not made twice.
                    if StorageVol::lookup_by_name(&pool, &v).is_err() {
                        StorageVol::create_xml(&pool, &xml::volume(&v, size, "qcow2", None), 0)?;
                    }
                    Ok(())
                },
            )
            .await
            .map_err(lv)?;
        Ok(DiskRecord {
            name: disk.name.clone(),
            id: disk_id(&pool, &volume),
            pool: Some(pool),
            size,
            node: spec.node.name.clone(),
        })
    }

    async fn attach_disk(&self, spec: &NodeSpec, disk: &DiskRecord) -> Result<()> {
        let (pool, volume) = split_disk_id(&disk.id)?;
        let (view, state) = self
            .owned(spec)
            .await?
            .ok_or_else(|| error(format!("the domain '{}' does not exist", spec.node.name)))?;
        if view
            .disks
            .iter()
            .any(|d| d.pool == pool && d.volume == volume)
        {
            return Ok(());
        }
        let target = (0..)
            .map(target_name)
            .find(|t| !view.targets.contains(t))
            .unwrap_or_else(|| "vdzz".into());
        // The guest finds the disk by its serial; virtio keeps 20 characters.
        let serial: String = disk.name.chars().take(20).collect();
        let device = xml::disk(&Disk {
            pool: pool.clone(),
            volume: volume.clone(),
            format: "qcow2".into(),
            target: target.clone(),
            serial: Some(serial),
            readonly: false,
        });
        let name = spec.node.name.clone();
        let live = state == DomainState::Running || state == DomainState::Paused;
        self.host
            .run(
                &format!("attaching data disk '{}' to '{name}'", disk.name),
                move |c| {
                    let dom = Domain::lookup_by_name(c, &name)?;
                    let mut flags = sys::VIR_DOMAIN_AFFECT_CONFIG;
                    if live {
                        flags |= sys::VIR_DOMAIN_AFFECT_LIVE;
                    }
                    dom.attach_device_flags(&device, flags)?;
                    Ok(())
                },
            )
            .await
            .map_err(lv)?;
        Ok(())
    }

    async fn detach_disk(&self, spec: &NodeSpec, disk: &DiskRecord) -> Result<()> {
        let (pool, volume) = split_disk_id(&disk.id)?;
        let Some((view, state)) = self.owned(spec).await? else {
            return Ok(());
        };
        let Some(device) = view
            .disks
            .iter()
            .find(|d| d.pool == pool && d.volume == volume)
            .map(xml::disk)
        else {
            return Ok(());
        };
        let name = spec.node.name.clone();
        let live = state == DomainState::Running || state == DomainState::Paused;
        let d = device.clone();
        let n = name.clone();
        self.host
            .run(
                &format!("detaching data disk '{}' from '{name}'", disk.name),
                move |c| {
                    let dom = Domain::lookup_by_name(c, &n)?;
                    let mut flags = sys::VIR_DOMAIN_AFFECT_CONFIG;
                    if live {
                        flags |= sys::VIR_DOMAIN_AFFECT_LIVE;
                    }
                    dom.detach_device_flags(&d, flags)?;
                    Ok(())
                },
            )
            .await
            .map_err(lv)?;
        if !live {
            return Ok(());
        }
        // A live detach finishes when the guest lets go of the device.
        let deadline = Instant::now() + self.wait_timeout;
        loop {
            match self.owned(spec).await? {
                Some((view, _))
                    if view
                        .disks
                        .iter()
                        .any(|d| d.pool == pool && d.volume == volume) => {}
                _ => return Ok(()),
            }
            if Instant::now() >= deadline {
                return Err(error(format!(
                    "data disk '{}' is still attached to '{name}' {} s after the detach request: the guest did not release it",
                    disk.name,
                    self.wait_timeout.as_secs()
                )));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn destroy_disk(&self, _spec: &NodeSpec, disk: &DiskRecord) -> Result<()> {
        let (pool, volume) = split_disk_id(&disk.id)?;
        self.host
            .run(
                &format!("deleting volume '{volume}' of data disk '{}'", disk.name),
                move |c| delete_volume(c, &pool, &volume).map(|_| ()),
            )
            .await
            .map_err(lv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_addresses_are_stable_and_distinct() {
        let a = mac_address("p", "web01", "eth0");
        assert_eq!(a, mac_address("p", "web01", "eth0"));
        assert!(a.starts_with("52:54:00:"), "{a}");
        assert_eq!(a.len(), 17);
        assert_ne!(a, mac_address("p", "web01", "eth1"));
        assert_ne!(a, mac_address("p", "web02", "eth0"));
        assert_ne!(a, mac_address("q", "web01", "eth0"));
    }

    fn provider_and_specs(interfaces: &str) -> (Libvirt, Vec<NodeSpec>) {
        let text = format!(
            "name: p\ninfrastructures: {{kvm: {{type: libvirt, endpoint: 'qemu:///system', networks: {{lan: {{ip_pool: {{from: 10.0.2.10, to: 10.0.2.99}}, ip_netmask: 255.255.255.0, ip_defgw: 10.0.2.2}}, dyn: {{}}}}}}}}\n\
             nodes:\n  n1:\n    infrastructure: kvm\n    image: base.raw\n    \
             infrastructure_properties: {{domain_type: qemu, user_network_ssh: '127.0.80.9:2222'}}\n    interfaces: {interfaces}\n  \
             n2:\n    infrastructure: kvm\n    image: base.raw\n    interfaces: {{eth0: {{network: dyn, ip: dhcp}}}}\n"
        );
        let loaded = dop_core::load_str(&text, None, &dop_core::LookupSettings::default());
        let plan = loaded
            .plan
            .unwrap_or_else(|| panic!("{:?}", loaded.diagnostics));
        let options = ProviderOptions::new(std::path::PathBuf::from("/nonexistent"));
        let provider = Libvirt::new(&plan.infrastructures[0], "p", &options).unwrap();
        let specs = plan
            .nodes
            .iter()
            .map(|n| NodeSpec {
                plan: "p".into(),
                node: n.clone(),
                ssh_port: 22,
                credentials: Vec::new(),
                puppet_challenge: None,
            })
            .collect();
        (provider, specs)
    }

    #[test]
    fn the_test_attachment_forwards_to_the_first_static_address() {
        let (lv, specs) = provider_and_specs(
            "{eth0: {network: lan, ip: 10.0.2.33}, eth1: {network: dyn, ip: dhcp}}",
        );
        let nics = lv.nics(&specs[0]).unwrap();
        assert_eq!(nics.len(), 2);
        match &nics[0] {
            Nic::User {
                net,
                gateway,
                host,
                guest,
                ..
            } => {
                assert_eq!(net, "10.0.2.0/24");
                assert_eq!(gateway.map(|g| g.to_string()).as_deref(), Some("10.0.2.2"));
                assert_eq!(host.to_string(), "127.0.80.9:2222");
                assert_eq!(guest.to_string(), "10.0.2.33");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&nics[1], Nic::Network { network, .. } if network == "dyn"));
        assert_eq!(
            lv.fixed_ssh(&specs[0]),
            Some(SshEndpoint {
                address: "127.0.80.9".into(),
                port: 2222
            })
        );
        assert!(
            lv.check_node(&specs[0]).is_empty(),
            "{:?}",
            lv.check_node(&specs[0])
        );
        // A DHCP node is reached where libvirt's DHCP server leased it: nothing fixed.
        assert_eq!(lv.fixed_ssh(&specs[1]), None);
        assert!(lv.check_node(&specs[1]).is_empty());
        let mut no_image = specs[1].clone();
        no_image.node.image = None;
        let problems = lv.check_node(&no_image);
        assert!(
            problems.iter().any(|p| p.contains("needs an image")),
            "{problems:?}"
        );
    }

    #[test]
    fn the_test_attachment_needs_a_static_first_address() {
        let (lv, specs) = provider_and_specs("{eth0: {network: dyn, ip: dhcp}}");
        let problems = lv.check_node(&specs[0]);
        assert!(
            problems
                .iter()
                .any(|p| p.contains("forwards to the first interface's static address")),
            "{problems:?}"
        );
    }

    #[test]
    fn disk_targets_and_ids() {
        assert_eq!(target_name(0), "vda");
        assert_eq!(target_name(25), "vdz");
        assert_eq!(target_name(26), "vdaa");
        assert_eq!(
            split_disk_id("pool/p--n--data-d.qcow2").unwrap(),
            ("pool".into(), "p--n--data-d.qcow2".into())
        );
        assert!(split_disk_id("nopool").is_err());
    }
}
