//! What the tests find in the stack: the service catalog, projects, users and roles in
//! Keystone, quotas, flavors, the image, networks, the router and security groups (each made
//! only when missing) through the REST client of the stack's APIs, and the `testbed.json` and
//! rc files that describe them.

use std::fs;
use std::io::Read;
use std::time::Duration;

use dop_testbed::openstack::{SERVICES, TESTBED_JSON};
use serde_json::{json, Value};

use crate::host::write;

use super::{Stack, CINDER, GLANCE, KEYSTONE, NEUTRON, NOVA, PLACEMENT};

/// The service catalog: name, type, URL (the same for the public, internal and admin endpoints).
const CATALOG: &[(&str, &str, &str)] = &[
    ("placement", "placement", PLACEMENT),
    ("nova", "compute", NOVA),
    ("neutron", "network", "http://127.0.0.1:9696"),
    ("glance", "image", "http://127.0.0.1:9292"),
    (
        "cinderv3",
        "volumev3",
        "http://127.0.0.1:8776/v3/%(project_id)s",
    ),
];

impl Stack {
    /// Projects, users, quotas, flavors, the image, networks, the router and security groups:
    /// what the tests expect (each made only when missing).
    pub(super) fn seed(&self) -> Result<(), String> {
        let api = Api::login("admin", "admin", "admin")?;
        let member = role(&api, "member")?;
        let demo = project(&api, "demo")?;
        grant(&api, &demo, &user(&api, "demo", "demo", &demo)?, &member)?;
        let quota = project(&api, "dop-quota")?;
        grant(
            &api,
            &quota,
            &user(&api, "dop-quota", "dop-quota", &quota)?,
            &member,
        )?;
        // dop-quota may start no server ("quota exceeded"); the demo project gets room for
        // the tests' fleets and leftovers (Nova's default is 10 servers, 20 vCPUs).
        api.put(
            &format!("{NOVA}/os-quota-sets/{quota}"),
            &json!({"quota_set": {"instances": 0}}),
        )?;
        api.put(
            &format!("{NOVA}/os-quota-sets/{demo}"),
            &json!({"quota_set": {"instances": 100, "cores": 200, "ram": 409_600}}),
        )?;
        api.put(
            &format!("{CINDER}/{}/os-quota-sets/{demo}", api.project_id),
            &json!({"quota_set": {"volumes": 100, "gigabytes": 10_000, "snapshots": 100}}),
        )?;

        let flavors = api.get(&format!("{NOVA}/flavors?is_public=None"))?;
        for (name, vcpus, ram, disk) in [
            ("m1.tiny", 1, 512, 1),
            ("m1.small", 1, 2048, 10),
            ("m1.medium", 2, 4096, 10),
            // More disk than the fake compute host has: the scheduler finds no host and the
            // server goes to ERROR (the provider's test of that fault).
            ("m1.nohost", 1, 512, 2_000_000),
        ] {
            if !has_name(&flavors["flavors"], name) {
                api.post(
                    &format!("{NOVA}/flavors"),
                    &json!({"flavor": {"name": name, "vcpus": vcpus, "ram": ram, "disk": disk}}),
                )?;
            }
        }

        let images = api.get(&format!("{GLANCE}/images?name=cirros-fake"))?;
        let active = images["images"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|i| i["status"] == "active");
        if !active {
            for i in images["images"].as_array().into_iter().flatten() {
                api.delete(&format!("{GLANCE}/images/{}", str_of(&i["id"])))?;
            }
            let image = api.post(
                &format!("{GLANCE}/images"),
                &json!({"name": "cirros-fake", "disk_format": "raw", "container_format": "bare",
                        "visibility": "public"}),
            )?;
            let mut data = vec![0u8; 1 << 20];
            fs::File::open("/dev/urandom")
                .and_then(|mut f| f.read_exact(&mut data))
                .map_err(|e| format!("/dev/urandom: {e}"))?;
            api.upload(
                &format!("{GLANCE}/images/{}/file", str_of(&image["id"])),
                data,
            )?;
        }

        let network = |name: &str, body: Value| -> Result<String, String> {
            let found = api.get(&format!("{NEUTRON}/networks?name={name}"))?;
            match found["networks"].get(0) {
                Some(n) => Ok(str_of(&n["id"])),
                None => Ok(str_of(
                    &api.post(&format!("{NEUTRON}/networks"), &json!({"network": body}))?
                        ["network"]["id"],
                )),
            }
        };
        // A tenant subnet (with DHCP, as a cloud's usually are; no agent serves it) of a
        // project, or the external one (no DHCP) of the admin.
        let subnet = |name: &str, net: &str, cidr: &str, project: Option<&str>| {
            let found = api.get(&format!("{NEUTRON}/subnets?name={name}"))?;
            if let Some(s) = found["subnets"].get(0) {
                return Ok::<_, String>(str_of(&s["id"]));
            }
            let mut body = json!({"name": name, "network_id": net, "ip_version": 4,
                                  "cidr": cidr, "enable_dhcp": project.is_some()});
            if let Some(project) = project {
                body["project_id"] = json!(project);
            }
            let created = api.post(&format!("{NEUTRON}/subnets"), &json!({"subnet": body}))?;
            Ok(str_of(&created["subnet"]["id"]))
        };
        // The tenant networks belong to the demo project, shared with every project: Neutron
        // lets only a network's owner (or an admin) choose a port's fixed IP.
        let tenant = |name: &str| json!({"name": name, "shared": true, "project_id": demo});
        let net = network("dop-net", tenant("dop-net"))?;
        let sub = subnet("dop-sub", &net, "10.99.0.0/24", Some(&demo))?;
        let net2 = network("dop-net2", tenant("dop-net2"))?;
        let sub2 = subnet("dop-sub2", &net2, "10.98.0.0/24", Some(&demo))?;
        let public = network(
            "public",
            json!({"name": "public", "router:external": true,
                   "provider:network_type": "flat", "provider:physical_network": "public"}),
        )?;
        subnet("public-sub", &public, "203.0.113.0/24", None)?;

        let routers = api.get(&format!("{NEUTRON}/routers?name=dop-router"))?;
        let router = match routers["routers"].get(0) {
            Some(r) => str_of(&r["id"]),
            None => str_of(
                &api.post(
                    &format!("{NEUTRON}/routers"),
                    &json!({"router": {"name": "dop-router", "project_id": demo,
                                       "external_gateway_info": {"network_id": public}}}),
                )?["router"]["id"],
            ),
        };
        let ports = api.get(&format!(
            "{NEUTRON}/ports?device_id={router}&device_owner=network:router_interface"
        ))?;
        for s in [&sub, &sub2] {
            let attached = ports["ports"].as_array().into_iter().flatten().any(|p| {
                p["fixed_ips"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|ip| ip["subnet_id"] == s.as_str())
            });
            if !attached {
                api.put(
                    &format!("{NEUTRON}/routers/{router}/add_router_interface"),
                    &json!({"subnet_id": s}),
                )?;
            }
        }

        for (name, port) in [("dop-web", 80), ("dop-ssh", 22)] {
            let found = api.get(&format!(
                "{NEUTRON}/security-groups?name={name}&project_id={demo}"
            ))?;
            let group = match found["security_groups"].get(0) {
                Some(g) => g.clone(),
                None => api.post(
                    &format!("{NEUTRON}/security-groups"),
                    &json!({"security_group": {"name": name, "project_id": demo,
                                               "description": format!("tcp {port} in")}}),
                )?["security_group"]
                    .clone(),
            };
            let has_rule = group["security_group_rules"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["direction"] == "ingress" && r["port_range_min"] == port);
            if !has_rule {
                api.post(
                    &format!("{NEUTRON}/security-group-rules"),
                    &json!({"security_group_rule": {
                        "security_group_id": group["id"], "direction": "ingress",
                        "ethertype": "IPv4", "protocol": "tcp",
                        "port_range_min": port, "port_range_max": port}}),
                )?;
            }
        }
        Ok(())
    }

