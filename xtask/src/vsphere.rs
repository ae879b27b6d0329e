//! `cargo xtask vsphere up|down|status`: VMware's vCenter simulator on this machine for the
//! vSphere provider's integration tests (see `dop_testbed::vsphere`, which the tests use to
//! find it).
//!
//! vcsim comes from govmomi 0.24.2 as Debian 12 ships it: `golang-github-vmware-govmomi-dev`
//! has the libraries but leaves out the `vcsim` and `govc` main packages, which are in the
//! source package `golang-github-vmware-govmomi`. `up`:
//!
//! * installs `golang-go`, `golang-github-vmware-govmomi-dev` and `golang-github-kr-pretty-dev`
//!   (govc needs it) when missing;
//! * fetches the source package with `apt-get source --download-only` through an apt
//!   configuration of its own (`<dir>/apt/`: a sources list with one `deb-src` line for the
//!   system's Debian release and mirror, its own lists and cache): the system's sources and
//!   package lists stay as they are;
//! * builds `vcsim` and `govc` with `GOPATH=<dir>/gopath:/usr/share/gocode GO111MODULE=off go
//!   build` into `<dir>/bin` (about 25 s each); kept there, so the next `up` reuses them;
//! * starts vcsim on `127.0.82.1:18443` (plain HTTP) in a process group of its own, its pid in
//!   `<dir>/pids/vcsim.pid`, its output in `<dir>/log/vcsim.log`; marks the simulator's VM
//!   `DC0_C0_RP0_VM0` as a template with govc; writes `<dir>/testbed.json`.
//!
//! The directory is `$DOP_VSPHERE_DIR`, else `target/vsphere`. `down` removes testbed.json and
//! stops vcsim by pid (its inventory lives in memory: nothing else to clean); `status` prints
//! what runs and what is built.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dop_testbed::libvirt::live_pid;
use dop_testbed::openstack::alive;
use dop_testbed::process::rss_kib;
use dop_testbed::vsphere::{
    prepare_inventory, spawn_vcsim, url, wait_listening, Vsphere, CLUSTER, DATACENTER, DATASTORE,
    NETWORK, PASSWORD, PORT, TEMPLATE, TESTBED_JSON, USERNAME,
};
use dop_testbed::{signal, wait_for};
use serde_json::json;

use crate::host::{installed, mkdir, write};

/// What `up` installs when missing.
const PACKAGES: &[&str] = &[
    "golang-go",
    "golang-github-vmware-govmomi-dev",
    "golang-github-kr-pretty-dev",
];
/// Debian's source package with vcsim's and govc's main packages.
const SOURCE_PACKAGE: &str = "golang-github-vmware-govmomi";
/// The installed Go libraries (the `-dev` packages).
const GOCODE: &str = "/usr/share/gocode";
/// The import path of govmomi.
const GOVMOMI: &str = "github.com/vmware/govmomi";

/// `cargo xtask vsphere up|down|status`.
pub fn run(args: &[String]) -> Result<(), String> {
    let testbed = Testbed {
        dir: dop_testbed::vsphere::dir(),
    };
    match args.first().map(String::as_str) {
        Some("up") => testbed.up(),
        Some("down") => testbed.down(),
        Some("status") => testbed.status(),
        _ => Err("usage: cargo xtask vsphere up|down|status".into()),
    }
}

struct Testbed {
    dir: PathBuf,
}

impl Testbed {
    fn bin(&self, name: &str) -> PathBuf {
        self.dir.join("bin").join(name)
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("pids/vcsim.pid")
    }

    fn pid(&self) -> Option<u32> {
        live_pid(&self.pid_file(), &self.bin("vcsim").to_string_lossy())
    }

    fn testbed(&self) -> Vsphere {
        Vsphere {
            url: url(PORT),
            datacenter: DATACENTER.into(),
            cluster: CLUSTER.into(),
            datastore: DATASTORE.into(),
            network: NETWORK.into(),
            template: TEMPLATE.into(),
            username: USERNAME.into(),
            password: PASSWORD.into(),
            vcsim: self.bin("vcsim"),
            govc: self.bin("govc"),
            pid_file: self.pid_file(),
            dir: self.dir.clone(),
        }
    }

    // ---- up ----------------------------------------------------------------------------

    fn up(&self) -> Result<(), String> {
        let start = Instant::now();
        mkdir(&self.dir)?;
        phase("packages", || self.install())?;
        if !self.bin("vcsim").exists() || !self.bin("govc").exists() {
            let source = phase("source package", || self.fetch_source())?;
            phase("build vcsim and govc", || self.build(&source))?;
        }
        phase("vcsim", || self.start())?;
        phase("template", || prepare_inventory(&self.testbed()))?;
        self.write_testbed_json()?;
        println!(
            "vsphere: up in {:.1} s (vcsim pid {}, {} KiB resident, {}); {} describes it; stop \
             it with `cargo xtask vsphere down`",
            start.elapsed().as_secs_f64(),
            self.pid().unwrap_or_default(),
            self.pid().map_or(0, rss_kib),
            url(PORT),
            self.dir.join(TESTBED_JSON).display()
        );
        Ok(())
    }

