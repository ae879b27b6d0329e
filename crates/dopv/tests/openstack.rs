//! dopv against a real OpenStack: the one `cargo xtask openstack up` runs on loopback
//! (Keystone, Nova with its fake compute driver, Neutron, Cinder with its fake volume driver,
//! Glance, Placement). Without it each test prints why it is skipped and passes nothing.
//!
//! The tests check the cloud itself, through its API as the test project's user: what dopv
//! made, what it removed, and that nothing it marked is left behind. They share one cloud, so
//! they take turns; every resource a plan made is removed when its test ends, pass or fail.

use std::process::{Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dop_testbed::dopv::{actions, error_of, results, DopvLab};
use dop_testbed::openstack::{Account, OpenStack};
use dop_testbed::process::{text, Running};
use serde_json::{json, Value};

/// One test at a time on the shared cloud (two of them pause its services).
static CLOUD: Mutex<()> = Mutex::new(());

/// The local OpenStack, or why the test is skipped.
fn cloud() -> Option<OpenStack> {
    match OpenStack::find() {
        Ok(os) => Some(os),
        Err(reason) => {
            eprintln!("skipped: {reason}");
            None
        }
    }
}

/// The cloud's API as one user, for the tests' own looks (plain HTTP, not dopv's code).
struct Api {
    runtime: tokio::runtime::Runtime,
    http: reqwest::Client,
    token: String,
    compute: String,
    network: String,
    volume: String,
    image: String,
}

impl Api {
    fn login(os: &OpenStack, account: &Account) -> Api {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let body = json!({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": account.username, "domain": {"id": account.domain},
                "password": account.password}}},
            "scope": {"project": {"name": account.project, "domain": {"id": account.domain}}}}});
        let (token, catalog) = runtime.block_on(async {
            let r = http
                .post(format!("{}/auth/tokens", os.auth_url.trim_end_matches('/')))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "login: {}", r.status());
            let token = r.headers()["x-subject-token"].to_str().unwrap().to_string();
            let v: Value = r.json().await.unwrap();
            (token, v["token"]["catalog"].clone())
        });
        let url = |kind: &str| -> String {
            catalog
                .as_array()
                .unwrap()
                .iter()
                .filter(|s| s["type"] == kind)
                .flat_map(|s| s["endpoints"].as_array().unwrap().iter())
                .find(|e| e["interface"] == "public")
                .and_then(|e| e["url"].as_str())
                .unwrap_or_else(|| panic!("no {kind} endpoint"))
                .trim_end_matches('/')
                .to_string()
        };
        Api {
            compute: url("compute"),
            network: format!("{}/v2.0", url("network")),
            volume: url("volumev3"),
            image: url("image"),
            runtime,
            http,
            token,
        }
    }

    /// One request; a 404 is an answer (`null`), anything else unsuccessful an error.
    fn try_call(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Value, String> {
        self.runtime.block_on(async {
            let mut request = self
                .http
                .request(method.clone(), url)
                .header("X-Auth-Token", &self.token);
            if url.starts_with(&self.compute) {
                request = request.header("OpenStack-API-Version", "compute 2.64");
            }
            if let Some(b) = body {
                request = request.json(b);
            }
            let r = request
                .send()
                .await
                .map_err(|e| format!("{method} {url}: {e}"))?;
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            if !(status.is_success() || status.as_u16() == 404) {
                return Err(format!("{method} {url}: {status} {body}"));
            }
            Ok(serde_json::from_str(&body).unwrap_or(Value::Null))
        })
    }

    fn call(&self, method: reqwest::Method, url: &str, body: Option<&Value>) -> Value {
        self.try_call(method, url, body)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn get(&self, url: &str) -> Value {
        self.call(reqwest::Method::GET, url, None)
    }

    fn post(&self, url: &str, body: &Value) -> Value {
        self.call(reqwest::Method::POST, url, Some(body))
    }

    fn delete(&self, url: &str) {
        self.call(reqwest::Method::DELETE, url, None);
    }

    fn marked(list: &Value, key: &str, plan: &str) -> Vec<Value> {
        let prefix = format!("dopv:{plan}/");
        list[key]
            .as_array()
            .unwrap_or(&Vec::new())
            .iter()
            .filter(|r| {
                r["metadata"]["dopv_plan"] == plan
                    || r["description"]
                        .as_str()
                        .is_some_and(|d| d.starts_with(&prefix))
            })
            .cloned()
            .collect()
    }

    /// The plan's servers.
    fn servers(&self, plan: &str) -> Vec<Value> {
        Self::marked(
            &self.get(&format!("{}/servers/detail", self.compute)),
            "servers",
            plan,
        )
    }

    /// The one resource of `list` (`what`: servers, ports) named `name`.
    fn named(list: Vec<Value>, what: &str, name: &str) -> Value {
        let found: Vec<Value> = list.into_iter().filter(|r| r["name"] == name).collect();
        assert_eq!(found.len(), 1, "{what} named {name}: {found:#?}");
        found[0].clone()
    }

    /// The plan's server named `name` (exactly one).
    fn server(&self, plan: &str, name: &str) -> Value {
        Self::named(self.servers(plan), "servers", name)
    }

    fn ports(&self, plan: &str) -> Vec<Value> {
        Self::marked(&self.get(&format!("{}/ports", self.network)), "ports", plan)
    }

    fn floating_ips(&self, plan: &str) -> Vec<Value> {
        Self::marked(
            &self.get(&format!("{}/floatingips", self.network)),
            "floatingips",
            plan,
        )
    }

    fn volumes(&self, plan: &str) -> Vec<Value> {
        Self::marked(
            &self.get(&format!("{}/volumes/detail", self.volume)),
            "volumes",
            plan,
        )
    }

    /// The plan's port of an interface.
    fn port(&self, plan: &str, name: &str) -> Value {
        Self::named(self.ports(plan), "ports", name)
    }

    /// Everything the plan made, as (servers, ports, floating IPs, volumes) counts.
    fn counts(&self, plan: &str) -> (usize, usize, usize, usize) {
        (
            self.servers(plan).len(),
            self.ports(plan).len(),
            self.floating_ips(plan).len(),
            self.volumes(plan).len(),
        )
    }

    /// Removes everything the plan made (a failed test's leftovers). Never panics: it runs
    /// in `Drop`, also while a failed test unwinds; what it cannot remove it reports.
    fn clean(&self, plan: &str) {
        let list = |url: String, key: &str| -> Vec<Value> {
            match self.try_call(reqwest::Method::GET, &url, None) {
                Ok(v) => Self::marked(&v, key, plan),
                Err(e) => {
                    eprintln!("clean-up of {plan}: {e}");
                    Vec::new()
                }
            }
        };
        let remove = |url: String| {
            if let Err(e) = self.try_call(reqwest::Method::DELETE, &url, None) {
                eprintln!("clean-up of {plan}: {e}");
            }
        };
        let settle = |what: &str, done: &dyn Fn() -> bool| {
            let start = Instant::now();
            while !done() {
                if start.elapsed() > Duration::from_secs(60) {
                    eprintln!("clean-up of {plan}: gave up waiting until {what}");
                    return;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        };
        for f in list(format!("{}/floatingips", self.network), "floatingips") {
            remove(format!(
                "{}/floatingips/{}",
                self.network,
                f["id"].as_str().unwrap_or_default()
            ));
        }
        let servers = || list(format!("{}/servers/detail", self.compute), "servers");
        for s in servers() {
            remove(format!(
                "{}/servers/{}",
                self.compute,
                s["id"].as_str().unwrap_or_default()
            ));
        }
        settle("the servers are gone", &|| servers().is_empty());
        for p in list(format!("{}/ports", self.network), "ports") {
            remove(format!(
                "{}/ports/{}",
                self.network,
                p["id"].as_str().unwrap_or_default()
            ));
        }
        let volumes = || list(format!("{}/volumes/detail", self.volume), "volumes");
        settle("the volumes are detached", &|| {
            volumes()
                .iter()
                .all(|v| v["status"] != "in-use" && v["status"] != "detaching")
        });
        for v in volumes() {
            remove(format!(
                "{}/volumes/{}",
                self.volume,
                v["id"].as_str().unwrap_or_default()
            ));
        }
    }

    /// Waits (bounded: 60 s) until `done`.
    fn until(&self, what: &str, done: impl Fn() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "timed out: {what}"
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// A plan on the cloud: a store, logs, and the cloud's API to look with. What the plan made
/// is removed on drop.
struct Lab {
    dopv: DopvLab,
    os: OpenStack,
    api: Api,
    plan: String,
}

impl Drop for Lab {
    fn drop(&mut self) {
        // A paused service would make the clean-up hang; the pause guards are dropped first.
        self.api.clean(&self.plan);
    }
}

impl Lab {
    fn new(os: OpenStack, test: &str) -> Lab {
        let demo = os.demo.clone();
        Lab::as_user(os, test, &demo)
    }

    /// A lab that looks at (and cleans up) the cloud as `account`.
    fn as_user(os: OpenStack, test: &str, account: &Account) -> Lab {
        let api = Api::login(&os, account);
        // Unique per run: a crashed earlier run's leftovers never meet this one's.
        let plan = format!("{test}{}", std::process::id());
        Lab {
            dopv: DopvLab::new(env!("CARGO_BIN_EXE_dopv")),
            os,
            api,
            plan,
        }
    }

    /// `dopv <command> <plan> [args] --json`, expecting `status`.
    fn json(&self, command: &str, args: &[&str], status: i32) -> Value {
        let mut all = vec![command, self.plan.as_str()];
        all.extend_from_slice(args);
        self.dopv.json(&all, status)
    }

    /// Adds or updates the plan from its nodes (YAML under `nodes:`).
    fn plan(&self, nodes: &str, account: &Account) {
        let text = format!(
            "name: {plan}\ninfrastructures:\n  cloud:\n    type: openstack\n    endpoint: {url}\n    \
             credentials: api\n    networks:\n      \
             dop-sub: {{ip_pool: {{from: 10.99.0.10, to: 10.99.0.250}}, ip_netmask: 255.255.255.0, ip_defgw: 10.99.0.1}}\n      \
             dop-sub2: {{ip_pool: {{from: 10.98.0.10, to: 10.98.0.250}}, ip_netmask: 255.255.255.0, ip_defgw: 10.98.0.1}}\n    \
             affinity_groups:\n      spread: {{positive: false, enforce: false, cluster: any}}\n\
             credentials:\n  api: {{type: username_password, username: {user}, password: {password}}}\n  \
             root_key: {{type: ssh_key, username: root, public_key: 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOpenStackTestKeyOnly test'}}\n\
             nodes:\n{nodes}",
            plan = self.plan,
            url = self.os.auth_url,
            user = account.username,
            password = account.password,
        );
        self.dopv.add_plan(&text);
    }

    fn shown(&self, node: &str) -> Value {
        self.dopv.shown_node(&self.plan, node)
    }
}

/// A node entry; `tenant` is the project.
fn node(name: &str, tenant: &str, body: &str) -> String {
    format!(
        "  {name}:\n    infrastructure: cloud\n    image: cirros-fake\n    credentials: [root_key]\n    \
         infrastructure_properties: {{tenant: {tenant}}}\n{body}"
    )
}

fn fixed_ips(port: &Value) -> Vec<String> {
    port["fixed_ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["ip_address"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_plan_is_deployed_changed_and_removed_on_openstack() {
    let _turn = CLOUD.lock().unwrap_or_else(|e| e.into_inner());
    let Some(os) = cloud() else { return };
    let lab = Lab::new(os, "life");
    let demo = lab.os.demo.clone();
    let web01 = |groups: &str, disks: &str| {
        node(
            "web01",
            "demo",
            &format!(
                "    flavor: m1.tiny\n    interfaces: {{eth0: {{network: dop-sub, ip: 10.99.0.11, floating_network: public}}}}\n    \
                 disks: {{{disks}}}\n"
            ),
        )
        .replace("tenant: demo}", &format!("tenant: demo, security_groups: [{groups}]}}"))
    };
    let web02 = |ip: &str, floating: &str| {
        node(
            "web02",
            "demo",
            &format!("    flavor: m1.tiny\n    interfaces: {{eth0: {{network: dop-sub, ip: {ip}{floating}}}}}\n"),
        )
        .replace("tenant: demo}", "tenant: demo, use_config_drive: true}")
    };
    let db01 = |flavor: &str| {
        node(
            "db01",
            "demo",
            &format!(
                "    flavor: {flavor}\n    interfaces:\n      eth0: {{network: dop-sub, ip: dhcp}}\n      \
                 eth1: {{network: dop-sub2, ip: 10.98.0.13}}\n"
            ),
        )
        .replace("tenant: demo}", "tenant: demo, affinity_groups: [spread]}")
    };
    let web03 = node(
        "web03",
        "demo",
        "    flavor: m1.tiny\n    interfaces: {eth0: {network: dop-sub, ip: 10.99.0.14}}\n",
    );
    let plan = lab.plan.clone();

    // v1: three servers, fixed addresses on two subnets, a floating IP, a data disk, a
    // security group, a server group.
    lab.plan(
        &[
            web01("dop-web", "data: {size: 1G}"),
            web02("10.99.0.12", ""),
            db01("m1.tiny"),
        ]
        .concat(),
        &demo,
    );
    let deployed = lab.json("deploy", &[], 0);
    assert_eq!(
        results(&deployed),
        [("web01", "done"), ("web02", "done"), ("db01", "done")]
            .map(|(n, r)| (n.to_string(), r.to_string()))
            .to_vec(),
        "{deployed:#}"
    );
    let api = &lab.api;
    for name in ["web01", "web02", "db01"] {
        let s = api.server(&plan, name);
        assert_eq!(s["status"], "ACTIVE", "{s:#}");
        assert_eq!(s["metadata"]["dopv_node"], name);
    }
    assert_eq!(fixed_ips(&api.port(&plan, "web01-eth0")), ["10.99.0.11"]);
    assert_eq!(fixed_ips(&api.port(&plan, "web02-eth0")), ["10.99.0.12"]);
    assert_eq!(api.server(&plan, "web02")["config_drive"], "True");
    assert_eq!(api.server(&plan, "web01")["config_drive"], "");
    assert_eq!(fixed_ips(&api.port(&plan, "db01-eth1")), ["10.98.0.13"]);
    assert_eq!(
        api.port(&plan, "web01-eth0")["security_groups"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        api.server(&plan, "db01")["flavor"]["original_name"],
        "m1.tiny"
    );
    let fips = api.floating_ips(&plan);
    assert_eq!(fips.len(), 1, "{fips:#?}");
    let fip = fips[0]["floating_ip_address"].as_str().unwrap().to_string();
    let volumes = api.volumes(&plan);
    assert_eq!(volumes.len(), 1);
    assert_eq!(volumes[0]["status"], "in-use");
    assert_eq!(
        volumes[0]["attachments"][0]["server_id"],
        api.server(&plan, "web01")["id"]
    );
    // db01 is in the server group of its affinity group.
    let groups = api.get(&format!("{}/os-server-groups", api.compute));
    let spread = groups["server_groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "spread")
        .unwrap_or_else(|| panic!("no server group 'spread': {groups:#}"))
        .clone();
    assert_eq!(spread["policy"], "soft-anti-affinity");
    assert!(
        spread["members"]
            .as_array()
            .unwrap()
            .contains(&api.server(&plan, "db01")["id"]),
        "{spread:#}"
    );
    // dopi reaches web01 at its floating address; the read-back matches the plan.
    let shown = lab.shown("web01");
    assert_eq!(shown["actual"]["ssh"]["address"], fip.as_str(), "{shown:#}");
    assert_eq!(shown["drift"], json!([]), "{shown:#}");

    // The read-back of every field matches what the plan asks: nothing to do.
    lab.dopv.expect(&["refresh", &plan], 0);
    let preview = lab.json("sync", &["--noop", "--detailed-exitcode"], 0);
    assert_eq!(preview["actions"], json!([]), "{preview:#}");

    // v2: a security group and a disk more (in place), a floating IP for web02 (in place),
    // a bigger flavor for db01 (interruptive), a new node.
    lab.plan(
        &[
            web01("dop-web, dop-ssh", "data: {size: 1G}, logs: {size: 1G}"),
            web02("10.99.0.12", ", floating_network: public"),
            db01("m1.small"),
            web03.clone(),
        ]
        .concat(),
        &demo,
    );
    let preview = lab.json("sync", &["--noop", "--detailed-exitcode"], 2);
    let mut planned = actions(&preview);
    planned.sort();
    assert_eq!(
        planned,
        [
            ("db01", "update", vec!["--interruptive"]),
            ("web01", "update", vec![]),
            ("web02", "update", vec![]),
            ("web03", "create", vec![]),
        ]
        .map(|(n, a, h)| (
            n.to_string(),
            a.to_string(),
            h.into_iter().map(String::from).collect()
        ))
        .to_vec(),
        "{preview:#}"
    );
    lab.json("sync", &["--detailed-exitcode"], 2);
    assert_eq!(
        api.port(&plan, "web01-eth0")["security_groups"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        api.volumes(&plan)
            .iter()
            .filter(|v| v["status"] == "in-use")
            .count(),
        2
    );
    assert_eq!(api.floating_ips(&plan).len(), 2);
    assert_eq!(api.server(&plan, "web03")["status"], "ACTIVE");
    assert_eq!(
        api.server(&plan, "db01")["flavor"]["original_name"],
        "m1.tiny",
        "held back"
    );
    lab.json("sync", &["--interruptive", "--detailed-exitcode"], 0);
    let db = api.server(&plan, "db01");
    assert_eq!(db["flavor"]["original_name"], "m1.small", "{db:#}");
    assert_eq!(db["status"], "ACTIVE");

    // Drift: web02's floating IP removed behind dopv's back is found and put back in place.
    let web02_fip = api
        .floating_ips(&plan)
        .into_iter()
        .find(|f| f["port_id"] == api.port(&plan, "web02-eth0")["id"])
        .unwrap();
    api.delete(&format!(
        "{}/floatingips/{}",
        api.network,
        web02_fip["id"].as_str().unwrap()
    ));
    lab.dopv.expect(&["refresh", &plan], 0);
    let drift = lab.shown("web02")["drift"].clone();
    assert_eq!(drift[0]["field"], "interfaces", "{drift:#}");
    let repaired = lab.json("sync", &["--detailed-exitcode"], 0);
    assert_eq!(
        actions(&repaired),
        [("web02".to_string(), "update".to_string(), vec![])]
    );
    assert_eq!(api.floating_ips(&plan).len(), 2);

    // v3: web02 moves to another address (a redeploy), web03 leaves the plan, web01's
    // `logs` disk leaves it: all three need --destructive.
    let web02_id = api.server(&plan, "web02")["id"].clone();
    lab.plan(
        &[
            web01("dop-web, dop-ssh", "data: {size: 1G}"),
            web02("10.99.0.22", ", floating_network: public"),
            db01("m1.small"),
        ]
        .concat(),
        &demo,
    );
    let held = lab.json("sync", &["--detailed-exitcode"], 2);
    assert!(
        actions(&held)
            .iter()
            .all(|(_, _, h)| h == &vec!["--destructive".to_string()]),
        "{held:#}"
    );
    assert_eq!(
        api.servers(&plan).len(),
        4,
        "nothing destroyed without --destructive"
    );
    lab.json("sync", &["--destructive", "--detailed-exitcode"], 0);
    assert_ne!(api.server(&plan, "web02")["id"], web02_id, "redeployed");
    assert_eq!(fixed_ips(&api.port(&plan, "web02-eth0")), ["10.99.0.22"]);
    assert!(api.servers(&plan).iter().all(|s| s["name"] != "web03"));
    assert!(api.ports(&plan).iter().all(|p| p["name"] != "web03-eth0"));
    assert_eq!(api.floating_ips(&plan).len(), 2);
    let volumes = api.volumes(&plan);
    assert_eq!(
        volumes.len(),
        1,
        "the dropped disk is deleted: {volumes:#?}"
    );
    assert_eq!(volumes[0]["metadata"]["dopv_disk"], "data");

    // Undeploy keeps the data disks (detached); a new deploy attaches the same volumes.
    let volume_ids = |api: &Api| -> Vec<String> {
        let mut ids: Vec<String> = api
            .volumes(&plan)
            .iter()
            .map(|v| v["id"].as_str().unwrap().to_string())
            .collect();
        ids.sort();
        ids
    };
    let kept = volume_ids(api);
    lab.json("undeploy", &[], 0);
    assert_eq!(api.counts(&plan), (0, 0, 0, 1), "only the data disk stays");
    assert!(api
        .volumes(&plan)
        .iter()
        .all(|v| v["status"] == "available"));
    lab.json("deploy", &[], 0);
    assert_eq!(volume_ids(api), kept, "the same volumes, attached again");
    assert!(api.volumes(&plan).iter().all(|v| v["status"] == "in-use"));
    lab.json("undeploy", &["--rmdisk"], 0);
    assert_eq!(
        api.counts(&plan),
        (0, 0, 0, 0),
        "nothing the plan made is left"
    );
}

#[test]
fn wrong_credentials_unknown_names_and_quotas_fail_clearly_and_leak_nothing() {
    let _turn = CLOUD.lock().unwrap_or_else(|e| e.into_inner());
    let Some(os) = cloud() else { return };
    let lab = Lab::new(os, "bad");
    let plan = lab.plan.clone();
    let ok = node(
        "ok01",
        "demo",
        "    flavor: m1.tiny\n    interfaces: {eth0: {network: dop-sub, ip: 10.99.0.31}}\n",
    );

    // A wrong password: dopv refuses before it touches any node.
    let mut wrong = lab.os.demo.clone();
    wrong.password = "not-the-password".into();
    lab.plan(&ok, &wrong);
    let out = lab.dopv.expect(&["deploy", &plan], 1);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("Keystone at")
            && stderr.contains("refused user 'demo' for project 'demo'")
            && stderr.contains("HTTP 401"),
        "{stderr}"
    );
    assert_eq!(lab.api.counts(&plan), (0, 0, 0, 0));

    // An unknown image and an unknown flavor fail their nodes, by name; a server no host can
    // take goes to ERROR and is removed with its port; the good node is made.
    let demo = lab.os.demo.clone();
    lab.plan(
        &[
            ok.clone(),
            node(
                "noimage",
                "demo",
                "    flavor: m1.tiny\n    interfaces: {eth0: {network: dop-sub, ip: 10.99.0.32}}\n",
            )
            .replace("image: cirros-fake", "image: no-such-image"),
            node(
                "noflavor",
                "demo",
                "    flavor: m9.huge\n    interfaces: {eth0: {network: dop-sub, ip: 10.99.0.33}}\n",
            ),
            node(
                "nohost",
                "demo",
                "    flavor: m1.nohost\n    interfaces: {eth0: {network: dop-sub, ip: 10.99.0.35}}\n",
            ),
        ]
        .concat(),
        &demo,
    );
    let report = lab.json("deploy", &[], 1);
    let mut r = results(&report);
    r.sort();
    assert_eq!(
        r,
        [
            ("noflavor", "failed"),
            ("nohost", "failed"),
            ("noimage", "failed"),
            ("ok01", "done")
        ]
        .map(|(n, r)| (n.to_string(), r.to_string()))
        .to_vec()
    );
    let e = error_of(&report, "noimage");
    assert!(
        e.contains("no image named 'no-such-image' is visible to project 'demo'"),
        "{e}"
    );
    let e = error_of(&report, "noflavor");
    assert!(
        e.contains("no flavor 'm9.huge'") && e.contains("m1.tiny"),
        "{e}"
    );
    let e = error_of(&report, "nohost");
    assert!(
        e.contains("went into ERROR") && e.contains("No valid host was found"),
        "{e}"
    );
    assert_eq!(lab.api.counts(&plan), (1, 1, 0, 0), "only ok01 was made");
    lab.json("undeploy", &[], 0);
    assert_eq!(lab.api.counts(&plan), (0, 0, 0, 0));

    // A project whose quota allows no server: the node fails with the cloud's reason, and
    // the port made before the server is removed again. (The project uses the shared network
    // without choosing addresses: only the network's owner may.)
    let quota = lab.os.quota.clone();
    let quota_api = Api::login(&lab.os, &quota);
    lab.plan(
        &node(
            "over",
            &quota.project,
            "    flavor: m1.tiny\n    interfaces: {eth0: {network: dop-sub, ip: dhcp}}\n",
        ),
        &quota,
    );
    let report = lab.json("deploy", &[], 1);
    let e = error_of(&report, "over");
    assert!(e.to_lowercase().contains("quota exceeded"), "{e}");
    assert_eq!(quota_api.counts(&plan), (0, 0, 0, 0), "nothing leaked: {e}");
    let shown = lab.shown("over");
    assert_eq!(shown["status"], "failed");
}

/// Runs `dopv deploy` in the background; returns its output once it ends (bounded).
fn finish(mut child: Running) -> Output {
    let start = Instant::now();
    loop {
        if child.0.try_wait().unwrap().is_some() {
            return child.wait_with_output();
        }
        if start.elapsed() > Duration::from_secs(180) {
            child.kill();
            panic!("dopv did not end within 180 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_stuck_build_and_a_silent_nova_api_fail_the_node_and_the_next_sync_repairs_it() {
    let _turn = CLOUD.lock().unwrap_or_else(|e| e.into_inner());
    let Some(os) = cloud() else { return };
    let lab = Lab::new(os, "stuck");
    let plan = lab.plan.clone();
    let demo = lab.os.demo.clone();
    lab.plan(
        &node(
            "slow01",
            "demo",
            "    flavor: m1.tiny\n    interfaces: {eth0: {network: dop-sub, ip: 10.99.0.41}}\n",
        ),
        &demo,
    );

    // nova-compute stops working: the server stays in BUILD past the wait timeout.
    {
        let _paused = lab.os.pause("nova-compute").unwrap();
        let report = lab.json("deploy", &["--wait-timeout", "5"], 1);
        let e = error_of(&report, "slow01");
        assert!(
            e.contains("did not become ACTIVE within 5 s; its last status: BUILD"),
            "{e}"
        );
    }
    let repaired = lab.json("sync", &[], 0);
    assert_eq!(
        results(&repaired),
        [("slow01".to_string(), "done".to_string())]
    );
    lab.api.until("one server left for slow01", || {
        lab.api.servers(&plan).len() == 1
    });
    assert_eq!(lab.api.server(&plan, "slow01")["status"], "ACTIVE");
    assert_eq!(lab.api.ports(&plan).len(), 1);
    lab.json("undeploy", &[], 0);
    assert_eq!(lab.api.counts(&plan), (0, 0, 0, 0));

    // The Nova API stops answering while the server builds: the node fails naming it.
    let report = {
        let _compute = lab.os.pause("nova-compute").unwrap();
        let child = Running::spawn(
            lab.dopv
                .command(&["deploy", &plan, "--api-timeout", "3", "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        );
        lab.api.until("dopv created the server", || {
            !lab.api.servers(&plan).is_empty()
        });
        let _api = lab.os.pause("nova-api").unwrap();
        let out = finish(child);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let e = error_of(&report, "slow01");
    assert!(
        e.contains("Nova (compute) did not answer") && e.contains("within 3 s"),
        "{e}"
    );
    let repaired = lab.json("sync", &[], 0);
    assert_eq!(
        results(&repaired),
        [("slow01".to_string(), "done".to_string())]
    );
    lab.api.until("one server left for slow01", || {
        lab.api.servers(&plan).len() == 1
    });
    assert_eq!(lab.api.ports(&plan).len(), 1);
    lab.json("undeploy", &[], 0);
    assert_eq!(lab.api.counts(&plan), (0, 0, 0, 0));
}

#[test]
fn a_server_of_the_same_name_that_dopv_did_not_make_is_never_touched() {
    let _turn = CLOUD.lock().unwrap_or_else(|e| e.into_inner());
    let Some(os) = cloud() else { return };
    let lab = Lab::new(os, "clash");
    let demo = lab.os.demo.clone();
    let plan = lab.plan.clone();
    let api = &lab.api;
    // Someone else's server, named as the plan's node (unique per run), without dopv's marks.
    let name = format!("theirs{}", std::process::id());
    let image =
        api.get(&format!("{}/v2/images?name=cirros-fake", api.image))["images"][0]["id"].clone();
    let flavor = api.get(&format!("{}/flavors", api.compute))["flavors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "m1.tiny")
        .unwrap()["id"]
        .clone();
    let network =
        api.get(&format!("{}/networks?name=dop-net", api.network))["networks"][0]["id"].clone();
    let theirs = api.post(
        &format!("{}/servers", api.compute),
        &json!({"server": {"name": name, "imageRef": image, "flavorRef": flavor,
            "networks": [{"uuid": network}]}}),
    )["server"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    struct Remove<'a>(&'a Api, String);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            self.0
                .delete(&format!("{}/servers/{}", self.0.compute, self.1));
        }
    }
    let _remove = Remove(api, theirs.clone());

    lab.plan(
        &node(
            &name,
            "demo",
            "    flavor: m1.tiny\n    interfaces: {eth0: {network: dop-sub, ip: 10.99.0.51}}\n",
        ),
        &demo,
    );
    let report = lab.json("deploy", &[], 1);
    let e = error_of(&report, &name);
    assert!(
        e.contains(&format!(
            "a server named '{name}' ({theirs}) exists in project 'demo' that dopv did not create"
        )),
        "{e}"
    );
    assert_eq!(
        api.counts(&plan),
        (0, 0, 0, 0),
        "the failed create left nothing"
    );
    // Undeploying the plan's node leaves their server alone.
    lab.json("undeploy", &[], 0);
    let still = api.get(&format!("{}/servers/{theirs}", api.compute));
    assert_eq!(still["server"]["id"], theirs.as_str(), "{still:#}");
}

#[test]
fn an_admin_who_sees_every_projects_names_gets_its_own_projects() {
    let _turn = CLOUD.lock().unwrap_or_else(|e| e.into_inner());
    let Some(os) = cloud() else { return };
    let admin = os.admin.clone();
    let lab = Lab::as_user(os, "admin", &admin);
    let plan = lab.plan.clone();
    // Every project has a security group `default`; the admin sees them all.
    let groups = lab
        .api
        .get(&format!("{}/security-groups?name=default", lab.api.network));
    assert!(
        groups["security_groups"].as_array().unwrap().len() > 1,
        "{groups:#}"
    );
    lab.plan(
        &node(
            "adm01",
            &admin.project,
            "    flavor: m1.tiny\n    interfaces: {eth0: {network: dop-sub, ip: dhcp}}\n",
        )
        .replace(
            "tenant: admin}",
            "tenant: admin, security_groups: [default]}",
        ),
        &admin,
    );
    let report = lab.json("deploy", &[], 0);
    assert_eq!(
        results(&report),
        [("adm01".to_string(), "done".to_string())]
    );
    let port = lab.api.port(&plan, "adm01-eth0");
    assert_eq!(port["security_groups"].as_array().unwrap().len(), 1);
    lab.json("undeploy", &[], 0);
    assert_eq!(lab.api.counts(&plan), (0, 0, 0, 0));
}