    pub(super) fn write_testbed_json(&self) -> Result<(), String> {
        let account = |name: &str| json!({"username": name, "password": name, "project": name, "domain": "default"});
        let testbed = json!({
            "auth_url": KEYSTONE,
            "region": "RegionOne",
            "admin": account("admin"),
            "demo": account("demo"),
            "quota": account("dop-quota"),
            "image": "cirros-fake",
            "flavors": ["m1.tiny", "m1.small", "m1.medium", "m1.nohost"],
            "networks": ["dop-net", "dop-net2"],
            "subnets": ["dop-sub", "dop-sub2"],
            "external_network": "public",
            "security_groups": ["dop-web", "dop-ssh"],
            "services": SERVICES,
            "pid_dir": self.pid_dir(),
            "log_dir": self.log_dir(),
        });
        let rc = |name: &str| {
            format!(
                "export OS_AUTH_URL={KEYSTONE} OS_IDENTITY_API_VERSION=3 OS_REGION_NAME=RegionOne\n\
                 export OS_USERNAME={name} OS_PASSWORD={name} OS_PROJECT_NAME={name}\n\
                 export OS_USER_DOMAIN_NAME=Default OS_PROJECT_DOMAIN_NAME=Default\n"
            )
        };
        write(&self.dir.join("adminrc"), &rc("admin"))?;
        write(&self.dir.join("demorc"), &rc("demo"))?;
        let text = serde_json::to_string_pretty(&testbed).map_err(|e| e.to_string())?;
        // Written whole, then renamed: a test never reads half a file.
        let tmp = self.dir.join(format!("{TESTBED_JSON}.tmp"));
        write(&tmp, &format!("{text}\n"))?;
        fs::rename(&tmp, self.dir.join(TESTBED_JSON)).map_err(|e| e.to_string())
    }
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn has_name(list: &Value, name: &str) -> bool {
    list.as_array()
        .into_iter()
        .flatten()
        .any(|x| x["name"] == name)
}

// ---- OpenStack's APIs --------------------------------------------------------------------

/// A logged-in client of the stack's APIs (reqwest on a small runtime of its own).
pub(super) struct Api {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    token: String,
    /// The project the token is scoped to.
    pub(super) project_id: String,
}

enum Body<'a> {
    None,
    Json(&'a Value),
    Bytes(Vec<u8>),
}

impl Api {
    pub(super) fn login(username: &str, password: &str, project: &str) -> Result<Api, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        // No connection is reused: uwsgi (Keystone, Placement) closes them.
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(0)
            .no_proxy()
            .build()
            .map_err(|e| e.to_string())?;
        let body = json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": username, "domain": {"id": "default"}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"id": "default"}}}}});
        let (token, project_id) = runtime.block_on(async {
            let response = client
                .post(format!("{KEYSTONE}/auth/tokens"))
                .json(&body)
                .send()
                .await
                .map_err(|e| format!("keystone: {e}"))?;
            let status = response.status();
            let token = response
                .headers()
                .get("x-subject-token")
                .and_then(|t| t.to_str().ok())
                .map(str::to_string);
            let v: Value = response.json().await.unwrap_or_default();
            match token {
                Some(token) if status.is_success() => {
                    Ok((token, str_of(&v["token"]["project"]["id"])))
                }
                _ => Err(format!("keystone refused {username}: {status} {v}")),
            }
        })?;
        Ok(Api {
            runtime,
            client,
            token,
            project_id,
        })
    }

