//! The first-boot configuration a new server gets as user data, in cloud-init's `#cloud-config`
//! format: host name, root password and SSH keys from the plan's credentials, DNS from the
//! plan. The original wrote the same settings but no DNS; addresses come from Neutron's ports.

use dop_core::plan::CredentialKind;
use serde_json::{json, Value};

use crate::provider::NodeSpec;

/// The cloud-config text for a node. Secrets are loaded here, when the node is created.
pub fn cloud_config(spec: &NodeSpec) -> Result<String, String> {
    let node = &spec.node;
    let fqdn = node.fqdn.trim_end_matches('.');
    let hostname = fqdn.split('.').next().unwrap_or(fqdn);
    let mut config = serde_json::Map::new();
    config.insert("hostname".into(), json!(hostname));
    config.insert("fqdn".into(), json!(fqdn));
    config.insert("manage_etc_hosts".into(), json!(true));
    config.insert("ssh_pwauth".into(), json!(true));
    let mut keys: Vec<String> = Vec::new();
    let mut password = None;
    for credential in &spec.credentials {
        match &credential.kind {
            CredentialKind::UsernamePassword {
                username,
                password: p,
            } if username == "root" => {
                let secret = p
                    .load()
                    .map_err(|e| format!("credential '{}': {e}", credential.name))?;
                password.get_or_insert(secret);
            }
            CredentialKind::SshKey {
                username,
                public_key: Some(k),
                ..
            } if username == "root" => {
                let key = k
                    .load()
                    .map_err(|e| format!("credential '{}': {e}", credential.name))?;
                let key = key.trim().to_string();
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
            _ => {}
        }
    }
    if let Some(p) = password {
        config.insert(
            "chpasswd".into(),
            json!({"expire": false, "list": format!("root:{p}")}),
        );
    }
    if !keys.is_empty() {
        config.insert("disable_root".into(), json!(false));
        config.insert(
            "users".into(),
            json!([{"name": "root", "ssh_authorized_keys": keys}]),
        );
    }
    let dns = &node.dns;
    if !dns.name_servers.is_empty() || !dns.search_domains.is_empty() {
        let mut resolv = serde_json::Map::new();
        if !dns.name_servers.is_empty() {
            resolv.insert("nameservers".into(), json!(dns.name_servers));
        }
        if !dns.search_domains.is_empty() {
            resolv.insert("searchdomains".into(), json!(dns.search_domains));
        }
        config.insert("manage_resolv_conf".into(), json!(true));
        config.insert("resolv_conf".into(), Value::Object(resolv));
    }
    // JSON is YAML: cloud-init reads it as it reads any cloud-config.
    let body = serde_json::to_string_pretty(&Value::Object(config)).map_err(|e| e.to_string())?;
    Ok(format!("#cloud-config\n{body}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dop_core::plan::{ContentSource, Credential};

    #[test]
    fn root_password_keys_and_dns_reach_the_cloud_config() {
        let text = "name: p\ninfrastructures: {os: {type: openstack, endpoint: 'http://k:5000', credentials: api, networks: {sub: {ip_pool: {from: 10.0.0.2, to: 10.0.0.250}, ip_netmask: 255.255.255.0, ip_defgw: 10.0.0.1}}}}\n\
            credentials:\n  api: {type: username_password, username: dop, password: x}\n\
            nodes:\n  web01:\n    fqdn: web01.example.com\n    infrastructure: os\n    image: img\n\
            \x20   infrastructure_properties: {tenant: demo}\n\
            \x20   interfaces: {eth0: {network: sub, ip: dhcp}}\n\
            \x20   dns: {name_servers: [192.0.2.53], search_domains: [example.com]}\n";
        let loaded = dop_core::load_str(text, None, &dop_core::LookupSettings::default());
        let plan = loaded.plan.expect("a valid plan");
        let spec = NodeSpec {
            plan: "p".into(),
            node: plan.nodes[0].clone(),
            ssh_port: 22,
            credentials: vec![
                Credential {
                    name: "rootpw".into(),
                    kind: CredentialKind::UsernamePassword {
                        username: "root".into(),
                        password: ContentSource::Literal("s3cret".into()),
                    },
                },
                Credential {
                    name: "key".into(),
                    kind: CredentialKind::SshKey {
                        username: "root".into(),
                        private_key: None,
                        public_key: Some(ContentSource::Literal(
                            "ssh-ed25519 AAAA test@dop\n".into(),
                        )),
                    },
                },
                Credential {
                    name: "other".into(),
                    kind: CredentialKind::UsernamePassword {
                        username: "admin".into(),
                        password: ContentSource::Literal("not-root".into()),
                    },
                },
            ],
        };
        insta::assert_snapshot!(cloud_config(&spec).unwrap());
    }
}
