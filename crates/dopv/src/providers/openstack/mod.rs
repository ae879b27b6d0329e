//! `openstack` (alias `rhos`): servers on an OpenStack cloud through its REST APIs. Keystone
//! v3 for the token and the catalog, Nova for servers, server groups and volume attachments,
//! Neutron for ports, security groups and floating IPs, Cinder for data disks, Glance for image
//! names.
//!
//! What dopv creates it marks, and it never touches what it did not create: servers carry the
//! metadata `dopv_plan`/`dopv_node`, ports and floating IPs the description
//! `dopv:<plan>/<node>`, volumes the metadata `dopv_plan`/`dopv_node`/`dopv_disk`. A server of
//! the node's name without the mark is a clash the node fails on.
//!
//! A create makes one port per plan interface (on the subnet the interface's `network` names,
//! with its fixed address and the node's security groups), the server on those ports with a
//! cloud-config for the host name and root's credentials, and the floating IPs; whatever a
//! failed create made is removed before the error is returned.

mod api;
mod session;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use dop_core::plan::{
    AffinityGroup, CredentialKind, DataDisk, Infrastructure, Interface, IpSetting, Plan,
};
use dop_run::logs::NodeLog;
use serde_json::{json, Value};

use self::api::{Api, Poll, Port, Server};
use self::session::{Login, Session};
use crate::actual::{Actual, ActualDisk, ActualInterface, Power, SshEndpoint};
use crate::provider::{ChangeKind, NodeSpec, Provider, ProviderError, ProviderOptions, Result};
use crate::state::DiskRecord;

/// The flavor a node without one gets, as in the original.
pub const DEFAULT_FLAVOR: &str = "m1.medium";
const GIB: u64 = 1 << 30;

/// The `openstack` provider of one infrastructure.
pub struct OpenStack {
    infrastructure: String,
    plan: String,
    tokens_url: String,
    credential: Option<(String, CredentialKind)>,
    affinity_groups: Vec<AffinityGroup>,
    /// The logins of the plan's nodes on this infrastructure, for [`Provider::check`].
    scopes: Vec<(String, String, String)>,
    sessions: Mutex<HashMap<(String, String, String), Arc<Session>>>,
    api_timeout: Duration,
    wait_timeout: Duration,
}

fn error(message: impl Into<String>) -> ProviderError {
    ProviderError::new(message)
}

/// The login scope of a node: (project, domain, catalog interface).
fn scope(spec: &NodeSpec) -> Result<(String, String, String)> {
    let p = &spec.node.infrastructure_properties;
    let project = p.tenant.clone().ok_or_else(|| {
        error("an openstack node needs infrastructure_properties.tenant (the project to create it in)")
    })?;
    Ok((
        project,
        p.domain_id.clone().unwrap_or_else(|| "default".into()),
        session::interface(p.endpoint_type.as_deref()),
    ))
}

fn marker(spec: &NodeSpec) -> String {
    format!("dopv:{}/{}", spec.plan, spec.node.name)
}

fn port_name(spec: &NodeSpec, interface: &Interface) -> String {
    format!("{}-{}", spec.node.name, interface.name)
}

