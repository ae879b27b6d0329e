//! The stack's run directory: configuration files rendered from the templates of
//! `xtask/openstack/`, the console-script wrappers, and the fakebind ML2 driver.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::host::{mkdir, write};

use super::database::DB;
use super::Stack;

const MQ: &str = "rabbit://guest:guest@127.0.0.1:5672/";

/// Console scripts whose `/usr/bin` entries live in the service packages, which are not
/// installed: name and module (each has a `main`).
const WRAPPERS: &[(&str, &str)] = &[
    ("nova-manage", "nova.cmd.manage"),
    ("nova-api", "nova.cmd.api_os_compute"),
    ("nova-conductor", "nova.cmd.conductor"),
    ("nova-scheduler", "nova.cmd.scheduler"),
    ("nova-compute", "nova.cmd.compute"),
    ("neutron-db-manage", "neutron.db.migration.cli"),
    ("neutron-server", "neutron.cmd.eventlet.server"),
    ("glance-manage", "glance.cmd.manage"),
    ("glance-api", "glance.cmd.api"),
    ("cinder-manage", "cinder.cmd.manage"),
    ("cinder-api", "cinder.cmd.api"),
    ("cinder-scheduler", "cinder.cmd.scheduler"),
    ("cinder-volume", "cinder.cmd.volume"),
];
/// Configuration templates (`@RUN@`, `@PKG@`, `@DB@`, `@MQ@`, `@AUTH@`, `@AUTHTOKEN@`) and where
/// they go below `run/etc`.
const TEMPLATES: &[(&str, &str)] = &[
    ("my.cnf", include_str!("../../openstack/my.cnf")),
    (
        "rabbitmq.conf",
        include_str!("../../openstack/rabbitmq.conf"),
    ),
    (
        "keystone.conf",
        include_str!("../../openstack/keystone.conf"),
    ),
    (
        "placement/placement.conf",
        include_str!("../../openstack/placement.conf"),
    ),
    ("nova.conf", include_str!("../../openstack/nova.conf")),
    ("neutron.conf", include_str!("../../openstack/neutron.conf")),
    ("ml2_conf.ini", include_str!("../../openstack/ml2_conf.ini")),
    (
        "glance-api.conf",
        include_str!("../../openstack/glance-api.conf"),
    ),
    ("cinder.conf", include_str!("../../openstack/cinder.conf")),
];
const FAKEBIND_ML2: &str = include_str!("../../openstack/fakebind_ml2.py");

/// The services' own Keystone login (the admin, who also has the `service` role).
const AUTH: &str = "auth_url = http://127.0.0.1:5000/v3
auth_type = password
username = admin
password = admin
project_name = admin
user_domain_name = Default
project_domain_name = Default";
const AUTHTOKEN: &str = "[keystone_authtoken]
www_authenticate_uri = http://127.0.0.1:5000/v3
@AUTH@
region_name = RegionOne
service_token_roles_required = true";

impl Stack {
    /// A fresh run directory (configuration, wrappers, the ML2 driver), log and pid directory.
    pub(super) fn prepare(&self) -> Result<(), String> {
        for d in [self.run_dir(), self.log_dir(), self.pid_dir()] {
            if d.exists() {
                fs::remove_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
            }
            mkdir(&d)?;
        }
        let run = self.run_dir();
        for sub in [
            "etc/placement",
            "bin",
            "pylib/fakebind_ml2",
            "pylib/fakebind_ml2-0.1.dist-info",
            "rabbitmq",
            "keystone",
            "nova",
            "neutron",
            "glance/images",
            "cinder",
            "locks",
        ] {
            mkdir(&run.join(sub))?;
        }
        for (file, template) in TEMPLATES {
            write(&self.etc(file), &self.render(template))?;
        }
        // No plugin (the management plugin would listen on all addresses) and none of
        // /etc/rabbitmq's settings.
        write(&self.etc("enabled_plugins"), "[].\n")?;
        write(&self.etc("rabbitmq-env.conf"), "")?;
        for (name, module) in WRAPPERS {
            let path = self.bin(name);
            write(
                &path,
                &format!(
                    "#!/usr/bin/python3\nimport sys\nfrom {module} import main\n\
                     sys.argv[0] = \"{name}\"\nsys.exit(main())\n"
                ),
            )?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))
                .map_err(|e| e.to_string())?;
        }
        let lib = run.join("pylib");
        write(&lib.join("fakebind_ml2/__init__.py"), FAKEBIND_ML2)?;
        let info = lib.join("fakebind_ml2-0.1.dist-info");
        write(
            &info.join("METADATA"),
            "Metadata-Version: 2.1\nName: fakebind-ml2\nVersion: 0.1\n",
        )?;
        write(
            &info.join("entry_points.txt"),
            "[neutron.ml2.mechanism_drivers]\nfakebind = fakebind_ml2:FakeBindMechanismDriver\n",
        )?;
        Ok(())
    }

    fn render(&self, template: &str) -> String {
        template
            .replace("@AUTHTOKEN@", AUTHTOKEN)
            .replace("@AUTH@", AUTH)
            .replace("@RUN@", &self.run_dir().to_string_lossy())
            .replace("@PKG@", &self.dir.join("pkg").to_string_lossy())
            .replace("@DB@", DB)
            .replace("@MQ@", MQ)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_template_placeholder_is_filled() {
        let stack = super::Stack {
            dir: "/srv/os".into(),
        };
        for (file, template) in super::TEMPLATES {
            let text = stack.render(template);
            for placeholder in ["@RUN@", "@PKG@", "@DB@", "@MQ@", "@AUTH@", "@AUTHTOKEN@"] {
                assert!(!text.contains(placeholder), "{file}: {text}");
            }
            for line in text.lines().filter(|l| l.starts_with("connection =")) {
                assert!(
                    line.contains("= mysql+pymysql://os:os@127.0.0.1/"),
                    "{file}: {line}"
                );
            }
        }
        let nova = stack.render(include_str!("../../openstack/nova.conf"));
        assert!(nova.contains("api_paste_config = /srv/os/pkg/usr/share/nova-common/"));
        assert!(nova.contains("[keystone_authtoken]\nwww_authenticate_uri"));
    }
}
