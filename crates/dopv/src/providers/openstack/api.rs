//! The OpenStack API calls dopv makes, typed: lookups by name, servers, ports, floating IPs,
//! volumes, server groups. Each returns the cloud's message on failure; waiting for a status
//! is [`Api::wait`]'s job, with the resource and its last status in the error.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use super::session::{ApiError, Service, Session};

/// A server as Nova reports it.
#[derive(Clone, Debug)]
pub struct Server {
    /// Its id.
    pub id: String,
    /// `ACTIVE`, `BUILD`, `SHUTOFF`, `ERROR`, …
    pub status: String,
    /// The id of the image it was booted from (empty when booted from a volume).
    pub image_id: String,
    /// The flavor's name.
    pub flavor: Option<String>,
    /// Its metadata.
    pub metadata: serde_json::Map<String, Value>,
    /// Its tags.
    pub tags: Vec<String>,
    /// Why it is in `ERROR`.
    pub fault: Option<String>,
}

impl Server {
    fn from_json(v: &Value) -> Server {
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        Server {
            id: s("id"),
            status: s("status"),
            image_id: v["image"]["id"].as_str().unwrap_or_default().to_string(),
            flavor: v["flavor"]["original_name"].as_str().map(str::to_string),
            metadata: v["metadata"].as_object().cloned().unwrap_or_default(),
            tags: strings(&v["tags"]),
            fault: v["fault"]["message"].as_str().map(str::to_string),
        }
    }
}

/// A Neutron port.
#[derive(Clone, Debug)]
pub struct Port {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its description (dopv writes its ownership marker there).
    pub description: String,
    /// (subnet id, address) pairs.
    pub fixed_ips: Vec<(String, String)>,
    /// Its security groups' ids.
    pub security_groups: Vec<String>,
}