fn flavor(spec: &NodeSpec) -> &str {
    spec.node.flavor.as_deref().unwrap_or(DEFAULT_FLAVOR)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

/// Interfaces compared without their floating IPs: equal means only floating IPs differ.
fn without_floating(v: &Value) -> Value {
    match v {
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| match i {
                    Value::Object(m) => {
                        let mut m = m.clone();
                        m.remove("floating_network");
                        Value::Object(m)
                    }
                    other => other.clone(),
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

impl OpenStack {
    /// The provider for `infrastructure`; nothing is sent until a node needs it.
    pub fn new(
        infrastructure: &Infrastructure,
        plan: &Plan,
        plan_name: &str,
        options: &ProviderOptions,
    ) -> Result<OpenStack> {
        let name = &infrastructure.name;
        let endpoint = infrastructure.endpoint.as_deref().ok_or_else(|| {
            error(format!(
                "infrastructure '{name}': an openstack infrastructure needs an endpoint (its Keystone URL)"
            ))
        })?;
        let credential = infrastructure.credentials.as_ref().and_then(|c| {
            plan.credentials
                .iter()
                .find(|p| &p.name == c)
                .map(|p| (p.name.clone(), p.kind.clone()))
        });
        let mut scopes = Vec::new();
        for node in plan.nodes.iter().filter(|n| &n.infrastructure == name) {
            let spec = NodeSpec {
                plan: plan_name.to_string(),
                node: node.clone(),
                ssh_port: 22,
                credentials: Vec::new(),
                puppet_challenge: None,
            };
            if let Ok(s) = scope(&spec) {
                if !scopes.contains(&s) {
                    scopes.push(s);
                }
            }
        }
        Ok(OpenStack {
            infrastructure: name.clone(),
            plan: plan_name.to_string(),
            tokens_url: session::tokens_url(endpoint),
            credential,
            affinity_groups: infrastructure.affinity_groups.clone(),
            scopes,
            sessions: Mutex::new(HashMap::new()),
            api_timeout: options.api_timeout,
            wait_timeout: options.wait_timeout,
        })
    }

    fn session(&self, scope: &(String, String, String)) -> Result<Arc<Session>> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = sessions.get(scope) {
            return Ok(s.clone());
        }
        let (user, password) = match &self.credential {
            Some((name, CredentialKind::UsernamePassword { username, password })) => (
                username.clone(),
                password
                    .load()
                    .map_err(|e| error(format!("credential '{name}': {e}")))?,
            ),
            Some((name, _)) => {
                return Err(error(format!(
                    "infrastructure '{}': the credential '{name}' must be of type username_password to log in to OpenStack",
                    self.infrastructure
                )))
            }
            None => {
                return Err(error(format!(
                    "infrastructure '{}': an openstack infrastructure needs credentials (a username_password credential)",
                    self.infrastructure
                )))
            }
        };
        let login = Login {
            tokens_url: self.tokens_url.clone(),
            user,
            password,
            project: scope.0.clone(),
            domain: scope.1.clone(),
            interface: scope.2.clone(),
        };
        let session =
            Arc::new(Session::new(login, self.api_timeout).map_err(|e| error(e.to_string()))?);
        sessions.insert(scope.clone(), session.clone());
        Ok(session)
    }

    fn node_session(&self, spec: &NodeSpec) -> Result<Arc<Session>> {
        self.session(&scope(spec)?)
    }

    fn api<'a>(&self, session: &'a Session) -> Api<'a> {
        Api {
            session,
            wait_timeout: self.wait_timeout,
        }
    }

    /// The node's server: the one with its name that dopv marked as this plan's node.
    async fn server(&self, api: &Api<'_>, spec: &NodeSpec) -> Result<Option<Server>> {
        let named = api
            .servers_named(&spec.node.name)
            .await
            .map_err(|e| error(e.to_string()))?;
        Ok(named.into_iter().find(|s| self.owns(s, spec)))
    }

    fn owns(&self, server: &Server, spec: &NodeSpec) -> bool {
        server.metadata.get("dopv_plan").and_then(Value::as_str) == Some(self.plan.as_str())
            && server.metadata.get("dopv_node").and_then(Value::as_str)
                == Some(spec.node.name.as_str())
    }

    /// The ports dopv made for the node (attached or not).
    async fn ports(&self, api: &Api<'_>, spec: &NodeSpec) -> Result<Vec<Port>> {
        let mark = marker(spec);
        let ports = api
            .ports(&[("description", &mark)])
            .await
            .map_err(|e| error(e.to_string()))?;
        Ok(ports
            .into_iter()
            .filter(|p| p.description == mark)
            .collect())
    }

    async fn wait_status(
        &self,
        api: &Api<'_>,
        spec: &NodeSpec,
        id: &str,
        wanted: &[&str],
    ) -> Result<Server> {
        let what = format!("the server '{}' ({id})", spec.node.name);
        api.wait(&what, &wanted.join(" or "), || async {
            match api.server(id).await.map_err(|e| e.to_string())? {
                None => Err(format!("{what} is gone")),
                Some(s) if wanted.contains(&s.status.as_str()) => Ok(Poll::Done(s)),
                Some(s) if s.status == "ERROR" => Err(format!(
                    "{what} went into ERROR: {}",
                    s.fault.as_deref().unwrap_or("OpenStack gave no reason")
                )),
                Some(s) => Ok(Poll::Status(s.status)),
            }
        })
        .await
        .map_err(error)
    }

    async fn wait_gone(&self, api: &Api<'_>, spec: &NodeSpec, id: &str) -> Result<()> {
        let what = format!("the server '{}' ({id})", spec.node.name);
        api.wait(&what, "deleted", || async {
            match api.server(id).await.map_err(|e| e.to_string())? {
                None => Ok(Poll::Done(())),
                Some(s) if s.status == "ERROR" => Err(format!(
                    "{what} went into ERROR while being deleted: {}",
                    s.fault.as_deref().unwrap_or("OpenStack gave no reason")
                )),
                Some(s) => Ok(Poll::Status(s.status)),
            }
        })
        .await
        .map_err(error)
    }

    async fn wait_volume(
        &self,
        api: &Api<'_>,
        what: &str,
        id: &str,
        wanted: &str,
    ) -> Result<api::Volume> {
        api.wait(what, wanted, || async {
            match api.volume(id).await.map_err(|e| e.to_string())? {
                None => Err(format!("{what} is gone")),
                Some(v) if v.status == wanted => Ok(Poll::Done(v)),
                Some(v) if v.status.starts_with("error") => {
                    Err(format!("{what} went into status '{}'", v.status))
                }
                Some(v) => Ok(Poll::Status(v.status)),
            }
        })
        .await
        .map_err(error)
    }

    /// Removes what a create made, after it failed; what cannot be removed is logged (the
    /// driver's rollback destroys the node again, and finds it by its marks).
    async fn clean_up(&self, api: &Api<'_>, spec: &NodeSpec, made: &Made, log: &NodeLog) {
        for fip in &made.floating_ips {
            if let Err(e) = api.delete_floating_ip(fip).await {
                log.line(&format!("openstack: cleanup: floating IP {fip}: {e}"));
            }
        }
        if let Some(id) = &made.server {
            let gone = match api.delete_server(id).await {
                Ok(()) => self.wait_gone(api, spec, id).await,
                Err(e) => Err(error(e.to_string())),
            };
            if let Err(e) = gone {
                log.line(&format!("openstack: cleanup: server {id}: {e}"));
            }
        }
        for port in &made.ports {
            if let Err(e) = api.delete_port(port).await {
                log.line(&format!("openstack: cleanup: port {port}: {e}"));
            }
        }
        log.line(&format!(
            "openstack: removed what the failed create made ({} port(s), {} server, {} floating IP(s))",
            made.ports.len(),
            usize::from(made.server.is_some()),
            made.floating_ips.len()
        ));
    }

    async fn build(
        &self,
        api: &Api<'_>,
        spec: &NodeSpec,
        made: &mut Made,
        log: &NodeLog,
    ) -> Result<()> {
        let node = &spec.node;
        let started = Instant::now();
        let image = node
            .image
            .as_deref()
            .ok_or_else(|| error("an openstack node needs an image"))?;
        let image_id = api.image_id(image).await.map_err(error)?;
        let flavor_id = api.flavor_id(flavor(spec)).await.map_err(error)?;
        let groups = &node.infrastructure_properties.security_groups;
        let group_ids = if groups.is_empty() {
            Vec::new()
        } else {
            api.security_group_ids(groups).await.map_err(error)?
        };
        let server_group = match node.infrastructure_properties.affinity_groups.first() {
            Some(name) => {
                let group = self
                    .affinity_groups
                    .iter()
                    .find(|g| &g.name == name)
                    .ok_or_else(|| {
                        error(format!(
                            "no affinity group '{name}' in infrastructure '{}'",
                            self.infrastructure
                        ))
                    })?;
                let policy = match (group.positive, group.enforce) {
                    (true, true) => "affinity",
                    (true, false) => "soft-affinity",
                    (false, true) => "anti-affinity",
                    (false, false) => "soft-anti-affinity",
                };
                Some(api.server_group(name, policy).await.map_err(error)?)
            }
            None => None,
        };
        let user_data = crate::providers::cloudinit::cloud_config(spec).map_err(error)?;
        let mark = marker(spec);

        let mut networks = Vec::new();
        for interface in &node.interfaces {
            let subnet = api
                .subnet(&interface.network)
                .await
                .map_err(|e| error(format!("interface {}: {e}", interface.name)))?;
            let mut fixed = json!({"subnet_id": subnet.id});
            if let IpSetting::Static(ip) = interface.ip {
                fixed["ip_address"] = json!(ip.to_string());
            }
            let mut body = json!({"port": {
                "network_id": subnet.network_id,
                "name": port_name(spec, interface),
                "description": mark,
                "fixed_ips": [fixed],
            }});
            if !group_ids.is_empty() {
                body["port"]["security_groups"] = json!(group_ids);
            }
            let port = api
                .create_port(&body)
                .await
                .map_err(|e| error(format!("interface {}: {e}", interface.name)))?;
            made.ports.push(port.id.clone());
            let address = port
                .fixed_ips
                .first()
                .map(|f| f.1.clone())
                .unwrap_or_default();
            log.line(&format!(
                "openstack: port {} ({}) on {} with {address}",
                port_name(spec, interface),
                port.id,
                interface.network
            ));
            networks.push(json!({"port": port.id}));
        }

        let mut server = json!({"server": {
            "name": node.name,
            "imageRef": image_id,
            "flavorRef": flavor_id,
            "networks": networks,
            "user_data": base64::engine::general_purpose::STANDARD.encode(user_data),
            "config_drive": node.infrastructure_properties.use_config_drive.unwrap_or(false),
            "metadata": {"dopv_plan": self.plan, "dopv_node": node.name},
        }});
        if let Some(tags) = node.tags.as_ref().filter(|t| !t.is_empty()) {
            server["server"]["tags"] = json!(tags);
        }
        if let Some(group) = server_group {
            server["os:scheduler_hints"] = json!({"group": group});
        }
        let id = api
            .create_server(&server)
            .await
            .map_err(|e| error(e.to_string()))?;
        made.server = Some(id.clone());
        log.line(&format!(
            "openstack: server {id} created, waiting for ACTIVE"
        ));
        self.wait_status(api, spec, &id, &["ACTIVE"]).await?;
        log.line(&format!(
            "openstack: server {id} ACTIVE after {:.1} s",
            started.elapsed().as_secs_f64()
        ));

        let ports = self.ports(api, spec).await?;
        for interface in &node.interfaces {
            if let Some(network) = &interface.floating_network {
                let fip = self
                    .add_floating_ip(api, spec, &ports, interface, network)
                    .await?;
                made.floating_ips.push(fip);
            }
        }
        Ok(())
    }

    async fn add_floating_ip(
        &self,
        api: &Api<'_>,
        spec: &NodeSpec,
        ports: &[Port],
        interface: &Interface,
        network: &str,
    ) -> Result<String> {
        let name = port_name(spec, interface);
        let port = ports.iter().find(|p| p.name == name).ok_or_else(|| {
            error(format!(
                "interface {}: its port {name} is missing",
                interface.name
            ))
        })?;
        let network_id = api.network_id(network).await.map_err(|e| {
            error(format!(
                "interface {}: floating network: {e}",
                interface.name
            ))
        })?;
        let fip = api
            .create_floating_ip(&network_id, &port.id, &marker(spec))
            .await
            .map_err(|e| error(format!("interface {}: floating IP: {e}", interface.name)))?;
        Ok(fip.id)
    }

    async fn sync_floating_ips(&self, api: &Api<'_>, spec: &NodeSpec, log: &NodeLog) -> Result<()> {
        let ports = self.ports(api, spec).await?;
        for interface in &spec.node.interfaces {
            let name = port_name(spec, interface);
            let Some(port) = ports.iter().find(|p| p.name == name) else {
                continue;
            };
            let existing = api
                .floating_ips(&port.id)
                .await
                .map_err(|e| error(e.to_string()))?;
            let wanted = match &interface.floating_network {
                Some(n) => Some(api.network_id(n).await.map_err(error)?),
                None => None,
            };
            for fip in &existing {
                if wanted.as_deref() != Some(fip.network_id.as_str()) {
                    api.delete_floating_ip(&fip.id)
                        .await
                        .map_err(|e| error(e.to_string()))?;
                    log.line(&format!(
                        "openstack: floating IP {} removed from {}",
                        fip.address, interface.name
                    ));
                }
            }
            if let (Some(network), Some(network_id)) = (&interface.floating_network, &wanted) {
                if !existing.iter().any(|f| &f.network_id == network_id) {
                    let id = self
                        .add_floating_ip(api, spec, &ports, interface, network)
                        .await?;
                    log.line(&format!(
                        "openstack: floating IP {id} from {network} added to {}",
                        interface.name
                    ));
                }
            }
        }
        Ok(())
    }

    async fn resize(&self, api: &Api<'_>, spec: &NodeSpec, log: &NodeLog) -> Result<()> {
        let server = self
            .server(api, spec)
            .await?
            .ok_or_else(|| error("the server does not exist"))?;
        let wanted = flavor(spec);
        if server.flavor.as_deref() == Some(wanted) {
            return Ok(());
        }
        let flavor_id = api.flavor_id(wanted).await.map_err(error)?;
        api.server_action(&server.id, &json!({"resize": {"flavorRef": flavor_id}}))
            .await
            .map_err(|e| error(e.to_string()))?;
        log.line(&format!("openstack: resizing to {wanted}"));
        // Right after the request the server may still say ACTIVE with the old flavor: done
        // is VERIFY_RESIZE, or running on the new flavor (clouds that confirm by themselves).
        let what = format!("the server '{}' ({})", spec.node.name, server.id);
        let resized = api
            .wait(&what, "resized", || async {
                match api.server(&server.id).await.map_err(|e| e.to_string())? {
                    None => Err(format!("{what} is gone")),
                    Some(s) if s.status == "VERIFY_RESIZE" => Ok(Poll::Done(s)),
                    Some(s) if s.status == "ERROR" => Err(format!(
                        "{what} went into ERROR while resizing: {}",
                        s.fault.as_deref().unwrap_or("OpenStack gave no reason")
                    )),
                    Some(s)
                        if matches!(s.status.as_str(), "ACTIVE" | "SHUTOFF")
                            && s.flavor.as_deref() == Some(wanted) =>
                    {
                        Ok(Poll::Done(s))
                    }
                    Some(s) => Ok(Poll::Status(s.status)),
                }
            })
            .await
            .map_err(error)?;
        if resized.status == "VERIFY_RESIZE" {
            api.server_action(&server.id, &json!({"confirmResize": null}))
                .await
                .map_err(|e| error(e.to_string()))?;
            self.wait_status(api, spec, &server.id, &["ACTIVE", "SHUTOFF"])
                .await?;
        }
        log.line(&format!("openstack: resized to {wanted}"));
        Ok(())
    }

    async fn set_security_groups(
        &self,
        api: &Api<'_>,
        spec: &NodeSpec,
        log: &NodeLog,
    ) -> Result<()> {
        let groups = &spec.node.infrastructure_properties.security_groups;
        if groups.is_empty() {
            // As in the original: no list in the plan leaves the server's groups alone.
            log.line(
                "openstack: the plan names no security groups; the server's are left as they are",
            );
            return Ok(());
        }
        let ids = api.security_group_ids(groups).await.map_err(error)?;
        for port in self.ports(api, spec).await? {
            api.set_port_security_groups(&port.id, &ids)
                .await
                .map_err(|e| error(e.to_string()))?;
        }
        log.line(&format!(
            "openstack: security groups set to {}",
            groups.join(", ")
        ));
        Ok(())
    }

    async fn read_server(&self, api: &Api<'_>, spec: &NodeSpec, server: Server) -> Result<Actual> {
        let e = |e: session::ApiError| error(e.to_string());
        let node = &spec.node;
        let image = if server.image_id.is_empty() {
            None
        } else if node.image.as_deref() == Some(server.image_id.as_str()) {
            Some(server.image_id.clone())
        } else {
            Some(api.image_name(&server.image_id).await.map_err(e)?)
        };
        let ports = self.ports(api, spec).await?;
        let mut interfaces = Vec::new();
        let mut ssh = None;
        let mut group_ids = Vec::new();
        for interface in &node.interfaces {
            let name = port_name(spec, interface);
            let Some(port) = ports.iter().find(|p| p.name == name) else {
                continue;
            };
            group_ids.extend(port.security_groups.iter().cloned());
            let fixed = port.fixed_ips.first().map(|f| f.1.clone());
            let fips = api.floating_ips(&port.id).await.map_err(e)?;
            let floating_network = match fips.first() {
                Some(f) if interface.floating_network.as_deref() == Some(f.network_id.as_str()) => {
                    Some(f.network_id.clone())
                }
                Some(f) => Some(api.network_name(&f.network_id).await.map_err(e)?),
                None => None,
            };
            if ssh.is_none() {
                ssh = fips
                    .first()
                    .map(|f| f.address.clone())
                    .or_else(|| fixed.clone());
            }
            interfaces.push(ActualInterface {
                name: interface.name.clone(),
                ip: match interface.ip {
                    IpSetting::Static(_) => fixed.unwrap_or_else(|| "none".into()),
                    IpSetting::Dhcp => "dhcp".into(),
                    IpSetting::None => "none".into(),
                },
                floating_network,
            });
        }
        let security_groups = sorted(
            api.security_group_names(&sorted(group_ids))
                .await
                .map_err(e)?,
        );
        let mut disks = Vec::new();
        for id in api.attached_volumes(&server.id).await.map_err(e)? {
            if let Some(v) = api.volume(&id).await.map_err(e)? {
                let name = v
                    .metadata
                    .get("dopv_disk")
                    .and_then(Value::as_str)
                    .unwrap_or(&id)
                    .to_string();
                disks.push(ActualDisk {
                    name,
                    size: dop_core::DataSize(v.size_gib * GIB),
                });
            }
        }
        disks.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Actual {
            exists: true,
            power: match server.status.as_str() {
                "ACTIVE" => Some(Power::On),
                "SHUTOFF" | "STOPPED" | "SUSPENDED" | "PAUSED" | "SHELVED"
                | "SHELVED_OFFLOADED" => Some(Power::Off),
                _ => None,
            },
            image,
            flavor: server.flavor.clone(),
            interfaces: Some(interfaces),
            disks: Some(disks),
            tags: node.tags.as_ref().map(|_| sorted(server.tags.clone())),
            security_groups: (!node.infrastructure_properties.security_groups.is_empty())
                .then_some(security_groups),
            ssh: ssh.map(|address| SshEndpoint {
                address,
                port: spec.ssh_port,
            }),
            ..Actual::default()
        })
    }
}

