//! `cargo xtask puppet up|down|status`: a Puppet server on this machine for the Puppet tests
//! (see `dop_testbed::puppet`, which the tests use to find it).
//!
//! Debian 12's `puppetserver` 7.9, a JVM run by pid (no systemd) with a small heap
//! (`-Xms256m -Xmx768m`, one JRuby instance) on `127.0.81.1:8140`. Everything it reads and
//! writes is in the bed's directory (`$DOP_PUPPET_DIR`, else `target/puppet`), never
//! `/etc/puppet`:
//!
//! ```text
//! conf.d/            the server's configuration (auth.conf, web routes and metrics from the
//!                    package; address, port, directories and heap of our own)
//! puppet/puppet.conf its Puppet settings: certname, ssldir, cadir, codedir, autosign
//! ssl/ ssl/ca/       its certificate and the CA (made on the first start)
//! code/environments/production/   site.pp (a role class per node), modules/role, hiera.yaml
//! hiera/             the Hiera data dop writes (the tests' `hiera_dir`)
//! autosign           the CA's policy executable: dop-puppet-autosign of this workspace's build
//! log/ pids/ run/    the server's and the autosign decisions' logs, its pid, its restart file
//! testbed.json       what the tests read (written last, once the server answers)
//! ```
//!
//! * `up` installs `puppetserver` when missing, builds `dop-puppet-autosign`, writes the
//!   configuration, starts the server (unless it runs), waits until it says it started (its
//!   restart file) and accepts connections, and writes `testbed.json`.
//! * `down` removes `testbed.json`, stops the server by pid (SIGTERM, SIGKILL after 60 s) and
//!   removes the CA, the agents' certificates and the Hiera data, so the next `up` starts
//!   afresh. Fine when nothing runs.
//! * `status` prints the server's pid, whether it answers, its memory and the signed
//!   certificates.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dop_testbed::openstack::alive;
use dop_testbed::process::rss_kib;
use dop_testbed::puppet::{
    answers, ADDRESS, AUTOSIGN, CERTNAME, JAVA, PORT, ROLE_FILE, TESTBED_JSON, VALUE_KEY,
};
use dop_testbed::{signal, wait_for};
use serde_json::json;

use crate::host::{apt, installed, mkdir, no_service_starts, root, write};

/// The package `up` installs when missing.
const PACKAGE: &str = "puppetserver";
/// The server's program (the package's jar) and the package's files `up` takes as they are.
const JAR: &str = "/usr/share/puppetserver/puppetserver.jar";
const PACKAGE_CONF: &str = "/etc/puppet/puppetserver/conf.d";
const BOOTSTRAP: &str = "/etc/puppet/puppetserver/services.d";
/// The heap: a 2-core machine that also builds and runs the other tests.
const HEAP: [&str; 2] = ["-Xms256m", "-Xmx768m"];
/// How long the server may take to start: Debian's server compiles its Clojure sources on
/// every start, which takes minutes on a busy 2-core machine (its systemd unit allows 300 s).
const START_TIMEOUT: Duration = Duration::from_secs(600);

/// `cargo xtask puppet up|down|status`.
pub fn run(args: &[String]) -> Result<(), String> {
    let bed = Bed {
        dir: dop_testbed::puppet::dir(),
    };
    match args.first().map(String::as_str) {
        Some("up") => bed.up(),
        Some("down") => bed.down(),
        Some("status") => bed.status(),
        _ => Err("usage: cargo xtask puppet up|down|status".into()),
    }
}

struct Bed {
    dir: PathBuf,
}

impl Bed {
    fn path(&self, relative: &str) -> PathBuf {
        self.dir.join(relative)
    }

    fn pid_file(&self) -> PathBuf {
        self.path("pids/puppetserver.pid")
    }

    fn pid(&self) -> Option<u32> {
        dop_testbed::libvirt::live_pid(&self.pid_file(), JAVA)
    }

    // ---- up ----------------------------------------------------------------------------