    /// Installs the missing packages (as root; nothing when all are there).
    fn install(&self) -> Result<(), String> {
        let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(format!(
                "`cargo xtask vsphere up` installs {} with apt-get: run it as root",
                missing.join(" ")
            ));
        }
        let log = self.dir.join("install.log");
        println!(
            "vsphere: installing {} with apt-get, log in {}",
            missing.join(" "),
            log.display()
        );
        crate::host::apt(&log, &["update", "-q"])?;
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        args.extend(missing.iter().copied());
        crate::host::apt(&log, &args)
    }

    /// Downloads the source package through the private apt configuration and unpacks its
    /// upstream tarball; returns the unpacked tree (`govmomi-<version>`).
    fn fetch_source(&self) -> Result<PathBuf, String> {
        let apt_dir = self.dir.join("apt");
        let src = self.dir.join("src");
        for d in [
            apt_dir.join("lists/partial"),
            apt_dir.join("cache/archives/partial"),
            apt_dir.join("sources.list.d"),
            src.clone(),
        ] {
            mkdir(&d)?;
        }
        let (uri, signed_by, codename) = system_debian_source()?;
        let signed = signed_by
            .map(|k| format!(" [signed-by={k}]"))
            .unwrap_or_default();
        write(
            &apt_dir.join("sources.list"),
            &format!(
                "# cargo xtask vsphere up: the source package of vcsim only\n\
                 deb-src{signed} {uri} {codename} main\n"
            ),
        )?;
        let options: Vec<String> = [
            format!(
                "Dir::Etc::sourcelist={}",
                apt_dir.join("sources.list").display()
            ),
            format!(
                "Dir::Etc::sourceparts={}",
                apt_dir.join("sources.list.d").display()
            ),
            format!("Dir::State::Lists={}", apt_dir.join("lists").display()),
            format!("Dir::Cache={}", apt_dir.join("cache").display()),
            // The downloads go to a directory root owns; apt's sandbox user could not write
            // there.
            "APT::Sandbox::User=root".to_string(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_string(), o])
        .collect();
        let options: Vec<&str> = options.iter().map(String::as_str).collect();
        let log = self.dir.join("source.log");
        let _ = fs::remove_file(&log);
        let tarball = |src: &Path| {
            fs::read_dir(src).ok().and_then(|entries| {
                entries
                    .flatten()
                    .map(|e| e.path())
                    .find(|p| p.to_string_lossy().contains(".orig.tar."))
            })
        };
        if tarball(&src).is_none() {
            crate::host::apt_with(&log, &options, &["update", "-q"])?;
            let mut args = options.clone();
            args.extend(["source", "--download-only", "-q", SOURCE_PACKAGE]);
            crate::host::run_logged(
                Command::new("apt-get").args(&args).current_dir(&src),
                &log,
                "apt-get source --download-only",
            )?;
        }
        let tarball = tarball(&src).ok_or_else(|| {
            format!(
                "apt-get source fetched no upstream tarball of {SOURCE_PACKAGE} into {}",
                src.display()
            )
        })?;
        crate::host::run_logged(
            Command::new("tar")
                .arg("-xf")
                .arg(&tarball)
                .current_dir(&src),
            &log,
            "tar",
        )?;
        fs::read_dir(&src)
            .map_err(|e| format!("{}: {e}", src.display()))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.is_dir() && p.join("vcsim/main.go").exists())
            .ok_or_else(|| {
                format!(
                    "{}: no unpacked govmomi tree with vcsim/main.go",
                    src.display()
                )
            })
    }

    /// Builds vcsim and govc against the installed libraries: their main packages (and
    /// govc's command packages, which the `-dev` package leaves out) in a GOPATH of their own
    /// ahead of `/usr/share/gocode`, whose govmomi tree links to the installed one.
    fn build(&self, source: &Path) -> Result<(), String> {
        let gopath = self.dir.join("gopath");
        let tree = gopath.join("src").join(GOVMOMI);
        let _ = fs::remove_dir_all(&gopath);
        mkdir(&tree)?;
        for part in ["vcsim", "govc"] {
            copy_tree(&source.join(part), &tree.join(part))?;
        }
        // Go resolves an import path in the first GOPATH entry with its directory: the rest
        // of the installed govmomi tree is linked in beside them.
        let installed = Path::new(GOCODE).join("src").join(GOVMOMI);
        for entry in fs::read_dir(&installed)
            .map_err(|e| {
                format!(
                    "{}: {e} (is golang-github-vmware-govmomi-dev installed?)",
                    installed.display()
                )
            })?
            .flatten()
        {
            let target = tree.join(entry.file_name());
            if !target.exists() {
                std::os::unix::fs::symlink(entry.path(), &target)
                    .map_err(|e| format!("{}: {e}", target.display()))?;
            }
        }
        mkdir(&self.dir.join("bin"))?;
        let log = self.dir.join("build.log");
        let _ = fs::remove_file(&log);
        for part in ["vcsim", "govc"] {
            // Built next to it, then renamed: a half-written binary is never reused.
            let tmp = self.bin(&format!(".{part}.tmp"));
            crate::host::run_logged(
                Command::new("go")
                    .args(["build", "-o"])
                    .arg(&tmp)
                    .arg(format!("{GOVMOMI}/{part}"))
                    .env("GOPATH", format!("{}:{GOCODE}", gopath.display()))
                    .env("GO111MODULE", "off")
                    .env("GOFLAGS", "")
                    .env("GOCACHE", self.dir.join("go-cache"))
                    .current_dir(&gopath),
                &log,
                &format!("go build {part}"),
            )?;
            fs::rename(&tmp, self.bin(part)).map_err(|e| format!("{}: {e}", tmp.display()))?;
        }
        // Only the binaries are reused (170 MB of Go build cache are not worth keeping).
        let _ = fs::remove_dir_all(self.dir.join("go-cache"));
        let _ = fs::remove_dir_all(&gopath);
        Ok(())
    }

    /// Starts vcsim unless it runs (from an earlier `up`).
    fn start(&self) -> Result<(), String> {
        if self.pid().is_some() {
            return wait_listening(PORT);
        }
        mkdir(&self.dir.join("pids"))?;
        mkdir(&self.dir.join("log"))?;
        let child = spawn_vcsim(
            &self.bin("vcsim"),
            PORT,
            &self.dir.join("log/vcsim.log"),
            true,
        )?;
        write(&self.pid_file(), &format!("{}\n", child.id()))?;
        // The child outlives this process: it is not waited for here.
        std::mem::forget(child);
        wait_listening(PORT)
            .map_err(|e| format!("{e}; see {}", self.dir.join("log/vcsim.log").display()))
    }

    fn write_testbed_json(&self) -> Result<(), String> {
        let vs = self.testbed();
        let testbed = json!({
            "url": vs.url,
            "datacenter": vs.datacenter,
            "cluster": vs.cluster,
            "datastore": vs.datastore,
            "network": vs.network,
            "template": vs.template,
            "username": vs.username,
            "password": vs.password,
            "vcsim": vs.vcsim,
            "govc": vs.govc,
            "pid_file": vs.pid_file,
        });
        let text = serde_json::to_string_pretty(&testbed).map_err(|e| e.to_string())?;
        // Written whole, then renamed: a test never reads half a file.
        let tmp = self.dir.join(format!("{TESTBED_JSON}.tmp"));
        write(&tmp, &format!("{text}\n"))?;
        fs::rename(&tmp, self.dir.join(TESTBED_JSON)).map_err(|e| e.to_string())
    }

    // ---- down --------------------------------------------------------------------------

    fn down(&self) -> Result<(), String> {
        let start = Instant::now();
        // First, so that no test finds a testbed that is going away.
        let _ = fs::remove_file(self.dir.join(TESTBED_JSON));
        let stopped = match self.pid() {
            Some(pid) => {
                signal(pid, libc::SIGTERM);
                if wait_for(Duration::from_secs(10), || !alive(pid)).is_err() {
                    signal(pid, libc::SIGKILL);
                    wait_for(Duration::from_secs(10), || !alive(pid))
                        .map_err(|()| format!("vcsim (pid {pid}) still runs after SIGKILL"))?;
                }
                1
            }
            None => 0,
        };
        let _ = fs::remove_file(self.pid_file());
        println!(
            "vsphere: down in {:.1} s ({stopped} vcsim stopped; the binaries in {} stay)",
            start.elapsed().as_secs_f64(),
            self.dir.join("bin").display()
        );
        Ok(())
    }

    // ---- status ------------------------------------------------------------------------

    fn status(&self) -> Result<(), String> {
        for part in ["vcsim", "govc"] {
            let bin = self.bin(part);
            println!(
                "{part}: {}",
                if bin.exists() {
                    format!("built ({})", bin.display())
                } else {
                    "not built".to_string()
                }
            );
        }
        match self.pid() {
            Some(pid) => println!(
                "vcsim: runs (pid {pid}, {} KiB resident) on {}",
                rss_kib(pid),
                url(PORT)
            ),
            None => println!("vcsim: not running"),
        }
        match Vsphere::find_in(&self.dir) {
            Ok(vs) => {
                let vms = vs.govc_run(&["find", "/", "-type", "m"])?;
                println!("virtual machines:\n{}", vms.trim_end());
            }
            Err(why) => println!("testbed: {why}"),
        }
        Ok(())
    }
}