/// What a create made so far, for its cleanup.
#[derive(Default)]
struct Made {
    ports: Vec<String>,
    server: Option<String>,
    floating_ips: Vec<String>,
}

#[async_trait]
impl Provider for OpenStack {
    async fn check(&self) -> Result<()> {
        for scope in &self.scopes {
            let session = self.session(scope)?;
            session
                .authenticate()
                .await
                .map_err(|e| error(e.to_string()))?;
            for service in [
                session::Service::Compute,
                session::Service::Network,
                session::Service::Image,
            ] {
                if !session
                    .has(service)
                    .await
                    .map_err(|e| error(e.to_string()))?
                {
                    return Err(error(format!(
                        "the service catalog of project '{}' has no {service} endpoint with interface '{}'",
                        scope.0, scope.2
                    )));
                }
            }
        }
        Ok(())
    }

    fn check_node(&self, spec: &NodeSpec) -> Vec<String> {
        let node = &spec.node;
        let mut problems = Vec::new();
        if let Err(e) = scope(spec) {
            problems.push(e.to_string());
        }
        if node.image.is_none() {
            problems
                .push("an openstack node needs an image (the name or id of a Glance image)".into());
        }
        if node.interfaces.is_empty() {
            problems.push(
                "an openstack node needs at least one interface (its network: a subnet's name or id)".into(),
            );
        }
        for disk in &node.disks {
            if disk.size.bytes() % GIB != 0 || disk.size.bytes() == 0 {
                problems.push(format!(
                    "disks.{}: OpenStack volumes are sized in whole GiB; {} bytes is not",
                    disk.name,
                    disk.size.bytes()
                ));
            }
        }
        let groups = &node.infrastructure_properties.affinity_groups;
        if groups.len() > 1 {
            problems.push(format!(
                "infrastructure_properties.affinity_groups: OpenStack puts a server in at most one server group; the node names {}",
                groups.len()
            ));
        }
        for g in groups {
            if !self.affinity_groups.iter().any(|a| &a.name == g) {
                problems.push(format!(
                    "infrastructure_properties.affinity_groups: '{g}' is not an affinity group of infrastructure '{}'",
                    self.infrastructure
                ));
            }
        }
        problems
    }