    fn up(&self) -> Result<(), String> {
        let start = Instant::now();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(
                "`cargo xtask puppet up` installs puppetserver and starts it as root (the \
                 local nodes its agents run on need root too): run it as root"
                    .into(),
            );
        }
        mkdir(&self.dir)?;
        phase("package", || self.install())?;
        let autosign = phase("dop-puppet-autosign", build_autosign)?;
        phase("configuration", || self.configure(&autosign))?;
        phase("server", || self.start())?;
        self.write_testbed_json()?;
        println!(
            "puppet: up in {:.1} s (puppetserver pid {}, {ADDRESS}:{PORT}); {} describes it; \
             stop it with `cargo xtask puppet down`",
            start.elapsed().as_secs_f64(),
            self.pid().unwrap_or_default(),
            self.path(TESTBED_JSON).display()
        );
        Ok(())
    }

    fn install(&self) -> Result<(), String> {
        if installed(PACKAGE) && Path::new(JAR).exists() {
            return Ok(());
        }
        let log = self.path("install.log");
        println!(
            "puppet: installing {PACKAGE} with apt-get, log in {}",
            log.display()
        );
        apt(&log, &["update", "-q"])?;
        let _guard = no_service_starts("cargo xtask puppet up")?;
        apt(
            &log,
            &["install", "-y", "-q", "--no-install-recommends", PACKAGE],
        )
    }

    /// Writes the server's configuration, its Puppet settings and its code.
    fn configure(&self, autosign: &Path) -> Result<(), String> {
        let d = |p: &str| self.path(p).display().to_string();
        for sub in [
            "conf.d",
            "puppet",
            "ssl",
            "var",
            "run",
            "log",
            "pids",
            "hiera",
            "code/environments/production/manifests",
            "code/environments/production/modules/role/manifests",
        ] {
            mkdir(&self.path(sub))?;
        }
        // The package's authorization rules, web routes and metrics, unchanged.
        for file in ["auth.conf", "web-routes.conf", "metrics.conf"] {
            let from = Path::new(PACKAGE_CONF).join(file);
            fs::copy(&from, self.path("conf.d").join(file))
                .map_err(|e| format!("{}: {e} (is {PACKAGE} installed?)", from.display()))?;
        }
        let files = [
            (
                "conf.d/global.conf",
                format!("global: {{ logging-config: \"{}\" }}\n", d("logback.xml")),
            ),
            (
                "conf.d/webserver.conf",
                format!(
                    "webserver: {{ client-auth: want, ssl-host: \"{ADDRESS}\", ssl-port: {PORT} }}\n"
                ),
            ),
            ("conf.d/ca.conf", "certificate-authority: { }\n".into()),
            (
                "conf.d/puppetserver.conf",
                format!(
                    "jruby-puppet: {{\n    \
                     ruby-load-path: [/usr/lib/puppetserver/ruby/vendor_ruby]\n    \
                     gem-home: \"{gems}\"\n    \
                     gem-path: [\"{gems}\", /usr/lib/puppetserver/vendored-jruby-gems]\n    \
                     server-conf-dir: \"{conf}\"\n    \
                     server-code-dir: \"{code}\"\n    \
                     server-var-dir: \"{var}\"\n    \
                     server-run-dir: \"{run}\"\n    \
                     server-log-dir: \"{log}\"\n    \
                     max-active-instances: 1\n}}\n\
                     http-client: {{ }}\nprofiler: {{ }}\n",
                    gems = d("var/jruby-gems"),
                    conf = d("puppet"),
                    code = d("code"),
                    var = d("var"),
                    run = d("run"),
                    log = d("log"),
                ),
            ),
            (
                "logback.xml",
                format!(
                    "<configuration scan=\"false\">\n  \
                     <appender name=\"F1\" class=\"ch.qos.logback.core.FileAppender\">\n    \
                     <file>{}</file>\n    <append>true</append>\n    \
                     <encoder><pattern>%d{{yyyy-MM-dd'T'HH:mm:ss.SSSXXX}} %-5p [%c{{2}}] %m%n</pattern></encoder>\n  \
                     </appender>\n  <root level=\"info\"><appender-ref ref=\"F1\"/></root>\n\
                     </configuration>\n",
                    d("log/puppetserver.log")
                ),
            ),
            (
                "puppet/puppet.conf",
                format!(
                    "# cargo xtask puppet up: the test bed's Puppet server.\n\
                     [main]\n\
                     certname = {CERTNAME}\n\
                     server = {ADDRESS}\n\
                     dns_alt_names = {CERTNAME},IP:{ADDRESS}\n\
                     ssldir = {ssl}\n\
                     vardir = {var}\n\
                     logdir = {log}\n\
                     rundir = {run}\n\
                     codedir = {code}\n\
                     [server]\n\
                     cadir = {ssl}/ca\n\
                     autosign = {autosign}\n",
                    ssl = d("ssl"),
                    var = d("var"),
                    log = d("log"),
                    run = d("run"),
                    code = d("code"),
                    autosign = d(AUTOSIGN),
                ),
            ),
            (
                AUTOSIGN,
                format!(
                    "#!/bin/sh\n\
                     # The CA's autosign policy: dop-puppet-autosign on the bed's Hiera data.\n\
                     exec '{}' --config /dev/null --data-dir '{}' --log-file '{}' \"$@\"\n",
                    autosign.display(),
                    d("hiera"),
                    d("log/autosign.log"),
                ),
            ),
            (
                "code/environments/production/hiera.yaml",
                dop_puppet::hiera::hiera_yaml(&self.path("hiera")),
            ),
            (
                "code/environments/production/manifests/site.pp",
                "# Every node gets the role class of its Hiera `role` (dop's plan configuration);\n\
                 # a node in no plan gets no catalog.\n\
                 node default {\n  \
                   $role = lookup('role', Optional[String], 'first', undef)\n  \
                   if $role == undef {\n    \
                     fail(\"${trusted['certname']} is in no dop plan: it has no role\")\n  \
                   }\n  \
                   include \"role::${role}\"\n\
                 }\n"
                    .into(),
            ),
        ];
        for (path, text) in &files {
            write(&self.path(path), text)?;
        }
        {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(self.path(AUTOSIGN), fs::Permissions::from_mode(0o755))
                .map_err(|e| format!("{}: {e}", self.path(AUTOSIGN).display()))?;
        }
        // The role classes: each writes its name and the node's Hiera value into a file.
        let dir = Path::new(ROLE_FILE)
            .parent()
            .map_or_else(String::new, |p| p.display().to_string());
        for role in ["web", "db"] {
            write(
                &self.path(&format!(
                    "code/environments/production/modules/role/manifests/{role}.pp"
                )),
                &format!(
                    "class role::{role} {{\n  \
                       file {{ '{dir}': ensure => directory }}\n  \
                       file {{ '{ROLE_FILE}':\n    \
                         ensure  => file,\n    \
                         content => \"{role} ${{lookup('{VALUE_KEY}')}}\\n\",\n  \
                       }}\n\
                     }}\n"
                ),
            )?;
        }
        Ok(())
    }

    /// Starts the server unless it runs, and waits until it has started and answers.
    fn start(&self) -> Result<(), String> {
        if self.pid().is_some() && answers(ADDRESS, PORT) {
            println!("puppet: the server runs already: reused");
            return Ok(());
        }
        if answers(ADDRESS, PORT) {
            return Err(format!(
                "{ADDRESS}:{PORT} is in use by another process than the bed's server"
            ));
        }
        let restart = self.path("run/restart");
        write(&restart, "0")?;
        let log_path = self.path("log/java.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let mut command = Command::new(JAVA);
        command
            .args(HEAP)
            .arg("-Djruby.logger.class=com.puppetlabs.jruby_utils.jruby.Slf4jLogger")
            .arg("-Djruby.lib=/usr/share/jruby/lib")
            .arg("-XX:+CrashOnOutOfMemoryError")
            .arg(format!(
                "-XX:ErrorFile={}",
                self.path("log/java_error_pid%p.log").display()
            ))
            .args(["-jar", JAR, "--config"])
            .arg(self.path("conf.d"))
            .args(["--bootstrap-config", BOOTSTRAP, "--restart-file"])
            .arg(&restart)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        // Its own session: it outlives this command and no terminal's signals reach it.
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| format!("cannot run {JAVA}: {e}"))?;
        let pid = child.id();
        write(&self.pid_file(), &format!("{pid}\n"))?;
        println!(
            "puppet: started puppetserver (pid {pid}); waiting until it answers (its log: {})",
            self.path("log/puppetserver.log").display()
        );
        let started = wait_for(START_TIMEOUT, || {
            !alive(pid)
                || (fs::read_to_string(&restart).is_ok_and(|r| r.trim() == "1")
                    && answers(ADDRESS, PORT))
        });
        if !alive(pid) {
            return Err(self.failure("exited while starting"));
        }
        if started.is_err() {
            let _ = self.stop();
            return Err(self.failure(&format!(
                "did not answer within {} s (stopped)",
                START_TIMEOUT.as_secs()
            )));
        }
        Ok(())
    }

    fn failure(&self, why: &str) -> String {
        let mut text = format!("puppetserver {why}");
        for log in ["log/java.log", "log/puppetserver.log"] {
            let path = self.path(log);
            let content = fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = content.lines().collect();
            text.push_str(&format!(
                "\n--- {} (last 20 lines) ---\n{}",
                path.display(),
                lines[lines.len().saturating_sub(20)..].join("\n")
            ));
        }
        text
    }

    fn write_testbed_json(&self) -> Result<(), String> {
        let testbed = json!({
            "server": ADDRESS,
            "port": PORT,
            "certname": CERTNAME,
            "hiera_dir": self.path("hiera"),
            "autosign_log": self.path("log/autosign.log"),
            "ca_dir": self.path("ssl/ca"),
            "pid_file": self.pid_file(),
            "log_dir": self.path("log"),
            "role_file": ROLE_FILE,
            "value_key": VALUE_KEY,
        });
        let text = serde_json::to_string_pretty(&testbed).map_err(|e| e.to_string())?;
        // Written whole, then renamed: a test never reads half a file.
        let tmp = self.path(&format!("{TESTBED_JSON}.tmp"));
        write(&tmp, &format!("{text}\n"))?;
        fs::rename(&tmp, self.path(TESTBED_JSON)).map_err(|e| e.to_string())
    }

    // ---- down --------------------------------------------------------------------------

    fn stop(&self) -> Result<bool, String> {
        let Some(pid) = self.pid() else {
            return Ok(false);
        };
        signal(pid, libc::SIGTERM);
        if wait_for(Duration::from_secs(60), || !alive(pid)).is_err() {
            eprintln!("puppet: puppetserver (pid {pid}) ignored SIGTERM for 60 s: SIGKILL");
            signal(pid, libc::SIGKILL);
            wait_for(Duration::from_secs(10), || !alive(pid))
                .map_err(|()| format!("puppetserver (pid {pid}) does not go away"))?;
        }
        Ok(true)
    }

    fn down(&self) -> Result<(), String> {
        let start = Instant::now();
        // First, so that no test finds a server that is going away.
        let _ = fs::remove_file(self.path(TESTBED_JSON));
        let stopped = self.stop()?;
        let _ = fs::remove_file(self.pid_file());
        // The CA, the certificates it signed, the Hiera data and the reports: the next `up`
        // starts with none of them.
        for sub in ["ssl", "hiera", "var"] {
            let path = self.path(sub);
            if path.exists() {
                fs::remove_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        println!(
            "puppet: down in {:.1} s ({}; the CA, the certificates and the Hiera data removed)",
            start.elapsed().as_secs_f64(),
            if stopped {
                "puppetserver stopped"
            } else {
                "puppetserver was not running"
            }
        );
        Ok(())
    }

    // ---- status ------------------------------------------------------------------------

    fn status(&self) -> Result<(), String> {
        let Some(pid) = self.pid() else {
            println!("puppetserver not running");
            return Err("the bed is not up (`cargo xtask puppet up` starts it)".into());
        };
        let answering = answers(ADDRESS, PORT);
        println!(
            "puppetserver pid {pid}, {} MiB RSS, {}",
            rss_kib(pid) / 1024,
            if answering {
                format!("answers on {ADDRESS}:{PORT}")
            } else {
                format!("NOT answering on {ADDRESS}:{PORT}")
            }
        );
        let mut signed: Vec<String> = fs::read_dir(self.path("ssl/ca/signed"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".pem")
                    .map(str::to_string)
            })
            .collect();
        signed.sort();
        println!("signed    {}", signed.join(" "));
        let json = self.path(TESTBED_JSON);
        println!(
            "{} {}",
            json.display(),
            if json.exists() { "present" } else { "MISSING" }
        );
        if answering {
            Ok(())
        } else {
            Err("the server does not answer".into())
        }
    }
}

/// Builds `dop-puppet-autosign` (the CA runs this build); returns its path. Built with xtask's
/// own packages selected, so that it takes their features and reuses what xtask's build made
/// (`-p dop-puppet` alone resolves other features and compiles its dependencies again).
fn build_autosign() -> Result<PathBuf, String> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "-q", "-p", "xtask", "-p", "dop-puppet"])
        .args(["--bin", "dop-puppet-autosign"])
        .current_dir(root())
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err(format!(
            "cargo build of dop-puppet-autosign failed ({status})"
        ));
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    let bin = target.join("debug/dop-puppet-autosign");
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!("{} missing after the build", bin.display()))
    }
}

/// Prints how long a phase of `up` took.
fn phase<T>(name: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let start = Instant::now();
    let result = f();
    let failed = if result.is_err() { " (failed)" } else { "" };
    println!(
        "puppet: {name}: {:.1} s{failed}",
        start.elapsed().as_secs_f64()
    );
    result
}
