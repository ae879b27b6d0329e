//! `cargo xtask libvirt up|down|status`: a libvirt on this machine for the libvirt provider's
//! integration tests (see `dop_testbed::libvirt`, which the tests use to find it).
//!
//! Debian 12's libvirt 9 and QEMU 7.2: guests run in software emulation (TCG; no KVM needed),
//! each on QEMU's user-mode network (the provider forwards a loopback address's port to the
//! guest's sshd), so nothing but loopback is touched and libvirt's `default` network is never
//! started.
//!
//! * `up` installs the missing Debian packages, builds the guest image (`cargo xtask
//!   vm-image`), starts virtlogd and libvirtd daemonized by pid (no systemd; a libvirtd that
//!   already runs is reused), defines and starts the directory storage pool `dop-test` at
//!   `/var/lib/libvirt/images/dop-test` (QEMU runs as `libvirt-qemu`, which must reach it)
//!   holding the image as the volume `dop-guest.raw` (replaced when the image changed), and
//!   writes `<dir>/testbed.json` for the tests. The directory is `$DOP_LIBVIRT_DIR`, else
//!   `target/libvirt`: pid files in `pids/`, the daemons' warnings in `log/`, the image in
//!   `image/`.
//! * `down` destroys and undefines every domain dopv marked (its `<metadata>` has the
//!   namespace `https://dop.invalid/dopv/libvirt/1`), kills the QEMU processes of those
//!   domains libvirt lost track of (by the pids under `/run/libvirt/qemu`; other domains'
//!   never), deletes the pool's volumes but the image, stops libvirtd and virtlogd by pid
//!   (also ones `up` found running and reused) and checks that they are gone. The image and
//!   the pool stay, so the next `up` takes seconds. Fine when nothing runs. This takes over
//!   the machine's libvirt: a testbed for CI machines and sandboxes, not for a workstation
//!   whose own virtual machines matter.
//! * `status` prints the daemons, the pool, its volumes and the domains.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dop_testbed::libvirt::{
    libvirtd_answers, live_pid, pids_of, virsh_answers, Daemons, CONSOLE_DIR, IMAGE, LIBVIRTD,
    METADATA_NAMESPACE, POOL, POOL_PATH, TESTBED_JSON, URI, VIRTLOGD,
};
use dop_testbed::openstack::alive;
use dop_testbed::process::rss_kib;
use dop_testbed::{signal, wait_for};
use serde_json::json;

use crate::host::{apt, installed, mkdir, no_service_starts, write};
use crate::vm_image;

/// What `up` installs when missing (`.ci/install-deps` installs libvirt-dev and pkg-config,
/// which the provider's build needs). `qemu-utils` is taken from the release itself: a newer
/// one from backports would block `qemu-system-x86`.
const PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-utils",
    "libvirt-daemon-system",
    "libvirt-daemon-driver-qemu",
    "libvirt-clients",
    "busybox-static",
    "dropbear-bin",
    "cpio",
    "syslinux",
    "syslinux-common",
    "mtools",
    "dosfstools",
];

/// Where libvirt keeps the pids of the QEMU processes it started (`<domain>.pid`).
const QEMU_PID_DIR: &str = "/run/libvirt/qemu";
/// libvirt's autostart link of its `default` network (NAT, dnsmasq, firewall rules): never
/// started here.
const DEFAULT_NETWORK_AUTOSTART: &str = "/etc/libvirt/qemu/networks/autostart/default.xml";

/// `cargo xtask libvirt up|down|status`.
pub fn run(args: &[String]) -> Result<(), String> {
    let testbed = Testbed {
        dir: dop_testbed::libvirt::dir(),
    };
    match args.first().map(String::as_str) {
        Some("up") => testbed.up(),
        Some("down") => testbed.down(),
        Some("status") => testbed.status(),
        _ => Err("usage: cargo xtask libvirt up|down|status".into()),
    }
}

struct Testbed {
    dir: PathBuf,
}

impl Testbed {
    fn daemons(&self) -> Daemons {
        Daemons::in_dir(&self.dir)
    }

    // ---- up ----------------------------------------------------------------------------