    fn expected(&self, spec: &NodeSpec) -> Actual {
        let node = &spec.node;
        let disks = ActualDisk::planned(&node.disks);
        let groups = &node.infrastructure_properties.security_groups;
        Actual {
            exists: true,
            power: Some(Power::On),
            image: node.image.clone(),
            flavor: Some(flavor(spec).to_string()),
            interfaces: Some(ActualInterface::planned(&spec.node.interfaces)),
            disks: Some(disks),
            tags: node.tags.clone().map(sorted),
            security_groups: (!groups.is_empty()).then(|| sorted(groups.clone())),
            ..Actual::default()
        }
    }

    async fn read(&self, spec: &NodeSpec) -> Result<Actual> {
        let session = self.node_session(spec)?;
        let api = self.api(&session);
        let Some(server) = self.server(&api, spec).await? else {
            return Ok(Actual::default());
        };
        let id = server.id.clone();
        match self.read_server(&api, spec, server).await {
            Ok(actual) => Ok(actual),
            // Deleted while it was being read (a delete dopv asked for earlier may finish
            // only now): it is gone, not unreadable.
            Err(e) => match api.server(&id).await {
                Ok(None) => Ok(Actual::default()),
                _ => Err(e),
            },
        }
    }

    async fn create(&self, spec: &NodeSpec, log: &NodeLog) -> Result<()> {
        let session = self.node_session(spec)?;
        let api = self.api(&session);
        let named = api
            .servers_named(&spec.node.name)
            .await
            .map_err(|e| error(e.to_string()))?;
        if let Some(other) = named.iter().find(|s| !self.owns(s, spec)) {
            return Err(error(format!(
                "a server named '{}' ({}) exists in project '{}' that dopv did not create for plan '{}': dopv never touches it; rename the node or remove that server",
                spec.node.name,
                other.id,
                session.project(),
                self.plan
            )));
        }
        if let Some(ours) = named.first() {
            return Err(error(format!(
                "the server '{}' ({}) exists already",
                spec.node.name, ours.id
            )));
        }
        let mut made = Made::default();
        let built = self.build(&api, spec, &mut made, log).await;
        if let Err(e) = built {
            self.clean_up(&api, spec, &made, log).await;
            return Err(e);
        }
        Ok(())
    }

