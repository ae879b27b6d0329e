//! `cargo xtask dist` and `docs`: the release packages (one RPM per tool and `dop-common`)
//! and what goes into them besides the binaries (completions, man pages, the Hiera sample).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::host::root;

/// `dist`: release builds of the three tools, their shell completions (bash, zsh, fish) and
/// man pages (one per command and subcommand), and one RPM per tool plus `dop-common`, all in
/// `target/dist/`.
pub fn dist() -> Result<(), String> {
    let files = docs()?;
    println!("{files} completion and man page files in target/dist");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(root())
        .args([
            "build",
            "--release",
            "--locked",
            "--bins",
            "-p",
            "dopi",
            "-p",
            "dopv",
            "-p",
            "dopc",
            "-p",
            "dopc-client",
            "-p",
            "dop-puppet",
        ])
        // Packages ship binaries without debug information (a quarter of the size).
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !status.success() {
        return Err("the release build failed".into());
    }
    for rpm in rpms(
        &root().join("target/release"),
        &root().join("target/dist/rpm"),
    )? {
        println!("{}", rpm.display());
    }
    Ok(())
}

/// `docs`: completions and man pages from the tools' own argument definitions, and the Hiera
/// sample, in `target/dist` (the spec's build runs this; `dist` too).
pub fn docs() -> Result<usize, String> {
    use clap::CommandFactory;
    let out = root().join("target/dist");
    let tools = [
        ("dopi", dopi::app::Cli::command()),
        ("dopv", dopv::app::Cli::command()),
        ("dopc", dopc::app::Cli::command()),
        ("dopc-client", dopc_client::app::Cli::command()),
        ("dop-puppet-autosign", dop_puppet::app::Cli::command()),
    ];
    let mut files = 0;
    for (name, command) in tools {
        for (shell, dir) in [
            (clap_complete::Shell::Bash, "completions/bash"),
            (clap_complete::Shell::Zsh, "completions/zsh"),
            (clap_complete::Shell::Fish, "completions/fish"),
        ] {
            let dir = out.join(dir);
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            clap_complete::generate_to(shell, &mut command.clone(), name, &dir)
                .map_err(|e| format!("{name} {shell} completions: {e}"))?;
            files += 1;
        }
        let man = out.join("man/man1");
        std::fs::create_dir_all(&man).map_err(|e| format!("{}: {e}", man.display()))?;
        files += man_pages(&command, name, &man)?;
    }
    // The Hiera 5 level that reads dop's data, shipped as a sample with the autosign hook.
    let sample = out.join("hiera.yaml");
    std::fs::write(
        &sample,
        dop_puppet::hiera::hiera_yaml(Path::new("/var/lib/dop/hiera")),
    )
    .map_err(|e| format!("{}: {e}", sample.display()))?;
    Ok(files + 1)
}

/// The changelog text of the newest section of `CHANGELOG.md`.
fn newest_changes() -> Result<String, String> {
    let text = std::fs::read_to_string(root().join("CHANGELOG.md"))
        .map_err(|e| format!("CHANGELOG.md: {e}"))?;
    let mut sections = text.split("\n## ").skip(1);
    let newest = sections
        .next()
        .ok_or("CHANGELOG.md has no `## version` section")?;
    Ok(newest
        .split_once('\n')
        .map_or("", |(_, body)| body)
        .trim()
        .to_string())
}

/// dop-common's `%pre`: the `dop` user and group, as packaging/sysusers-dop.conf says.
const DOP_USER_SCRIPT: &str = "getent group dop >/dev/null || groupadd -r dop\n\
getent passwd dop >/dev/null || useradd -r -g dop -d /var/lib/dop -s /sbin/nologin -c 'dop server' dop\n\
exit 0\n";