    fn up(&self) -> Result<(), String> {
        let start = Instant::now();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(
                "`cargo xtask libvirt up` installs packages and starts libvirtd as \
                        root: run it as root"
                    .into(),
            );
        }
        mkdir(&self.dir)?;
        phase("packages", || self.install())?;
        let image = phase("image", || vm_image::build(&self.dir))?;
        phase("virtlogd and libvirtd", || self.start_daemons())?;
        phase("storage pool", || self.pool())?;
        phase("image volume", || self.volume(&image))?;
        self.write_testbed_json()?;
        let daemons = self.daemons();
        println!(
            "libvirt: up in {:.1} s (libvirtd pid {}, virtlogd pid {}); {} describes it; stop it \
             with `cargo xtask libvirt down`",
            start.elapsed().as_secs_f64(),
            daemons.libvirtd_pid().unwrap_or_default(),
            daemons.virtlogd_pid().unwrap_or_default(),
            self.dir.join(TESTBED_JSON).display()
        );
        Ok(())
    }

    /// Installs the missing packages (none start a service: policy-rc.d says no).
    fn install(&self) -> Result<(), String> {
        let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let log = self.dir.join("install.log");
        println!(
            "libvirt: installing {} with apt-get, log in {}",
            missing.join(" "),
            log.display()
        );
        let codename = fs::read_to_string("/etc/os-release")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
            .map(|c| c.trim_matches('"').to_string())
            .unwrap_or_default();
        let mut packages: Vec<String> = missing.iter().map(|p| (*p).to_string()).collect();
        if !codename.is_empty() {
            // The release's qemu-utils, even over a newer one (--allow-downgrades).
            packages.retain(|p| p != "qemu-utils");
            packages.push(format!("qemu-utils/{codename}"));
        }
        apt(&log, &["update", "-q"])?;
        let _guard = no_service_starts("cargo xtask libvirt up")?;
        let mut args = vec![
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "--allow-downgrades",
        ];
        args.extend(packages.iter().map(String::as_str));
        apt(&log, &args)
    }

    /// Starts virtlogd and libvirtd unless they run (ours from an earlier `up`, or ones
    /// started by hand, whose pids are then recorded as ours).
    fn start_daemons(&self) -> Result<(), String> {
        let daemons = self.daemons();
        for (binary, pid_file, running) in [
            (VIRTLOGD, &daemons.virtlogd_pid_file, daemons.virtlogd_pid()),
            (LIBVIRTD, &daemons.libvirtd_pid_file, daemons.libvirtd_pid()),
        ] {
            if running.is_some() {
                continue;
            }
            if let Some(pid) = pids_of(binary).first() {
                println!("libvirt: {binary} runs already (pid {pid}): reused");
                mkdir(pid_file.parent().unwrap_or(Path::new("/")))?;
                write(pid_file, &format!("{pid}\n"))?;
            }
        }
        if Path::new(DEFAULT_NETWORK_AUTOSTART).exists() {
            println!(
                "libvirt: removing {DEFAULT_NETWORK_AUTOSTART}: libvirt's default network \
                 (NAT, dnsmasq) must not start"
            );
            let _ = fs::remove_file(DEFAULT_NETWORK_AUTOSTART);
        }
        daemons.start_virtlogd()?;
        daemons.start_libvirtd()
    }

    /// The storage pool, defined, built, started and autostarted.
    fn pool(&self) -> Result<(), String> {
        mkdir(Path::new(POOL_PATH))?;
        if virsh(&["pool-info", POOL]).is_err() {
            virsh(&["pool-define-as", POOL, "dir", "--target", POOL_PATH])?;
            virsh(&["pool-build", POOL])?;
        }
        let info = virsh(&["pool-info", POOL])?;
        if field(&info, "State") != Some("running") {
            virsh(&["pool-start", POOL])?;
        }
        if field(&info, "Autostart") != Some("yes") {
            virsh(&["pool-autostart", POOL])?;
        }
        let xml = virsh(&["pool-dumpxml", POOL])?;
        if !xml.contains(&format!("<path>{POOL_PATH}</path>")) {
            return Err(format!(
                "the pool {POOL} exists with another directory than {POOL_PATH}: \
                 `virsh pool-destroy {POOL}; virsh pool-undefine {POOL}` and run up again"
            ));
        }
        Ok(())
    }

    /// The image as the pool's volume [`IMAGE`]: copied when it is missing or differs (never
    /// while other volumes, which may be backed by it, exist).
    fn volume(&self, image: &Path) -> Result<(), String> {
        let volume = Path::new(POOL_PATH).join(IMAGE);
        let built = fs::read(image).map_err(|e| format!("{}: {e}", image.display()))?;
        if fs::read(&volume).is_ok_and(|v| v == built) {
            virsh(&["pool-refresh", POOL])?;
            return Ok(());
        }
        if volume.exists() {
            let others: Vec<String> = self.volumes()?.into_iter().filter(|v| v != IMAGE).collect();
            if !others.is_empty() {
                return Err(format!(
                    "the image changed but the pool still holds volumes that may be backed by \
                     the old one ({}): `cargo xtask libvirt down` first",
                    others.join(", ")
                ));
            }
            println!("libvirt: the image changed: replacing the volume {IMAGE}");
        }
        // Written next to it, then renamed: the pool never lists half an image.
        let tmp = Path::new(POOL_PATH).join(format!(".{IMAGE}.tmp"));
        fs::write(&tmp, &built).map_err(|e| format!("{}: {e}", tmp.display()))?;
        fs::rename(&tmp, &volume).map_err(|e| format!("{}: {e}", volume.display()))?;
        virsh(&["pool-refresh", POOL])?;
        virsh(&["vol-info", "--pool", POOL, IMAGE])?;
        Ok(())
    }

    fn write_testbed_json(&self) -> Result<(), String> {
        let daemons = self.daemons();
        let testbed = json!({
            "uri": URI,
            "pool": POOL,
            "pool_path": POOL_PATH,
            "image": IMAGE,
            "image_format": "raw",
            "console_dir": CONSOLE_DIR,
            "libvirtd_pid_file": daemons.libvirtd_pid_file,
            "virtlogd_pid_file": daemons.virtlogd_pid_file,
            "log_dir": daemons.log_dir,
            "metadata_namespace": METADATA_NAMESPACE,
            "guest_user": "root",
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
        let daemons = self.daemons();
        let mut marked = Vec::new();
        let mut volumes = 0;
        // libvirtd gone (killed by a test, crashed) while a testbed existed: started again for
        // the clean-up, else dopv's domains would stay defined for the next `up`.
        let answers = daemons.libvirtd_pid().is_some() && libvirtd_answers();
        if !answers
            && pids_of(LIBVIRTD).is_empty()
            && Path::new(POOL_PATH).is_dir()
            && Path::new(LIBVIRTD).exists()
        {
            println!("libvirt: libvirtd does not run: starting it to remove dopv's domains");
            if let Err(e) = daemons
                .start_virtlogd()
                .and_then(|()| daemons.start_libvirtd())
            {
                eprintln!("libvirt: {e}");
            }
        }
        if daemons.libvirtd_pid().is_some() && libvirtd_answers() {
            marked = self.remove_marked_domains();
            volumes = self.remove_volumes();
        } else {
            eprintln!("libvirt: libvirtd cannot be asked which domains are dopv's: none removed");
        }
        let domains = marked.len();
        // QEMU processes of dopv's domains that libvirt lost track of; never anyone else's.
        let killed = kill_qemu_processes(&marked);
        // Volumes libvirt did not get to (it was not running): the files themselves.
        for entry in fs::read_dir(POOL_PATH).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name != IMAGE && entry.path().is_file() && fs::remove_file(entry.path()).is_ok() {
                volumes += 1;
            }
        }
        let mut stopped = usize::from(daemons.libvirtd_pid().is_some())
            + usize::from(daemons.virtlogd_pid().is_some());
        daemons.stop_libvirtd()?;
        daemons.stop_virtlogd()?;
        // Daemons no pid file leads to (started by hand, a pid file lost): by their binary.
        for binary in [LIBVIRTD, VIRTLOGD] {
            for pid in pids_of(binary) {
                eprintln!("libvirt: stopping {binary} (pid {pid}) that no pid file names");
                signal(pid, libc::SIGTERM);
                stopped += 1;
                if wait_for(Duration::from_secs(30), || !alive(pid)).is_err() {
                    signal(pid, libc::SIGKILL);
                }
            }
        }
        let _ = wait_for(Duration::from_secs(5), || {
            pids_of(LIBVIRTD).is_empty() && pids_of(VIRTLOGD).is_empty()
        });
        let still: Vec<u32> = [LIBVIRTD, VIRTLOGD]
            .iter()
            .flat_map(|b| pids_of(b))
            .chain(
                qemu_pids()
                    .into_iter()
                    .filter(|(_, domain)| marked.contains(domain))
                    .map(|(pid, _)| pid),
            )
            .collect();
        if !still.is_empty() {
            return Err(format!("libvirt processes still run: {still:?}"));
        }
        let _ = fs::remove_file(&daemons.libvirtd_pid_file);
        let _ = fs::remove_file(&daemons.virtlogd_pid_file);
        println!(
            "libvirt: down in {:.1} s ({domains} marked domain(s) removed, {killed} QEMU \
             process(es) killed, {volumes} volume(s) deleted, {stopped} daemon(s) stopped; the \
             image and the pool stay)",
            start.elapsed().as_secs_f64(),
        );
        Ok(())
    }

    /// Destroys and undefines every domain dopv marked; returns their names.
    fn remove_marked_domains(&self) -> Vec<String> {
        let mut removed = Vec::new();
        for name in domain_names() {
            let Ok(xml) = virsh(&["dumpxml", &name]) else {
                continue;
            };
            if !xml.contains(METADATA_NAMESPACE) {
                println!("libvirt: domain {name} is not dopv's (no mark): left alone");
                continue;
            }
            let _ = virsh(&["destroy", &name]);
            // A transient domain is gone once destroyed; a defined one is undefined.
            if virsh(&["dominfo", &name]).is_ok() {
                if let Err(e) =
                    virsh(&["undefine", &name, "--managed-save", "--snapshots-metadata"])
                {
                    eprintln!("libvirt: {e}");
                }
            }
            removed.push(name);
        }
        removed
    }

    /// Deletes every volume of the pool but the image; returns how many.
    fn remove_volumes(&self) -> usize {
        let _ = virsh(&["pool-refresh", POOL]);
        let mut removed = 0;
        for name in self.volumes().unwrap_or_default() {
            if name == IMAGE {
                continue;
            }
            match virsh(&["vol-delete", "--pool", POOL, &name]) {
                Ok(_) => removed += 1,
                Err(e) => eprintln!("libvirt: {e}"),
            }
        }
        removed
    }

    fn volumes(&self) -> Result<Vec<String>, String> {
        let list = virsh(&["vol-list", "--pool", POOL])?;
        // Name and path columns, after a header and a rule.
        Ok(list
            .lines()
            .skip(2)
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_string)
            .collect())
    }

    // ---- status ------------------------------------------------------------------------

    fn status(&self) -> Result<(), String> {
        let daemons = self.daemons();
        let mut down = 0;
        for (name, binary, pid_file) in [
            ("virtlogd", VIRTLOGD, &daemons.virtlogd_pid_file),
            ("libvirtd", LIBVIRTD, &daemons.libvirtd_pid_file),
        ] {
            let recorded = fs::read_to_string(pid_file)
                .ok()
                .map(|p| p.trim().to_string());
            let state = match live_pid(pid_file, binary) {
                Some(_) if binary == LIBVIRTD && !virsh_answers(URI) => {
                    down += 1;
                    "running, NOT answering".to_string()
                }
                Some(_) if binary == LIBVIRTD => format!("running, answers on {URI}"),
                Some(_) => "running".to_string(),
                None => {
                    down += 1;
                    let others = pids_of(binary);
                    if others.is_empty() {
                        "not running".to_string()
                    } else {
                        format!("not running (but {binary} runs as {others:?}, not ours)")
                    }
                }
            };
            println!(
                "{name:<9} pid {:<8} {state}",
                recorded.unwrap_or_else(|| "-".into())
            );
        }
        if down > 0 {
            return Err("the testbed is not up (`cargo xtask libvirt up` starts it)".into());
        }
        match virsh(&["pool-info", POOL]) {
            Ok(info) => println!(
                "pool      {POOL} {} at {POOL_PATH}, {} available",
                field(&info, "State").unwrap_or("?"),
                field(&info, "Available").unwrap_or("?")
            ),
            Err(e) => println!("pool      {POOL} missing: {e}"),
        }
        let volumes = self.volumes().unwrap_or_default();
        println!("volumes   {}", volumes.join(" "));
        let qemu = qemu_pids();
        for name in domain_names() {
            let state = virsh(&["domstate", &name]).unwrap_or_default();
            let marked = virsh(&["dumpxml", &name]).is_ok_and(|x| x.contains(METADATA_NAMESPACE));
            let process = qemu
                .iter()
                .find(|(_, domain)| *domain == name)
                .map(|(pid, _)| format!(", qemu pid {pid}, {} MiB RSS", rss_kib(*pid) / 1024))
                .unwrap_or_default();
            println!(
                "domain    {name} {}{}{process}",
                state.trim(),
                if marked { ", dopv's" } else { "" }
            );
        }
        let json = self.dir.join(TESTBED_JSON);
        println!(
            "{} {}",
            json.display(),
            if json.exists() { "present" } else { "MISSING" }
        );
        Ok(())
    }
}