    async fn destroy(&self, spec: &NodeSpec, log: &NodeLog) -> Result<()> {
        let session = self.node_session(spec)?;
        let api = self.api(&session);
        let server = self.server(&api, spec).await?;
        let ports = self.ports(&api, spec).await?;
        for port in &ports {
            for fip in api
                .floating_ips(&port.id)
                .await
                .map_err(|e| error(e.to_string()))?
            {
                api.delete_floating_ip(&fip.id)
                    .await
                    .map_err(|e| error(e.to_string()))?;
                log.line(&format!("openstack: floating IP {} deleted", fip.address));
            }
        }
        if let Some(server) = &server {
            api.delete_server(&server.id)
                .await
                .map_err(|e| error(e.to_string()))?;
            self.wait_gone(&api, spec, &server.id).await?;
            log.line(&format!("openstack: server {} deleted", server.id));
        }
        for port in &ports {
            api.delete_port(&port.id)
                .await
                .map_err(|e| error(e.to_string()))?;
            log.line(&format!(
                "openstack: port {} ({}) deleted",
                port.name, port.id
            ));
        }
        Ok(())
    }

    async fn power(&self, spec: &NodeSpec, on: bool, log: &NodeLog) -> Result<()> {
        let session = self.node_session(spec)?;
        let api = self.api(&session);
        let server = self
            .server(&api, spec)
            .await?
            .ok_or_else(|| error("the server does not exist"))?;
        let (wanted, action) = if on {
            ("ACTIVE", "os-start")
        } else {
            ("SHUTOFF", "os-stop")
        };
        if server.status == wanted {
            return Ok(());
        }
        api.server_action(&server.id, &json!({ action: null }))
            .await
            .map_err(|e| error(e.to_string()))?;
        self.wait_status(&api, spec, &server.id, &[wanted]).await?;
        log.line(&format!("openstack: server {} {wanted}", server.id));
        Ok(())
    }