/// The Debian mirror, its key ring and the release of the system's own `deb` sources
/// (deb822 `.sources` files or one-line lists), for the private `deb-src` line.
fn system_debian_source() -> Result<(String, Option<String>, String), String> {
    let codename = fs::read_to_string("/etc/os-release")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_string())
        .filter(|c| !c.is_empty())
        .ok_or("/etc/os-release names no VERSION_CODENAME: not a Debian release")?;
    let mut files: Vec<PathBuf> = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for file in &files {
        let text = fs::read_to_string(file).unwrap_or_default();
        let found = if file.extension().is_some_and(|e| e == "sources") {
            deb822_source(&text, &codename)
        } else if file.extension().is_some_and(|e| e == "list") {
            one_line_source(&text, &codename)
        } else {
            None
        };
        if let Some((uri, key)) = found {
            return Ok((uri, key, codename));
        }
    }
    Err(format!(
        "no apt source of the Debian release '{codename}' (suite {codename}, component main) \
         in /etc/apt/sources.list or /etc/apt/sources.list.d: vcsim's source package comes \
         from the system's Debian mirror"
    ))
}

/// The URI and `Signed-By` of the first deb822 stanza with `Suites: <codename>` and `main`.
fn deb822_source(text: &str, codename: &str) -> Option<(String, Option<String>)> {
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().to_string())
            })
        };
        let suites = field("Suites").unwrap_or_default();
        let components = field("Components").unwrap_or_default();
        if field("Enabled").is_some_and(|e| e == "no")
            || !field("Types")
                .unwrap_or_default()
                .split_whitespace()
                .any(|t| t == "deb")
            || !suites.split_whitespace().any(|s| s == codename)
            || !components.split_whitespace().any(|c| c == "main")
        {
            continue;
        }
        let uri = field("URIs")?.split_whitespace().next()?.to_string();
        return Some((uri, field("Signed-By")));
    }
    None
}