    fn send(&self, method: reqwest::Method, url: &str, body: Body) -> Result<Value, String> {
        self.runtime.block_on(async {
            let mut request = self
                .client
                .request(method.clone(), url)
                .header("X-Auth-Token", &self.token);
            request = match body {
                Body::None => request,
                Body::Json(v) => request.json(v),
                Body::Bytes(b) => request
                    .header("Content-Type", "application/octet-stream")
                    .body(b),
            };
            let response = request
                .send()
                .await
                .map_err(|e| format!("{method} {url}: {e}"))?;
            let status = response.status();
            let text = response.text().await.unwrap_or_default();
            if !status.is_success() {
                return Err(format!("{method} {url}: {status}: {text}"));
            }
            if text.trim().is_empty() {
                Ok(Value::Null)
            } else {
                serde_json::from_str(&text).map_err(|e| format!("{method} {url}: {e}: {text}"))
            }
        })
    }

    pub(super) fn get(&self, url: &str) -> Result<Value, String> {
        self.send(reqwest::Method::GET, url, Body::None)
    }

    fn post(&self, url: &str, body: &Value) -> Result<Value, String> {
        self.send(reqwest::Method::POST, url, Body::Json(body))
    }

    fn put(&self, url: &str, body: &Value) -> Result<Value, String> {
        self.send(reqwest::Method::PUT, url, Body::Json(body))
    }