    fn change_kind(&self, field: &str) -> ChangeKind {
        match field {
            "disks" | "power" | "tags" | "security_groups" | "ssh_port" => ChangeKind::InPlace,
            "infrastructure_properties.security_groups"
            | "infrastructure_properties.endpoint_type" => ChangeKind::InPlace,
            // Not used by this provider: recorded.
            "timezone" | "product_id" | "organization_name" => ChangeKind::InPlace,
            // A resize restarts the server.
            "flavor" => ChangeKind::Reboot,
            // Host name, credentials and DNS are first-boot settings; image, addresses,
            // project and server group are fixed at create.
            _ => ChangeKind::Redeploy,
        }
    }

    fn change_kind_of(&self, field: &str, from: &Value, to: &Value) -> ChangeKind {
        if field == "interfaces" && without_floating(from) == without_floating(to) {
            return ChangeKind::InPlace;
        }
        self.change_kind(field)
    }

    async fn apply(&self, spec: &NodeSpec, field: &str, log: &NodeLog) -> Result<()> {
        let session = self.node_session(spec)?;
        let api = self.api(&session);
        match field {
            "flavor" => self.resize(&api, spec, log).await,
            "security_groups" | "infrastructure_properties.security_groups" => {
                self.set_security_groups(&api, spec, log).await
            }
            "interfaces" => self.sync_floating_ips(&api, spec, log).await,
            "tags" => {
                let server = self
                    .server(&api, spec)
                    .await?
                    .ok_or_else(|| error("the server does not exist"))?;
                let tags = spec.node.tags.clone().unwrap_or_default();
                api.set_tags(&server.id, &tags)
                    .await
                    .map_err(|e| error(e.to_string()))?;
                log.line(&format!("openstack: tags set to [{}]", tags.join(", ")));
                Ok(())
            }
            other => {
                log.line(&format!(
                    "openstack: '{other}' recorded (nothing to change on the server)"
                ));
                Ok(())
            }
        }
    }