/// The URI and `signed-by` of the first `deb [opts] URI <codename> … main` line.
fn one_line_source(text: &str, codename: &str) -> Option<(String, Option<String>)> {
    for line in text.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("deb ") else {
            continue;
        };
        let (options, rest) = match rest.trim_start().strip_prefix('[') {
            Some(r) => r.split_once(']')?,
            None => ("", rest),
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        if words.len() >= 3 && words[1] == codename && words[2..].contains(&"main") {
            let key = options
                .split_whitespace()
                .find_map(|o| o.strip_prefix("signed-by="))
                .map(str::to_string);
            return Some((words[0].to_string(), key));
        }
    }
    None
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    mkdir(to)?;
    for entry in fs::read_dir(from).map_err(|e| format!("{}: {e}", from.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            fs::copy(entry.path(), &target).map_err(|e| format!("{}: {e}", target.display()))?;
        }
    }
    Ok(())
}

fn phase<T>(name: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let start = Instant::now();
    let result = f();
    let failed = if result.is_err() { " (failed)" } else { "" };
    println!(
        "vsphere: {name}: {:.1} s{failed}",
        start.elapsed().as_secs_f64()
    );
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mirror_is_read_from_deb822_and_one_line_sources() {
        let deb822 = "Types: deb\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\n\
                      Components: main\nSigned-By: /usr/share/keyrings/k.gpg\n\n\
                      Types: deb\nURIs: http://mirror.invalid/debian-security\nSuites: bookworm-security\nComponents: main\n";
        assert_eq!(
            deb822_source(deb822, "bookworm"),
            Some((
                "http://mirror.invalid/debian".into(),
                Some("/usr/share/keyrings/k.gpg".into())
            ))
        );
        assert_eq!(deb822_source(deb822, "trixie"), None);
        let disabled = "Enabled: no\nTypes: deb\nURIs: http://m.invalid/d\nSuites: bookworm\nComponents: main\n";
        assert_eq!(deb822_source(disabled, "bookworm"), None);
        let lines = "# comment\ndeb http://other.invalid/x nodistro main\n\
                     deb [arch=amd64 signed-by=/k.gpg] http://mirror.invalid/debian bookworm main contrib\n";
        assert_eq!(
            one_line_source(lines, "bookworm"),
            Some(("http://mirror.invalid/debian".into(), Some("/k.gpg".into())))
        );
        assert_eq!(
            one_line_source("deb http://m.invalid/d bookworm contrib\n", "bookworm"),
            None
        );
    }
}