impl Port {
    fn from_json(v: &Value) -> Port {
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
        Port {
            id: s("id"),
            name: s("name"),
            description: s("description"),
            fixed_ips: v["fixed_ips"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| {
                    (
                        f["subnet_id"].as_str().unwrap_or_default().to_string(),
                        f["ip_address"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect(),
            security_groups: strings(&v["security_groups"]),
        }
    }
}

/// A subnet.
#[derive(Clone, Debug)]
pub struct Subnet {
    /// Its id.
    pub id: String,
    /// Its network.
    pub network_id: String,
}

/// A floating IP.
#[derive(Clone, Debug)]
pub struct FloatingIp {
    /// Its id.
    pub id: String,
    /// The address.
    pub address: String,
    /// The external network it comes from.
    pub network_id: String,
}

/// A Cinder volume.
#[derive(Clone, Debug)]
pub struct Volume {
    /// `available`, `in-use`, `creating`, `error`, …
    pub status: String,
    /// Size in GiB.
    pub size_gib: u64,
    /// Its metadata.
    pub metadata: serde_json::Map<String, Value>,
    /// The servers it is attached to.
    pub attached_to: Vec<String>,
}

impl Volume {
    fn from_json(v: &Value) -> Volume {
        Volume {
            status: v["status"].as_str().unwrap_or_default().to_string(),
            size_gib: v["size"].as_u64().unwrap_or_default(),
            metadata: v["metadata"].as_object().cloned().unwrap_or_default(),
            attached_to: v["attachments"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a["server_id"].as_str().map(str::to_string))
                .collect(),
        }
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect()
}

/// The calls, over one session.
pub struct Api<'a> {
    /// The session.
    pub session: &'a Session,
    /// How long [`Api::wait`] waits.
    pub wait_timeout: Duration,
}

impl Api<'_> {
    async fn get(
        &self,
        service: Service,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Value, ApiError> {
        self.session
            .call(service, Method::GET, path, query, None)
            .await
    }

    async fn post(&self, service: Service, path: &str, body: &Value) -> Result<Value, ApiError> {
        self.session
            .call(service, Method::POST, path, &[], Some(body))
            .await
    }

    async fn put(&self, service: Service, path: &str, body: &Value) -> Result<Value, ApiError> {
        self.session
            .call(service, Method::PUT, path, &[], Some(body))
            .await
    }

    /// Deletes; gone already is success.
    async fn delete(&self, service: Service, path: &str) -> Result<(), ApiError> {
        match self
            .session
            .call(service, Method::DELETE, path, &[], None)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Finds one resource by name, or by id when nothing has that name.
    async fn find_id(
        &self,
        service: Service,
        collection: &str,
        key: &str,
        name: &str,
        what: &str,
    ) -> Result<Value, String> {
        let listed = self
            .get(service, &format!("/{collection}"), &[("name", name)])
            .await
            .map_err(|e| e.to_string())?;
        let found: Vec<Value> = listed[collection]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["name"].as_str() == Some(name))
            .cloned()
            .collect();
        let mut found = self.prefer_own(found).await;
        match found.len() {
            1 => return Ok(found.remove(0)),
            0 => {}
            n => {
                return Err(format!(
                    "{n} {what}s are named '{name}' in project '{}': name it by id instead",
                    self.session.project()
                ))
            }
        }
        match self
            .get(service, &format!("/{collection}/{name}"), &[])
            .await
        {
            Ok(v) if v[key].is_object() => Ok(v[key].clone()),
            Ok(_) => Err(format!("no {what} '{name}'")),
            Err(e) if e.is_not_found() || e.status().is_some_and(|s| s.as_u16() == 400) => {
                Err(format!(
                    "no {what} named '{name}' is visible to project '{}'",
                    self.session.project()
                ))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Of several resources with one name (an admin sees every project's), the project's own
    /// when that leaves one.
    async fn prefer_own(&self, found: Vec<Value>) -> Vec<Value> {
        if found.len() < 2 {
            return found;
        }
        let Ok(project) = self.session.project_id().await else {
            return found;
        };
        let own: Vec<Value> = found
            .iter()
            .filter(|v| {
                ["project_id", "tenant_id", "owner"]
                    .iter()
                    .any(|k| v[*k].as_str() == Some(project.as_str()))
            })
            .cloned()
            .collect();
        if own.len() == 1 {
            own
        } else {
            found
        }
    }

    /// The id of an image, by name or id.
    pub async fn image_id(&self, name: &str) -> Result<String, String> {
        let found = self
            .find_id(Service::Image, "images", "image", name, "image")
            .await?;
        Ok(found["id"].as_str().unwrap_or_default().to_string())
    }

    /// An image's name (its id when it has none or cannot be read).
    pub async fn image_name(&self, id: &str) -> Result<String, ApiError> {
        match self
            .get(Service::Image, &format!("/images/{id}"), &[])
            .await
        {
            Ok(v) => Ok(v["name"].as_str().unwrap_or(id).to_string()),
            Err(e) if e.is_not_found() => Ok(id.to_string()),
            Err(e) => Err(e),
        }
    }

    /// The id of a flavor, by name or id.
    pub async fn flavor_id(&self, name: &str) -> Result<String, String> {
        let listed = self
            .get(Service::Compute, "/flavors", &[])
            .await
            .map_err(|e| e.to_string())?;
        let flavors = listed["flavors"].as_array().cloned().unwrap_or_default();
        flavors
            .iter()
            .find(|f| f["name"].as_str() == Some(name))
            .or_else(|| flavors.iter().find(|f| f["id"].as_str() == Some(name)))
            .and_then(|f| f["id"].as_str().map(str::to_string))
            .ok_or_else(|| {
                let names: Vec<&str> = flavors.iter().filter_map(|f| f["name"].as_str()).collect();
                format!(
                    "no flavor '{name}' is visible to project '{}' (there are: {})",
                    self.session.project(),
                    names.join(", ")
                )
            })
    }

    /// A subnet, by name or id (the plan's interface `network`).
    pub async fn subnet(&self, name: &str) -> Result<Subnet, String> {
        let v = self
            .find_id(Service::Network, "subnets", "subnet", name, "subnet")
            .await?;
        Ok(Subnet {
            id: v["id"].as_str().unwrap_or_default().to_string(),
            network_id: v["network_id"].as_str().unwrap_or_default().to_string(),
        })
    }

    /// A network's id, by name or id.
    pub async fn network_id(&self, name: &str) -> Result<String, String> {
        let v = self
            .find_id(Service::Network, "networks", "network", name, "network")
            .await?;
        Ok(v["id"].as_str().unwrap_or_default().to_string())
    }

    /// A network's name (its id when it cannot be read).
    pub async fn network_name(&self, id: &str) -> Result<String, ApiError> {
        match self
            .get(Service::Network, &format!("/networks/{id}"), &[])
            .await
        {
            Ok(v) => Ok(v["network"]["name"].as_str().unwrap_or(id).to_string()),
            Err(e) if e.is_not_found() => Ok(id.to_string()),
            Err(e) => Err(e),
        }
    }

    /// The ids of security groups, by name or id, in the order given.
    pub async fn security_group_ids(&self, names: &[String]) -> Result<Vec<String>, String> {
        let listed = self
            .get(Service::Network, "/security-groups", &[])
            .await
            .map_err(|e| e.to_string())?;
        let groups = listed["security_groups"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let project = self.session.project_id().await.unwrap_or_default();
        names
            .iter()
            .map(|name| {
                let by_name: Vec<&Value> = groups
                    .iter()
                    .filter(|g| g["name"].as_str() == Some(name))
                    .collect();
                // An admin sees every project's `default`: the project's own counts.
                let own: Vec<&Value> = by_name
                    .iter()
                    .copied()
                    .filter(|g| g["project_id"].as_str() == Some(project.as_str()))
                    .collect();
                let by_name = if by_name.len() > 1 && own.len() == 1 {
                    own
                } else {
                    by_name
                };
                match by_name.as_slice() {
                    [one] => Ok(one["id"].as_str().unwrap_or_default().to_string()),
                    [] => groups
                        .iter()
                        .find(|g| g["id"].as_str() == Some(name))
                        .and_then(|g| g["id"].as_str().map(str::to_string))
                        .ok_or_else(|| {
                            format!(
                                "no security group '{name}' is visible to project '{}'",
                                self.session.project()
                            )
                        }),
                    many => Err(format!(
                        "{} security groups are named '{name}': name it by id instead",
                        many.len()
                    )),
                }
            })
            .collect()
    }

    /// The names of security groups by id (ids that cannot be found stay ids).
    pub async fn security_group_names(&self, ids: &[String]) -> Result<Vec<String>, ApiError> {
        let listed = self.get(Service::Network, "/security-groups", &[]).await?;
        let groups = listed["security_groups"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        Ok(ids
            .iter()
            .map(|id| {
                groups
                    .iter()
                    .find(|g| g["id"].as_str() == Some(id))
                    .and_then(|g| g["name"].as_str())
                    .unwrap_or(id)
                    .to_string()
            })
            .collect())
    }

    /// The servers with exactly this name.
    pub async fn servers_named(&self, name: &str) -> Result<Vec<Server>, ApiError> {
        // Nova's name filter is a regular expression.
        let pattern = format!("^{}$", regex_escape(name));
        let listed = self
            .get(Service::Compute, "/servers/detail", &[("name", &pattern)])
            .await?;
        Ok(listed["servers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["name"].as_str() == Some(name))
            .map(Server::from_json)
            .collect())
    }

    /// A server by id (`None`: gone).
    pub async fn server(&self, id: &str) -> Result<Option<Server>, ApiError> {
        match self
            .get(Service::Compute, &format!("/servers/{id}"), &[])
            .await
        {
            Ok(v) => Ok(Some(Server::from_json(&v["server"]))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a server; returns its id.
    pub async fn create_server(&self, body: &Value) -> Result<String, ApiError> {
        let v = self.post(Service::Compute, "/servers", body).await?;
        v["server"]["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| ApiError::Unexpected {
                service: Service::Compute,
                path: "/servers".into(),
                detail: "no server id".into(),
            })
    }

    /// Deletes a server (gone already is success).
    pub async fn delete_server(&self, id: &str) -> Result<(), ApiError> {
        self.delete(Service::Compute, &format!("/servers/{id}"))
            .await
    }

    /// A server action (`os-start`, `resize`, …).
    pub async fn server_action(&self, id: &str, action: &Value) -> Result<(), ApiError> {
        self.post(Service::Compute, &format!("/servers/{id}/action"), action)
            .await
            .map(|_| ())
    }

    /// Replaces a server's tags.
    pub async fn set_tags(&self, id: &str, tags: &[String]) -> Result<(), ApiError> {
        self.put(
            Service::Compute,
            &format!("/servers/{id}/tags"),
            &json!({ "tags": tags }),
        )
        .await
        .map(|_| ())
    }

    /// The ids of the volumes attached to a server.
    pub async fn attached_volumes(&self, server: &str) -> Result<Vec<String>, ApiError> {
        let v = self
            .get(
                Service::Compute,
                &format!("/servers/{server}/os-volume_attachments"),
                &[],
            )
            .await?;
        Ok(v["volumeAttachments"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| a["volumeId"].as_str().map(str::to_string))
            .collect())
    }

    /// Attaches a volume to a server.
    pub async fn attach_volume(&self, server: &str, volume: &str) -> Result<(), ApiError> {
        self.post(
            Service::Compute,
            &format!("/servers/{server}/os-volume_attachments"),
            &json!({"volumeAttachment": {"volumeId": volume}}),
        )
        .await
        .map(|_| ())
    }

    /// Detaches a volume from a server (not attached is success).
    pub async fn detach_volume(&self, server: &str, volume: &str) -> Result<(), ApiError> {
        self.delete(
            Service::Compute,
            &format!("/servers/{server}/os-volume_attachments/{volume}"),
        )
        .await
    }

    /// The project's server group with this name, created with `policy` when missing; its id.
    pub async fn server_group(&self, name: &str, policy: &str) -> Result<String, String> {
        let listed = self
            .get(Service::Compute, "/os-server-groups", &[])
            .await
            .map_err(|e| e.to_string())?;
        if let Some(group) = listed["server_groups"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|g| g["name"].as_str() == Some(name))
        {
            let has = group["policy"].as_str().unwrap_or_default();
            if has != policy {
                return Err(format!(
                    "the server group '{name}' exists with policy '{has}', the plan's affinity group asks for '{policy}'"
                ));
            }
            return Ok(group["id"].as_str().unwrap_or_default().to_string());
        }
        let created = self
            .post(
                Service::Compute,
                "/os-server-groups",
                &json!({"server_group": {"name": name, "policy": policy}}),
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(created["server_group"]["id"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }

    /// Ports, filtered by the given Neutron query.
    pub async fn ports(&self, query: &[(&str, &str)]) -> Result<Vec<Port>, ApiError> {
        let v = self.get(Service::Network, "/ports", query).await?;
        Ok(v["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(Port::from_json)
            .collect())
    }

    /// Creates a port.
    pub async fn create_port(&self, body: &Value) -> Result<Port, ApiError> {
        let v = self.post(Service::Network, "/ports", body).await?;
        Ok(Port::from_json(&v["port"]))
    }

    /// Sets a port's security groups.
    pub async fn set_port_security_groups(
        &self,
        port: &str,
        groups: &[String],
    ) -> Result<(), ApiError> {
        self.put(
            Service::Network,
            &format!("/ports/{port}"),
            &json!({"port": {"security_groups": groups}}),
        )
        .await
        .map(|_| ())
    }

    /// Deletes a port (gone already is success).
    pub async fn delete_port(&self, id: &str) -> Result<(), ApiError> {
        self.delete(Service::Network, &format!("/ports/{id}")).await
    }

    /// The floating IPs on a port.
    pub async fn floating_ips(&self, port: &str) -> Result<Vec<FloatingIp>, ApiError> {
        let v = self
            .get(Service::Network, "/floatingips", &[("port_id", port)])
            .await?;
        Ok(v["floatingips"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|f| FloatingIp {
                id: f["id"].as_str().unwrap_or_default().to_string(),
                address: f["floating_ip_address"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                network_id: f["floating_network_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            })
            .collect())
    }

    /// Creates a floating IP on a port.
    pub async fn create_floating_ip(
        &self,
        network: &str,
        port: &str,
        description: &str,
    ) -> Result<FloatingIp, ApiError> {
        let v = self
            .post(
                Service::Network,
                "/floatingips",
                &json!({"floatingip": {
                    "floating_network_id": network, "port_id": port, "description": description}}),
            )
            .await?;
        let f = &v["floatingip"];
        Ok(FloatingIp {
            id: f["id"].as_str().unwrap_or_default().to_string(),
            address: f["floating_ip_address"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            network_id: network.to_string(),
        })
    }

    /// Deletes a floating IP (gone already is success).
    pub async fn delete_floating_ip(&self, id: &str) -> Result<(), ApiError> {
        self.delete(Service::Network, &format!("/floatingips/{id}"))
            .await
    }

    /// Creates a volume; returns its id.
    pub async fn create_volume(&self, body: &Value) -> Result<String, ApiError> {
        let v = self.post(Service::Volume, "/volumes", body).await?;
        v["volume"]["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| ApiError::Unexpected {
                service: Service::Volume,
                path: "/volumes".into(),
                detail: "no volume id".into(),
            })
    }

    /// A volume by id (`None`: gone).
    pub async fn volume(&self, id: &str) -> Result<Option<Volume>, ApiError> {
        match self
            .get(Service::Volume, &format!("/volumes/{id}"), &[])
            .await
        {
            Ok(v) => Ok(Some(Volume::from_json(&v["volume"]))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes a volume (gone already is success).
    pub async fn delete_volume(&self, id: &str) -> Result<(), ApiError> {
        self.delete(Service::Volume, &format!("/volumes/{id}"))
            .await
    }

    /// Polls `look` until it says done (`Ok(Some)`), fails, or the wait timeout passes; the
    /// timeout error names `what` and the last status `look` reported.
    pub async fn wait<T, F, Fut>(&self, what: &str, wanted: &str, mut look: F) -> Result<T, String>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Poll<T>, String>>,
    {
        let start = Instant::now();
        let mut pause = Duration::from_millis(250);
        let mut heartbeat = crate::providers::Heartbeat::new(
            format!("{what} to become {wanted}"),
            self.wait_timeout,
        );
        loop {
            let last = match look().await? {
                Poll::Done(t) => return Ok(t),
                Poll::Status(s) => s,
            };
            heartbeat.tick(&last);
            if start.elapsed() >= self.wait_timeout {
                return Err(format!(
                    "{what} did not become {wanted} within {} s; its last status: {last}",
                    self.wait_timeout.as_secs()
                ));
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }
}

/// One look of [`Api::wait`].
pub enum Poll<T> {
    /// Reached.
    Done(T),
    /// Not yet; the status seen.
    Status(String),
}

/// `name` as a regular expression that matches only itself.
fn regex_escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if "\\.+*?()|[]{}^$#&-~ ".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_matched_literally() {
        assert_eq!(regex_escape("web01.example"), "web01\\.example");
        assert_eq!(regex_escape("db-(1)"), "db\\-\\(1\\)");
    }

    #[test]
    fn a_volume_lists_the_servers_it_is_attached_to() {
        let v = Volume::from_json(&json!({"id": "v", "status": "in-use", "size": 2,
            "attachments": [{"server_id": "s"}]}));
        assert_eq!(v.attached_to, ["s"]);
        assert_eq!(v.size_gib, 2);
    }
}