    async fn add_disk(&self, spec: &NodeSpec, disk: &DataDisk) -> Result<DiskRecord> {
        let session = self.node_session(spec)?;
        let api = self.api(&session);
        let size_gib = disk.size.bytes() / GIB;
        let mut body = json!({"volume": {
            "size": size_gib,
            "name": format!("{}-{}", spec.node.name, disk.name),
            "description": marker(spec),
            "metadata": {"dopv_plan": self.plan, "dopv_node": spec.node.name, "dopv_disk": disk.name},
        }});
        if let Some(pool) = &disk.pool {
            body["volume"]["volume_type"] = json!(pool);
        }
        let id = api
            .create_volume(&body)
            .await
            .map_err(|e| error(format!("data disk '{}': {e}", disk.name)))?;
        let what = format!("the volume of data disk '{}' ({id})", disk.name);
        if let Err(e) = self.wait_volume(&api, &what, &id, "available").await {
            // Never leave a volume the disk DB does not know.
            let _ = api.delete_volume(&id).await;
            return Err(e);
        }
        Ok(DiskRecord {
            name: disk.name.clone(),
            id,
            pool: disk.pool.clone(),
            size: size_gib * GIB,
            node: spec.node.name.clone(),
        })
    }

    async fn attach_disk(&self, spec: &NodeSpec, disk: &DiskRecord) -> Result<()> {
        let session = self.node_session(spec)?;
        let api = self.api(&session);
        let server = self
            .server(&api, spec)
            .await?
            .ok_or_else(|| error("the server does not exist"))?;
        let what = format!("the volume of data disk '{}' ({})", disk.name, disk.id);
        let volume = api
            .volume(&disk.id)
            .await
            .map_err(|e| error(e.to_string()))?
            .ok_or_else(|| {
                error(format!(
                    "{what} is gone from the cloud; the disk DB still has it"
                ))
            })?;
        if volume.attached_to.contains(&server.id) {
            return Ok(());
        }
        if let Some(other) = volume.attached_to.first() {
            return Err(error(format!(
                "{what} is attached to another server ({other})"
            )));
        }
        api.attach_volume(&server.id, &disk.id)
            .await
            .map_err(|e| error(format!("{what}: {e}")))?;
        self.wait_volume(&api, &what, &disk.id, "in-use").await?;
        Ok(())
    }