    fn delete(&self, url: &str) -> Result<Value, String> {
        self.send(reqwest::Method::DELETE, url, Body::None)
    }

    fn upload(&self, url: &str, data: Vec<u8>) -> Result<Value, String> {
        self.send(reqwest::Method::PUT, url, Body::Bytes(data))
    }
}

/// The service catalog, the `service` project, and the `service` role for the admin (whose
/// login the services use, and whose service token Cinder requires for Nova's detach).
pub(super) fn catalog(api: &Api) -> Result<(), String> {
    for (name, kind, url) in CATALOG {
        let found = api.get(&format!("{KEYSTONE}/services?type={kind}"))?;
        let id = match found["services"].get(0) {
            Some(s) => str_of(&s["id"]),
            None => str_of(
                &api.post(
                    &format!("{KEYSTONE}/services"),
                    &json!({"service": {"name": name, "type": kind, "enabled": true}}),
                )?["service"]["id"],
            ),
        };
        let endpoints = api.get(&format!("{KEYSTONE}/endpoints?service_id={id}"))?;
        for interface in ["public", "internal", "admin"] {
            let exists = endpoints["endpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|e| e["interface"] == interface);
            if !exists {
                api.post(
                    &format!("{KEYSTONE}/endpoints"),
                    &json!({"endpoint": {"service_id": id, "interface": interface, "url": url,
                                         "region_id": "RegionOne", "enabled": true}}),
                )?;
            }
        }
    }
    project(api, "service")?;
    let service = role(api, "service")?;
    let admin = api.get(&format!("{KEYSTONE}/users?name=admin"))?;
    let admin = str_of(&admin["users"][0]["id"]);
    grant(api, &api.project_id, &admin, &service)
}

fn project(api: &Api, name: &str) -> Result<String, String> {
    let found = api.get(&format!(
        "{KEYSTONE}/projects?name={name}&domain_id=default"
    ))?;
    match found["projects"].get(0) {
        Some(p) => Ok(str_of(&p["id"])),
        None => Ok(str_of(
            &api.post(
                &format!("{KEYSTONE}/projects"),
                &json!({"project": {"name": name, "domain_id": "default"}}),
            )?["project"]["id"],
        )),
    }
}

fn user(api: &Api, name: &str, password: &str, project: &str) -> Result<String, String> {
    let found = api.get(&format!("{KEYSTONE}/users?name={name}&domain_id=default"))?;
    match found["users"].get(0) {
        Some(u) => Ok(str_of(&u["id"])),
        None => Ok(str_of(
            &api.post(
                &format!("{KEYSTONE}/users"),
                &json!({"user": {"name": name, "password": password, "domain_id": "default",
                                 "default_project_id": project}}),
            )?["user"]["id"],
        )),
    }
}

fn role(api: &Api, name: &str) -> Result<String, String> {
    let found = api.get(&format!("{KEYSTONE}/roles?name={name}"))?;
    match found["roles"].get(0) {
        Some(r) => Ok(str_of(&r["id"])),
        None => Ok(str_of(
            &api.post(
                &format!("{KEYSTONE}/roles"),
                &json!({"role": {"name": name}}),
            )?["role"]["id"],
        )),
    }
}

fn grant(api: &Api, project: &str, user: &str, role: &str) -> Result<(), String> {
    api.send(
        reqwest::Method::PUT,
        &format!("{KEYSTONE}/projects/{project}/users/{user}/roles/{role}"),
        Body::None,
    )
    .map(drop)
}