/// One RPM per tool (binary, man pages, completions, license; dopc: its systemd unit and
/// settings) and `dop-common` (shared settings, the service user, directories), from the
/// binaries in `bin_dir` and the man pages and completions in `target/dist`.
fn rpms(bin_dir: &Path, out: &Path) -> Result<Vec<PathBuf>, String> {
    use rpm::{Dependency, FileOptions, PackageBuilder};
    let version = env!("CARGO_PKG_VERSION");
    let dist = root().join("target/dist");
    let packaging = root().join("packaging");
    let license = root().join("LICENSE");
    let changes = newest_changes()?;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let arch = std::env::consts::ARCH;
    let err = |what: &str, e: rpm::Error| format!("{what}: {e}");
    let new_builder = |name: &str, summary: &str, arch: &str| {
        let mut b = PackageBuilder::new(name, version, "Apache-2.0", arch, summary);
        b.using_config(rpm::BuildConfig::default().compression(rpm::CompressionType::Gzip))
            .release("1")
            .url("https://github.com/dop-rs/dop")
            .add_changelog_entry("dop developers", changes.clone(), 1_795_600_000);
        b
    };
    let mut made = Vec::new();

    let mut common = new_builder(
        "dop-common",
        "dop: shared settings, the dop service user and directories",
        "noarch",
    );
    common
        .description("Settings shared by dopi, dopv and dopc (/etc/dop/dop.conf), the 'dop' user the dopc service runs as, and the store and log directories.")
        .with_file(packaging.join("dop.conf"), FileOptions::new("/etc/dop/dop.conf").mode(0o100644).config().noreplace())
        .map_err(|e| err("dop.conf", e))?
        .with_file(packaging.join("sysusers-dop.conf"), FileOptions::new("/usr/lib/sysusers.d/dop.conf").mode(0o100644))
        .map_err(|e| err("sysusers", e))?
        .with_file(&license, FileOptions::new("/usr/share/licenses/dop-common/LICENSE").mode(0o100644).doc())
        .map_err(|e| err("LICENSE", e))?
        .with_file(root().join("README.md"), FileOptions::new("/usr/share/doc/dop-common/README.md").mode(0o100644).doc())
        .map_err(|e| err("README", e))?
        .with_dir_entry(FileOptions::dir("/etc/dop").mode(0o40755))
        .map_err(|e| err("/etc/dop", e))?
        .with_dir_entry(FileOptions::dir("/var/lib/dop").mode(0o40750))
        .map_err(|e| err("/var/lib/dop", e))?
        .with_dir_entry(FileOptions::dir("/var/log/dop").mode(0o40750))
        .map_err(|e| err("/var/log/dop", e))?
        // The user exists before any file owned by its group is installed (dopc.toml): rpm
        // runs sysusers.d only after the transaction, or not at all on older releases.
        .pre_install_script(DOP_USER_SCRIPT)
        .requires(Dependency::script_pre("/usr/sbin/useradd"))
        .requires(Dependency::script_pre("/usr/bin/getent"));
    let pkg = common.build().map_err(|e| err("dop-common", e))?;
    made.push(pkg.write_to(out).map_err(|e| err("dop-common", e))?);

    let tools = [
        ("dopi", "dop: run a plan's steps on its nodes over SSH"),
        ("dopv", "dop: make the infrastructure match the plan"),
        (
            "dopc",
            "dop: the server (queued executions, logs, state) and its client",
        ),
        (
            "dopc-client",
            "dop: the client of a dopc server (no server, no libvirt, no store)",
        ),
        (
            "dop-puppet-autosign",
            "dop: Puppet's policy-based autosign for the nodes of stored plans",
        ),
    ];
    for (tool, summary) in tools {
        let mut b = new_builder(tool, summary, arch);
        b.description(format!(
            "{summary}. Part of dop, the Deployment Orchestrator for Puppet."
        ));
        // The client reads no dop.conf and needs no service user: an operator's laptop
        // installs it alone.
        if tool != "dopc-client" {
            b.requires(Dependency::eq("dop-common", format!("{version}-1")));
        }
        b.with_file(
            bin_dir.join(tool),
            FileOptions::new(format!("/usr/bin/{tool}")).mode(0o100755),
        )
        .map_err(|e| err(tool, e))?
        .with_file(
            &license,
            FileOptions::new(format!("/usr/share/licenses/{tool}/LICENSE"))
                .mode(0o100644)
                .doc(),
        )
        .map_err(|e| err("LICENSE", e))?
        .with_file(
            dist.join(format!("completions/bash/{tool}.bash")),
            FileOptions::new(format!("/usr/share/bash-completion/completions/{tool}"))
                .mode(0o100644),
        )
        .map_err(|e| err("bash completion", e))?
        .with_file(
            dist.join(format!("completions/zsh/_{tool}")),
            FileOptions::new(format!("/usr/share/zsh/site-functions/_{tool}")).mode(0o100644),
        )
        .map_err(|e| err("zsh completion", e))?
        .with_file(
            dist.join(format!("completions/fish/{tool}.fish")),
            FileOptions::new(format!("/usr/share/fish/vendor_completions.d/{tool}.fish"))
                .mode(0o100644),
        )
        .map_err(|e| err("fish completion", e))?;
        let man_dir = dist.join("man/man1");
        let mut pages: Vec<PathBuf> = std::fs::read_dir(&man_dir)
            .map_err(|e| format!("{}: {e}", man_dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n == format!("{tool}.1") || n.starts_with(&format!("{tool}-")))
            })
            .collect();
        pages.sort();
        for page in pages {
            let name = page
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            b.with_file(
                &page,
                FileOptions::new(format!("/usr/share/man/man1/{name}"))
                    .mode(0o100644)
                    .doc(),
            )
            .map_err(|e| err(&name, e))?;
        }
        if tool == "dopc" {
            b.with_file(
                packaging.join("dopc.service"),
                FileOptions::new("/usr/lib/systemd/system/dopc.service").mode(0o100644),
            )
            .map_err(|e| err("dopc.service", e))?
            .with_file(
                packaging.join("dopc.toml"),
                FileOptions::new("/etc/dop/dopc.toml")
                    .mode(0o100640)
                    .group("dop")
                    .config()
                    .noreplace(),
            )
            .map_err(|e| err("dopc.toml", e))?
            .requires(Dependency::any("systemd"));
        }
        if tool == "dop-puppet-autosign" {
            let sample = dist.join("hiera.yaml");
            b.with_file(
                &sample,
                FileOptions::new(format!("/usr/share/doc/{tool}/hiera.yaml"))
                    .mode(0o100644)
                    .doc(),
            )
            .map_err(|e| err("hiera.yaml", e))?;
        }
        if tool == "dopv" {
            // The `local` provider's containers; cloud providers need neither.
            b.recommends(Dependency::any("openssh-server"))
                .recommends(Dependency::any("util-linux"));
        }
        // What the binary links (shared libraries and the symbol versions it uses, glibc's
        // among them), as rpmbuild would declare it.
        for capability in elf_requires(&bin_dir.join(tool))? {
            b.requires(Dependency::any(capability));
        }
        let pkg = b.build().map_err(|e| err(tool, e))?;
        made.push(pkg.write_to(out).map_err(|e| err(tool, e))?);
    }
    Ok(made)
}