    async fn detach_disk(&self, spec: &NodeSpec, disk: &DiskRecord) -> Result<()> {
        let session = self.node_session(spec)?;
        let api = self.api(&session);
        let what = format!("the volume of data disk '{}' ({})", disk.name, disk.id);
        let Some(volume) = api
            .volume(&disk.id)
            .await
            .map_err(|e| error(e.to_string()))?
        else {
            return Ok(());
        };
        let Some(server) = self.server(&api, spec).await? else {
            return Ok(());
        };
        if !volume.attached_to.contains(&server.id) {
            return Ok(());
        }
        api.detach_volume(&server.id, &disk.id)
            .await
            .map_err(|e| error(format!("{what}: {e}")))?;
        self.wait_volume(&api, &what, &disk.id, "available").await?;
        Ok(())
    }

    async fn destroy_disk(&self, spec: &NodeSpec, disk: &DiskRecord) -> Result<()> {
        let session = self.node_session(spec)?;
        let api = self.api(&session);
        api.delete_volume(&disk.id)
            .await
            .map_err(|e| error(format!("data disk '{}' ({}): {e}", disk.name, disk.id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_floating_ip_change_is_in_place() {
        let from = json!([{"name": "eth0", "network": "sub", "ip": "10.0.0.5"}]);
        let fip = json!([{"name": "eth0", "network": "sub", "ip": "10.0.0.5", "floating_network": "public"}]);
        let moved = json!([{"name": "eth0", "network": "sub", "ip": "10.0.0.6"}]);
        let provider = test_provider();
        assert_eq!(
            provider.change_kind_of("interfaces", &from, &fip),
            ChangeKind::InPlace
        );
        assert_eq!(
            provider.change_kind_of("interfaces", &fip, &from),
            ChangeKind::InPlace
        );
        assert_eq!(
            provider.change_kind_of("interfaces", &from, &moved),
            ChangeKind::Redeploy
        );
        assert_eq!(provider.change_kind("flavor"), ChangeKind::Reboot);
        assert_eq!(
            provider.change_kind("infrastructure_properties.security_groups"),
            ChangeKind::InPlace
        );
        assert_eq!(
            provider.change_kind("infrastructure_properties.tenant"),
            ChangeKind::Redeploy
        );
        assert_eq!(provider.change_kind("image"), ChangeKind::Redeploy);
    }

    fn test_provider() -> OpenStack {
        let text = "name: p\ninfrastructures: {os: {type: openstack, endpoint: 'http://127.0.0.1:1', credentials: api, networks: {sub: {ip_pool: {from: 10.0.0.2, to: 10.0.0.250}, ip_netmask: 255.255.255.0, ip_defgw: 10.0.0.1}}}}\n\
            credentials:\n  api: {type: username_password, username: dop, password: x}\n\
            nodes:\n  web01:\n    infrastructure: os\n    image: img\n\
            \x20   infrastructure_properties: {tenant: demo}\n\
            \x20   interfaces: {eth0: {network: sub, ip: 10.0.0.5}}\n\
            \x20   disks: {data: {size: 1500M}}\n";
        let loaded = dop_core::load_str(text, None, &dop_core::LookupSettings::default());
        let plan = loaded.plan.expect("a valid plan");
        OpenStack::new(
            &plan.infrastructures[0],
            &plan,
            "p",
            &ProviderOptions::new("/nonexistent".into()),
        )
        .unwrap()
    }

    #[test]
    fn node_checks_name_what_openstack_cannot_make() {
        let provider = test_provider();
        let text = "name: p\ninfrastructures: {os: {type: openstack, endpoint: 'http://127.0.0.1:1', credentials: api, networks: {sub: {ip_pool: {from: 10.0.0.2, to: 10.0.0.250}, ip_netmask: 255.255.255.0, ip_defgw: 10.0.0.1}}}}\n\
            credentials:\n  api: {type: username_password, username: dop, password: x}\n\
            nodes:\n  web01:\n    infrastructure: os\n    image: img\n\
            \x20   infrastructure_properties: {tenant: demo}\n\
            \x20   interfaces: {eth0: {network: sub, ip: 10.0.0.5}}\n\
            \x20   disks: {data: {size: 1500M}}\n";
        let plan = dop_core::load_str(text, None, &dop_core::LookupSettings::default())
            .plan
            .unwrap();
        let spec = NodeSpec {
            plan: "p".into(),
            node: plan.nodes[0].clone(),
            ssh_port: 22,
            credentials: Vec::new(),
            puppet_challenge: None,
        };
        let problems = provider.check_node(&spec);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("whole GiB"), "{problems:?}");
    }

    #[tokio::test]
    async fn an_unreachable_keystone_is_a_clear_error() {
        // Port 1 on loopback: nothing listens, the connection is refused at once.
        let provider = test_provider();
        let error = provider.check().await.unwrap_err().to_string();
        assert!(
            error.contains("cannot reach Keystone at http://127.0.0.1:1/v3/auth/tokens"),
            "{error}"
        );
    }
}