/// Runs `virsh -c qemu:///system <args>`; its standard output, or its error.
fn virsh(args: &[&str]) -> Result<String, String> {
    let out = Command::new("virsh")
        .args(["-c", URI])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run virsh: {e} (install libvirt-clients)"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "virsh {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Every domain's name, running or not.
fn domain_names() -> Vec<String> {
    virsh(&["list", "--all", "--name"])
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// A `Key:   value` line of `virsh pool-info`.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim())
    })
}

/// The QEMU processes libvirt started, from its pid files: (pid, domain).
fn qemu_pids() -> Vec<(u32, String)> {
    fs::read_dir(QEMU_PID_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let path = e.path();
            let domain = path
                .file_name()?
                .to_str()?
                .strip_suffix(".pid")?
                .to_string();
            let pid: u32 = fs::read_to_string(&path).ok()?.trim().parse().ok()?;
            let is_qemu = fs::read_link(format!("/proc/{pid}/exe"))
                .ok()?
                .file_name()?
                .to_string_lossy()
                .starts_with("qemu-system-");
            (alive(pid) && is_qemu).then_some((pid, domain))
        })
        .collect()
}

/// Kills the QEMU processes of `domains` that still run (SIGTERM, SIGKILL after 5 s);
/// returns how many.
fn kill_qemu_processes(domains: &[String]) -> usize {
    let left: Vec<(u32, String)> = qemu_pids()
        .into_iter()
        .filter(|(_, domain)| domains.contains(domain))
        .collect();
    for (pid, domain) in &left {
        eprintln!("libvirt: killing QEMU of domain {domain} (pid {pid})");
        signal(*pid, libc::SIGTERM);
    }
    if wait_for(Duration::from_secs(5), || {
        left.iter().all(|(pid, _)| !alive(*pid))
    })
    .is_err()
    {
        for (pid, _) in &left {
            signal(*pid, libc::SIGKILL);
        }
        let _ = wait_for(Duration::from_secs(5), || {
            left.iter().all(|(pid, _)| !alive(*pid))
        });
    }
    left.len()
}

/// Prints how long a phase of `up` took.
fn phase<T>(name: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let start = Instant::now();
    let result = f();
    let failed = if result.is_err() { " (failed)" } else { "" };
    println!(
        "libvirt: {name}: {:.1} s{failed}",
        start.elapsed().as_secs_f64()
    );
    result
}

#[cfg(test)]
mod tests {
    #[test]
    fn pool_info_fields_are_read() {
        let info = "Name:           dop-test\nUUID:           x\nState:          running\n\
                    Persistent:     yes\nAutostart:      no\nAvailable:      52.93 GiB\n";
        assert_eq!(super::field(info, "State"), Some("running"));
        assert_eq!(super::field(info, "Autostart"), Some("no"));
        assert_eq!(super::field(info, "Available"), Some("52.93 GiB"));
        assert_eq!(super::field(info, "Missing"), None);
    }

    #[test]
    fn the_packages_cover_the_image_tools() {
        for package in super::vm_image::tool_packages() {
            assert!(super::PACKAGES.contains(&package), "{package}");
        }
    }
}
