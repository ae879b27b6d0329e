//! First-boot configuration in cloud-init's formats, so real cloud images configure themselves
//! unchanged: the `#cloud-config` user data (host name, root password and SSH keys from the
//! plan's credentials, DNS from the plan; the original wrote the same settings but no DNS),
//! and for providers without a metadata service (libvirt) the rest of a NoCloud seed: the
//! `meta-data`, a version 2 `network-config` with the plan's addresses, and the FAT image
//! labelled CIDATA that carries the three files.

use std::io::{Cursor, Read as _, Write as _};
use std::net::IpAddr;

use dop_core::plan::{CredentialKind, Gateway, Infrastructure, IpSetting};
use serde_json::{json, Value};

use crate::provider::NodeSpec;

/// Random bytes of a password hash's salt (16 characters of crypt's base64).
const SALT_BYTES: usize = 12;

/// `password` as SHA-512 crypt (`$6$rounds=5000$<salt>$<hash>`), with a salt from
/// /dev/urandom.
fn hashed_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; SALT_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut salt))
        .map_err(|e| {
            format!("cannot read random bytes from /dev/urandom for the root password's salt: {e}")
        })?;
    sha512_crypt(password, &salt)
}

fn sha512_crypt(password: &str, salt: &[u8]) -> Result<String, String> {
    use sha_crypt::PasswordHasher as _;
    sha_crypt::ShaCrypt::SHA512
        .hash_password_with_salt(password.as_bytes(), salt)
        .map(|hash| hash.to_string())
        .map_err(|e| format!("cannot hash the root password: {e}"))
}