/// rpm's own dependency generator (what rpmbuild runs on every ELF file it packages): the
/// rpm crate does not scan binaries, and a list written by hand goes stale.
const ELFDEPS: &str = "/usr/lib/rpm/elfdeps";

/// The capabilities an ELF binary requires: `libvirt.so.0()(64bit)`,
/// `libc.so.6(GLIBC_2.34)(64bit)`, …, computed by [`ELFDEPS`].
fn elf_requires(binary: &Path) -> Result<Vec<String>, String> {
    use std::io::Write as _;
    let mut child = Command::new(ELFDEPS)
        .arg("--requires")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            format!("cannot run {ELFDEPS} ({e}): the packages' dependencies are computed with rpm's tools; install rpm (apt-get install rpm)")
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        writeln!(stdin, "{}", binary.display()).map_err(|e| format!("{ELFDEPS}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{ELFDEPS}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{ELFDEPS} failed on {}", binary.display()));
    }
    let requires: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if requires.is_empty() {
        return Err(format!(
            "{ELFDEPS} found no dependencies in {}: is it a dynamically linked binary?",
            binary.display()
        ));
    }
    Ok(requires)
}

/// The man page of a command and, as `tool-sub.1`, of each of its subcommands.
fn man_pages(command: &clap::Command, name: &str, dir: &Path) -> Result<usize, String> {
    let mut page = Vec::new();
    // clap names are `&'static str` without its `string` feature; xtask runs once.
    let static_name: &'static str = Box::leak(name.to_string().into_boxed_str());
    clap_mangen::Man::new(command.clone().name(static_name))
        .render(&mut page)
        .map_err(|e| format!("{name}.1: {e}"))?;
    std::fs::write(dir.join(format!("{name}.1")), page).map_err(|e| format!("{name}.1: {e}"))?;
    let mut n = 1;
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        let sub_name = format!("{name}-{}", sub.get_name());
        n += man_pages(sub, &sub_name, dir)?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    #[test]
    fn dist_makes_completions_and_man_pages_for_every_tool() {
        super::docs().expect("docs");
        let out = crate::host::root().join("target/dist");
        for tool in ["dopi", "dopv", "dopc", "dopc-client", "dop-puppet-autosign"] {
            let bash =
                std::fs::read_to_string(out.join(format!("completions/bash/{tool}.bash"))).unwrap();
            // clap names the function after the tool, dashes doubled into underscores.
            let function = format!("_{}()", tool.replace('-', "__"));
            assert!(bash.contains(&function), "{tool}");
            assert!(out.join(format!("completions/zsh/_{tool}")).exists());
            assert!(out.join(format!("completions/fish/{tool}.fish")).exists());
            let man = std::fs::read_to_string(out.join(format!("man/man1/{tool}.1"))).unwrap();
            assert!(man.contains(".TH"), "{tool}");
        }
        let sync = std::fs::read_to_string(out.join("man/man1/dopv-sync.1")).unwrap();
        assert!(sync.contains("destructive"), "{sync}");
        assert!(out.join("man/man1/dopc-execution-setup.1").exists());
        let hiera = std::fs::read_to_string(out.join("hiera.yaml")).unwrap();
        assert!(hiera.contains("/var/lib/dop/hiera"), "{hiera}");
    }

    /// The values of `key=` lines in a systemd unit.
    fn unit_values<'u>(unit: &'u str, key: &str) -> Vec<&'u str> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .flat_map(str::split_whitespace)
            .collect()
    }

    #[test]
    fn the_service_can_write_the_hiera_data_and_puppet_can_read_it() {
        let packaging = crate::host::root().join("packaging");
        let unit = std::fs::read_to_string(packaging.join("dopc.service")).unwrap();
        let umask = u32::from_str_radix(unit_values(&unit, "UMask")[0], 8).unwrap();
        assert_eq!(
            umask & 0o040,
            0,
            "the group (Puppet's, on hiera_dir) can read"
        );
        assert_eq!(umask & 0o007, 0o007, "others cannot");
        // Under ProtectSystem=strict only these are writable: the hiera_dir that dop.conf and
        // docs/puppet.md suggest must be one of them, or below one.
        assert_eq!(unit_values(&unit, "ProtectSystem"), ["strict"]);
        let mut writable: Vec<String> = unit_values(&unit, "StateDirectory")
            .iter()
            .map(|d| format!("/var/lib/{d}"))
            .collect();
        writable.extend(
            unit_values(&unit, "ReadWritePaths")
                .iter()
                .map(|p| p.trim_start_matches('-').to_string()),
        );
        let conf = std::fs::read_to_string(packaging.join("dop.conf")).unwrap();
        let suggested: Vec<&str> = conf
            .lines()
            .filter_map(|l| l.strip_prefix("# hiera_dir:"))
            .map(str::trim)
            .collect();
        assert_eq!(suggested, ["/var/lib/dop-hiera"], "{conf}");
        for dir in suggested {
            assert!(
                writable
                    .iter()
                    .any(|w| std::path::Path::new(dir).starts_with(w)),
                "{dir} is read-only for the service: {writable:?}"
            );
        }
    }

    #[test]
    fn requires_are_read_from_the_binary() {
        // This test's own executable links glibc: rpm's generator must say so, with versions.
        let me = std::env::current_exe().unwrap();
        let requires = super::elf_requires(&me).expect("elfdeps (install rpm)");
        assert!(
            requires.iter().any(|r| r == "libc.so.6()(64bit)"),
            "{requires:?}"
        );
        assert!(
            requires.iter().any(|r| r.starts_with("libc.so.6(GLIBC_2.")),
            "{requires:?}"
        );
        let missing = super::elf_requires(std::path::Path::new("/nonexistent/binary"));
        assert!(missing.is_err(), "{missing:?}");
    }
}