/// The cloud-config text for a node. Secrets are loaded here, when the node is created.
pub fn cloud_config(spec: &NodeSpec) -> Result<String, String> {
    let node = &spec.node;
    let fqdn = node.fqdn.trim_end_matches('.');
    let hostname = fqdn.split('.').next().unwrap_or(fqdn);
    let mut config = serde_json::Map::new();
    config.insert("hostname".into(), json!(hostname));
    config.insert("fqdn".into(), json!(fqdn));
    config.insert("manage_etc_hosts".into(), json!(true));
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
    // Password logins over SSH only for a node whose plan gives root a password (the original
    // allowed them on every node, keys only or not).
    config.insert("ssh_pwauth".into(), json!(password.is_some()));
    if let Some(p) = password {
        // Hashed: the user data is readable where the password is not meant to be (the cloud's
        // metadata service, the seed image, the node's /var/lib/cloud). cloud-init hands a
        // `list` value that looks like a crypt hash to `chpasswd -e` (since 0.7.9; the `users`
        // form only since 22.3).
        config.insert(
            "chpasswd".into(),
            json!({"expire": false, "list": format!("root:{}", hashed_password(&p)?)}),
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
    if let Some(file) = puppet_csr_attributes(spec) {
        config.insert("write_files".into(), json!([file]));
    }
    // JSON is YAML: cloud-init reads it as it reads any cloud-config.
    let body = serde_json::to_string_pretty(&Value::Object(config)).map_err(|e| e.to_string())?;
    Ok(format!("#cloud-config\n{body}\n"))
}

/// The `write_files` entry that gives the node its Puppet autosign challenge (Puppet's
/// `csr_attributes.yaml`, root's only), when dopv issued one.
fn puppet_csr_attributes(spec: &NodeSpec) -> Option<Value> {
    let challenge = spec.puppet_challenge.as_deref()?;
    Some(json!({
        "path": dop_puppet::challenge::CSR_ATTRIBUTES_PATH,
        "owner": "root:root",
        "permissions": "0600",
        "content": dop_puppet::challenge::csr_attributes(challenge),
    }))
}

/// The NoCloud `meta-data`: the instance id (a new one makes cloud-init run its first-boot
/// modules again) and the host name.
pub fn meta_data(spec: &NodeSpec, instance_id: &str) -> String {
    format!(
        "instance-id: {instance_id}\nlocal-hostname: {}\n",
        spec.node.hostname()
    )
}

/// The NoCloud `network-config` (version 2): each plan interface matched by the MAC address
/// `mac_of` gives it, with its static address, netmask and gateway from the infrastructure's
/// network, or DHCP. Interfaces with `ip: none` are left unconfigured.
pub fn network_config(
    spec: &NodeSpec,
    infrastructure: &Infrastructure,
    mac_of: impl Fn(&str) -> String,
) -> Result<String, String> {
    let mut ethernets = serde_json::Map::new();
    for interface in &spec.node.interfaces {
        let mut entry = serde_json::Map::new();
        entry.insert(
            "match".into(),
            json!({"macaddress": mac_of(&interface.name)}),
        );
        entry.insert("set-name".into(), json!(interface.name));
        match interface.ip {
            IpSetting::None => continue,
            IpSetting::Dhcp => {
                entry.insert("dhcp4".into(), json!(true));
            }
            IpSetting::Static(ip) => {
                let network = infrastructure.network(&interface.network).ok_or_else(|| {
                    format!(
                        "interfaces.{}: network '{}' is not defined in infrastructure '{}'",
                        interface.name, interface.network, infrastructure.name
                    )
                })?;
                let prefix = match network.ip_netmask {
                    Some(mask) => prefix_len(mask).ok_or_else(|| {
                        format!(
                            "network '{}': the netmask {mask} is not contiguous",
                            network.name
                        )
                    })?,
                    None if ip.is_ipv4() => 24,
                    None => 64,
                };
                entry.insert("addresses".into(), json!([format!("{ip}/{prefix}")]));
                if let (true, Some(Gateway::Ip(gw))) = (interface.set_gateway, network.ip_defgw) {
                    entry.insert(
                        "routes".into(),
                        json!([{"to": "default", "via": gw.to_string()}]),
                    );
                }
            }
        }
        // DNS is in the user data (resolv_conf), once for the node.
        ethernets.insert(interface.name.clone(), Value::Object(entry));
    }
    let config = json!({"version": 2, "ethernets": ethernets});
    serde_json::to_string_pretty(&config)
        .map(|s| s + "\n")
        .map_err(|e| e.to_string())
}

/// The prefix length of a contiguous netmask (`255.255.255.0` is 24).
pub fn prefix_len(mask: IpAddr) -> Option<u32> {
    let (ones, bits) = match mask {
        IpAddr::V4(m) => (u32::from(m).count_ones(), u32::from(m).leading_ones()),
        IpAddr::V6(m) => (u128::from(m).count_ones(), u128::from(m).leading_ones()),
    };
    (ones == bits).then_some(ones)
}

#[cfg(feature = "libvirt")]
/// The size of a seed image: room for the three small files, and the smallest FAT12 volume
/// the formatter makes.
const SEED_BYTES: usize = 1 << 20;

#[cfg(feature = "libvirt")]
/// A NoCloud seed: a FAT file system labelled CIDATA holding `meta-data`, `user-data` and
/// `network-config`, as the raw bytes of a disk image.
pub fn seed_image(
    meta_data: &str,
    user_data: &str,
    network_config: &str,
) -> Result<Vec<u8>, String> {
    let mut disk = Cursor::new(vec![0u8; SEED_BYTES]);
    let e = |e: std::io::Error| format!("making the NoCloud seed image: {e}");
    fatfs::format_volume(
        &mut disk,
        fatfs::FormatVolumeOptions::new().volume_label(*b"CIDATA     "),
    )
    .map_err(e)?;
    {
        let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new()).map_err(e)?;
        {
            let root = fs.root_dir();
            for (name, body) in [
                ("meta-data", meta_data),
                ("user-data", user_data),
                ("network-config", network_config),
            ] {
                let mut file = root.create_file(name).map_err(e)?;
                file.truncate().map_err(e)?;
                file.write_all(body.as_bytes()).map_err(e)?;
                file.flush().map_err(e)?;
            }
        }
        fs.unmount().map_err(e)?;
    }
    Ok(disk.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use dop_core::plan::{ContentSource, Credential};

    /// The plan `text`'s first node, with `credentials`, and the plan.
    fn first_node(text: &str, credentials: Vec<Credential>) -> (dop_core::Plan, NodeSpec) {
        let loaded = dop_core::load_str(text, None, &dop_core::LookupSettings::default());
        let plan = loaded.plan.expect("a valid plan");
        let spec = NodeSpec {
            plan: "p".into(),
            node: plan.nodes[0].clone(),
            ssh_port: 22,
            credentials,
            puppet_challenge: None,
        };
        (plan, spec)
    }

    #[test]
    fn root_password_keys_and_dns_reach_the_cloud_config() {
        let text = "name: p\ninfrastructures: {os: {type: openstack, endpoint: 'http://k:5000', credentials: api, networks: {sub: {ip_pool: {from: 10.0.0.2, to: 10.0.0.250}, ip_netmask: 255.255.255.0, ip_defgw: 10.0.0.1}}}}\n\
            credentials:\n  api: {type: username_password, username: dop, password: x}\n\
            nodes:\n  web01:\n    fqdn: web01.example.com\n    infrastructure: os\n    image: img\n\
            \x20   infrastructure_properties: {tenant: demo}\n\
            \x20   interfaces: {eth0: {network: sub, ip: dhcp}}\n\
            \x20   dns: {name_servers: [192.0.2.53], search_domains: [example.com]}\n";
        let (_, spec) = first_node(
            text,
            vec![
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
        );
        let config = cloud_config(&spec).unwrap();
        assert!(!config.contains("s3cret"), "{config}");
        let parsed: Value =
            serde_json::from_str(config.trim_start_matches("#cloud-config\n")).unwrap();
        let list = parsed["chpasswd"]["list"].as_str().unwrap();
        let hash = list.strip_prefix("root:").unwrap();
        assert_verifies("s3cret", hash);
        assert!(!verifies("not-root", hash));
        // The salt is random: what else the snapshot shows stays the same.
        let salt = hash.split('$').nth(3).unwrap();
        assert_eq!(salt.len(), 16, "{hash}");
        insta::assert_snapshot!(config.replace(hash, "<SHA-512 crypt of s3cret>"));
        assert_ne!(cloud_config(&spec).unwrap(), config, "a new salt each time");
    }

    fn verifies(password: &str, hash: &str) -> bool {
        use sha_crypt::PasswordVerifier as _;
        let hash = sha_crypt::PasswordHashRef::new(hash).unwrap();
        sha_crypt::ShaCrypt::SHA512
            .verify_password(password.as_bytes(), hash)
            .is_ok()
    }

    /// The crate's check, and glibc's crypt through `openssl passwd -6` where it is installed
    /// (the hash `chpasswd -e` on the node will read).
    fn assert_verifies(password: &str, hash: &str) {
        assert!(verifies(password, hash), "{hash}");
        let salt = hash.split('$').nth(3).unwrap();
        match std::process::Command::new("openssl")
            .args(["passwd", "-6", "-salt", salt, password])
            .output()
        {
            Ok(out) if out.status.success() => {
                let theirs = String::from_utf8(out.stdout).unwrap();
                // openssl leaves out `rounds=5000`, the default.
                assert_eq!(theirs.trim(), hash.replace("rounds=5000$", ""));
            }
            _ => eprintln!("no openssl passwd here: the hash checked by the crate only"),
        }
    }

    #[test]
    fn the_puppet_challenge_is_written_for_root_only_when_dopv_issued_one() {
        let text =
            "name: p\ninfrastructures: {lab: {type: local}}\nnodes: {n: {infrastructure: lab}}\n";
        let (_, spec) = first_node(text, Vec::new());
        assert!(!cloud_config(&spec).unwrap().contains("write_files"));
        let spec = NodeSpec {
            puppet_challenge: Some("0123456789".into()),
            ..spec
        };
        let config = cloud_config(&spec).unwrap();
        let parsed: Value =
            serde_json::from_str(config.trim_start_matches("#cloud-config\n")).unwrap();
        assert_eq!(
            parsed["write_files"],
            json!([{
                "path": "/etc/puppetlabs/puppet/csr_attributes.yaml",
                "owner": "root:root",
                "permissions": "0600",
                "content": "# Written by dopv: this node's one-time Puppet autosign challenge.\n---\ncustom_attributes:\n  1.2.840.113549.1.9.7: \"0123456789\"\n",
            }])
        );
    }

    #[test]
    fn a_node_with_root_keys_only_refuses_password_logins() {
        let text = "name: p\ninfrastructures: {kvm: {type: libvirt, endpoint: 'qemu:///system', networks: {front: {ip_pool: {from: 10.0.2.10, to: 10.0.2.99}, ip_netmask: 255.255.255.0, ip_defgw: 10.0.2.2}}}}\n\
            nodes:\n  web01:\n    fqdn: web01.example.com\n    infrastructure: kvm\n    image: img\n\
            \x20   interfaces: {eth0: {network: front, ip: 10.0.2.11}}\n";
        let (_, spec) = first_node(
            text,
            vec![Credential {
                name: "key".into(),
                kind: CredentialKind::SshKey {
                    username: "root".into(),
                    private_key: None,
                    public_key: Some(ContentSource::Literal("ssh-ed25519 AAAA test@dop".into())),
                },
            }],
        );
        let config = cloud_config(&spec).unwrap();
        assert!(config.contains("\"ssh_pwauth\": false"), "{config}");
        assert!(!config.contains("chpasswd"), "{config}");
    }

    #[test]
    fn the_network_config_has_the_plans_addresses_by_mac() {
        let text = "name: p\ninfrastructures: {kvm: {type: libvirt, endpoint: 'qemu:///system', networks: {front: {ip_pool: {from: 10.0.2.10, to: 10.0.2.99}, ip_netmask: 255.255.255.0, ip_defgw: 10.0.2.2}, back: {}}}}\n\
            nodes:\n  web01:\n    fqdn: web01.example.com\n    infrastructure: kvm\n    image: img\n\
            \x20   interfaces: {eth0: {network: front, ip: 10.0.2.11}, eth1: {network: back, ip: dhcp}, eth2: {network: back, ip: none}}\n\
            \x20   dns: {name_servers: [10.0.2.3]}\n";
        let (plan, spec) = first_node(text, Vec::new());
        let config =
            network_config(&spec, &plan.infrastructures[0], |i| format!("mac-of-{i}")).unwrap();
        insta::assert_snapshot!(config);
        assert_eq!(
            meta_data(&spec, "p/web01/1"),
            "instance-id: p/web01/1\nlocal-hostname: web01\n"
        );
    }

    #[test]
    fn netmasks_become_prefix_lengths() {
        assert_eq!(prefix_len("255.255.255.0".parse().unwrap()), Some(24));
        assert_eq!(prefix_len("255.255.240.0".parse().unwrap()), Some(20));
        assert_eq!(prefix_len("255.0.255.0".parse().unwrap()), None);
        assert_eq!(
            prefix_len("ffff:ffff:ffff:ffff::".parse().unwrap()),
            Some(64)
        );
    }

    #[test]
    fn the_seed_is_a_fat_volume_labelled_cidata_with_the_three_files() {
        use std::io::Read as _;
        let image = seed_image("m\n", "#cloud-config\n{}\n", "{\"version\": 2}\n").unwrap();
        let fs = fatfs::FileSystem::new(Cursor::new(image), fatfs::FsOptions::new()).unwrap();
        assert_eq!(fs.volume_label(), "CIDATA");
        assert_eq!(
            fs.read_volume_label_from_root_dir().unwrap().as_deref(),
            Some("CIDATA")
        );
        let mut found = Vec::new();
        for (name, body) in [
            ("meta-data", "m\n"),
            ("user-data", "#cloud-config\n{}\n"),
            ("network-config", "{\"version\": 2}\n"),
        ] {
            let mut text = String::new();
            fs.root_dir()
                .open_file(name)
                .unwrap()
                .read_to_string(&mut text)
                .unwrap();
            assert_eq!(text, body, "{name}");
            found.push(name);
        }
        assert_eq!(found.len(), 3);
    }
}
