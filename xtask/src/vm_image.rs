//! `cargo xtask vm-image`: the guest disk image of the libvirt testbed (`cargo xtask libvirt
//! up` puts it into its storage pool), built from Debian packages only, without mounting
//! anything.
//!
//! The image is a raw disk holding one FAT file system (no partition table) that SeaBIOS boots
//! like a cloud image's disk: SYSLINUX in its boot sector loads Debian's kernel (`vmlinuz` of
//! `linux-image-cloud-amd64`, the kernel of Debian's cloud images, the package cached in the
//! directory) and an initramfs: busybox-static, dropbear, the few kernel modules a guest needs
//! (virtio, FAT, ext4, the ACPI power button) and `xtask/libvirt/init`, which reads dopv's
//! NoCloud seed (hostname, SSH keys, network) and starts dropbear. The root file system is the initramfs, in memory; the guest keeps its SSH
//! host key on its boot disk, so the key survives a reboot.
//!
//! The image is `<dir>/image/dop-guest.raw` (`$DOP_LIBVIRT_DIR`, else `target/libvirt`). It is
//! built again only when an input changed (the kernel package, busybox, dropbear, the files of
//! `xtask/libvirt/`, the kernel command line): `<dir>/image/dop-guest.stamp` records them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::host::{mkdir, write};

/// The image's file name (also its volume's name in the pool).
pub const IMAGE: &str = dop_testbed::libvirt::IMAGE;
/// The Debian package whose dependency names the current kernel package: the cloud kernel,
/// whose LZ4-compressed image unpacks in half a second in software emulation (the XZ of
/// `linux-image-amd64` takes four: a guest boots in 6 s instead of 10).
const KERNEL_META_PACKAGE: &str = "linux-image-cloud-amd64";

/// Files of the initramfs: path, mode, text.
const FILES: &[(&str, u32, &str)] = &[
    ("init", 0o755, include_str!("../libvirt/init")),
    ("etc/inittab", 0o644, include_str!("../libvirt/inittab")),
    (
        "etc/dop-shutdown",
        0o755,
        include_str!("../libvirt/shutdown"),
    ),
    (
        "etc/udhcpc.script",
        0o755,
        include_str!("../libvirt/udhcpc.script"),
    ),
    (
        "etc/acpi/PWRF/00000080",
        0o755,
        "#!/bin/sh\n# busybox acpid: the ACPI power button (`virsh shutdown`).\n\
         echo \"dop-guest: ACPI power button: powering off\" >/dev/console\nexec poweroff\n",
    ),
    ("etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/sh\n"),
    ("etc/group", 0o644, "root:x:0:\n"),
    ("etc/shells", 0o644, "/bin/sh\n"),
    (
        "etc/profile",
        0o644,
        "export PATH=/sbin:/bin:/usr/sbin:/usr/bin\n",
    ),
    (
        "usr/sbin/mkfs.ext2",
        0o755,
        "#!/bin/sh\nexec mke2fs \"$@\"\n",
    ),
    (
        "usr/sbin/mkfs.vfat",
        0o755,
        "#!/bin/sh\nexec mkdosfs \"$@\"\n",
    ),
];

/// Empty directories of the initramfs.
const DIRS: &[&str] = &[
    "proc",
    "sys",
    "dev",
    "tmp",
    "run",
    "mnt",
    "root",
    "var/log",
    "etc/dropbear",
];

/// The kernel modules the guest loads (their dependencies come first, found in the modules):
/// virtio's PCI transport, network and disks; FAT for the seed and the boot disk; ext4 (which
/// also mounts ext2 and ext3) for data disks; the ACPI power button and the event device that
/// acpid reads it from.
const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    // A `<rng model='virtio'>` device, when the domain has one, feeds the kernel's random
    // pool at once (else it takes seconds to fill, and dropbear waits for it).
    "virtio_rng",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "nls_iso8859_1",
    // ext4 and jbd2 want crc32c (a soft dependency, not in `depends=`); the generic one, as
    // the guest CPU (qemu64) has no SSE4.2.
    "crc32c_generic",
    "ext4",
    "button",
    "evdev",
];

/// Files on the boot disk besides the kernel and the initramfs. `dop-guest` marks the disk for
/// the init (it keeps the SSH host key there).
const MARKER: &str = "dop-guest";

/// The image's inputs, as the stamp records them.
struct Inputs {
    kernel_package: String,
    kernel_version: String,
    cmdline: String,
    text: String,
}

/// `cargo xtask vm-image`.
pub fn run(args: &[String]) -> Result<(), String> {
    if !args.is_empty() {
        return Err("usage: cargo xtask vm-image".into());
    }
    let dir = dop_testbed::libvirt::dir();
    let image = build(&dir)?;
    println!("vm-image: {}", image.display());
    Ok(())
}

/// The image's path below the testbed directory.
pub fn image_path(dir: &Path) -> PathBuf {
    dir.join("image").join(IMAGE)
}

/// Builds the image unless it exists and its inputs are unchanged; returns its path.
pub fn build(dir: &Path) -> Result<PathBuf, String> {
    let start = Instant::now();
    let work = dir.join("image");
    mkdir(&work)?;
    let image = image_path(dir);
    let stamp = work.join("dop-guest.stamp");
    let missing = missing_tools();
    if !missing.is_empty() {
        return Err(format!(
            "vm-image needs {} (Debian packages); install them (`cargo xtask libvirt up` does)",
            missing.join(" ")
        ));
    }
    let inputs = inputs()?;
    if image.exists() && fs::read_to_string(&stamp).is_ok_and(|s| s == inputs.text) {
        println!(
            "vm-image: up to date ({} {}, checked in {:.1} s)",
            inputs.kernel_package,
            inputs.kernel_version,
            start.elapsed().as_secs_f64()
        );
        return Ok(image);
    }
    println!(
        "vm-image: building {} ({} {})",
        image.display(),
        inputs.kernel_package,
        inputs.kernel_version
    );
    let deb = kernel_deb(&work, &inputs)?;
    let scratch = work.join("build");
    if scratch.exists() {
        fs::remove_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
    }
    mkdir(&scratch)?;
    let result = assemble(&scratch, &deb, &inputs, &image);
    let _ = fs::remove_dir_all(&scratch);
    result?;
    write(&stamp, &inputs.text)?;
    let size = fs::metadata(&image).map_or(0, |m| m.len());
    println!(
        "vm-image: built {} ({} MiB) in {:.1} s",
        image.display(),
        size >> 20,
        start.elapsed().as_secs_f64()
    );
    Ok(image)
}

/// Debian packages and the tools the build needs from each.
const TOOLS: &[(&str, &str)] = &[
    ("/bin/busybox", "busybox-static"),
    ("/usr/sbin/dropbear", "dropbear-bin"),
    ("/usr/bin/dropbearkey", "dropbear-bin"),
    ("/usr/bin/cpio", "cpio"),
    ("/usr/sbin/mkfs.vfat", "dosfstools"),
    ("/usr/bin/syslinux", "syslinux"),
    (
        "/usr/lib/syslinux/modules/bios/ldlinux.c32",
        "syslinux-common",
    ),
    ("/usr/bin/mcopy", "mtools"),
];

/// Every package the build takes a tool from.
#[cfg(test)]
pub fn tool_packages() -> Vec<&'static str> {
    TOOLS.iter().map(|(_, package)| *package).collect()
}

/// The packages of the missing tools.
pub fn missing_tools() -> Vec<&'static str> {
    let mut missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(path, _)| !Path::new(path).exists())
        .map(|(_, package)| *package)
        .collect();
    missing.dedup();
    missing
}

/// What the image is made of: the kernel package and version, the versions of busybox,
/// dropbear and syslinux, the kernel command line, a digest of the initramfs's files.
fn inputs() -> Result<Inputs, String> {
    // One look-up: the meta package's `Depends: linux-image-6.1.0-57-amd64 (= 6.1.192-3)`.
    let show =
        output(Command::new("apt-cache").args(["show", "--no-all-versions", KERNEL_META_PACKAGE]))?;
    let (kernel_package, kernel_version) = kernel_dependency(&show).ok_or_else(|| {
        format!(
            "apt-cache names no kernel package for {KERNEL_META_PACKAGE} (run apt-get \
             update): {show}"
        )
    })?;
    let cmdline = format!(
        "console=ttyS0 quiet panic=-1 no_timer_check tsc_early_khz={}",
        tsc_khz()?
    );
    let mut text = String::new();
    let _ = writeln!(text, "kernel {kernel_package} {kernel_version}");
    for package in [
        "busybox-static",
        "dropbear-bin",
        "syslinux",
        "syslinux-common",
    ] {
        let _ = writeln!(text, "{package} {}", installed_version(package));
    }
    let _ = writeln!(text, "cmdline {cmdline}");
    let mut digest = Fnv::default();
    for (path, mode, content) in FILES {
        digest.add(path.as_bytes());
        digest.add(&mode.to_le_bytes());
        digest.add(content.as_bytes());
    }
    for m in MODULES {
        digest.add(m.as_bytes());
    }
    let _ = writeln!(text, "files {:016x}", digest.0);
    Ok(Inputs {
        kernel_package,
        kernel_version,
        cmdline,
        text,
    })
}

/// The kernel package a `linux-image-…-amd64` meta package record depends on, and its version (the `(= …)`
/// of the dependency, else the record's own version).
fn kernel_dependency(record: &str) -> Option<(String, String)> {
    let own = record.lines().find_map(|l| l.strip_prefix("Version: "))?;
    let depends = record.lines().find_map(|l| l.strip_prefix("Depends: "))?;
    depends.split([',', '|']).map(str::trim).find_map(|d| {
        let (name, constraint) = d.split_once(' ').unwrap_or((d, ""));
        let digit = name
            .strip_prefix("linux-image-")?
            .starts_with(|c: char| c.is_ascii_digit());
        let version = constraint
            .trim()
            .strip_prefix("(=")
            .and_then(|v| v.strip_suffix(')'))
            .map_or(own, str::trim);
        digit.then(|| (name.to_string(), version.to_string()))
    })
}

/// The host CPU's frequency in kHz (`cpu MHz` of /proc/cpuinfo): the guest kernel's
/// `tsc_early_khz`, without which parallel boots hang calibrating the TSC under load.
fn tsc_khz() -> Result<u64, String> {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").map_err(|e| format!("/proc/cpuinfo: {e}"))?;
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("cpu MHz"))
        .find_map(|l| l.split(':').nth(1)?.trim().parse::<f64>().ok())
        .filter(|mhz| *mhz > 0.0)
        // Whole MHz: the fraction wanders between readings and would rebuild the image.
        .map(|mhz| (mhz.round() as u64) * 1000)
        .ok_or_else(|| "no 'cpu MHz' in /proc/cpuinfo".into())
}

/// The kernel package, from `<work>/debs` or downloaded there.
fn kernel_deb(work: &Path, inputs: &Inputs) -> Result<PathBuf, String> {
    let debs = work.join("debs");
    mkdir(&debs)?;
    // apt-get download names the file <package>_<version with ':' as %3a>_<arch>.deb.
    let prefix = format!(
        "{}_{}_",
        inputs.kernel_package,
        inputs.kernel_version.replace(':', "%3a")
    );
    let find = || {
        fs::read_dir(&debs).ok().and_then(|entries| {
            entries.flatten().map(|e| e.path()).find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
            })
        })
    };
    if let Some(deb) = find() {
        return Ok(deb);
    }
    // Older kernel packages go: one is enough.
    for entry in fs::read_dir(&debs).into_iter().flatten().flatten() {
        let _ = fs::remove_file(entry.path());
    }
    println!("vm-image: downloading {}", inputs.kernel_package);
    let download = || {
        let out = Command::new("apt-get")
            .args(["download", "-q"])
            .arg(format!(
                "{}={}",
                inputs.kernel_package, inputs.kernel_version
            ))
            .current_dir(&debs)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("apt-get: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    };
    if download().is_err() {
        // The package lists may be older than the mirror.
        let _ = Command::new("apt-get")
            .args(["update", "-q"])
            .stdout(Stdio::null())
            .status();
        download().map_err(|e| format!("apt-get download {}: {e}", inputs.kernel_package))?;
    }
    find().ok_or_else(|| {
        format!(
            "apt-get download {} left no {prefix}*.deb in {}",
            inputs.kernel_package,
            debs.display()
        )
    })
}

/// Unpacks the kernel, makes the initramfs and writes the disk image (to a temporary name,
/// then renamed: the image is never half-written).
fn assemble(scratch: &Path, deb: &Path, inputs: &Inputs, image: &Path) -> Result<(), String> {
    let kernel = scratch.join("kernel");
    exec(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&kernel))?;
    let module_dir = fs::read_dir(kernel.join("lib/modules"))
        .map_err(|e| format!("{}: {e}", kernel.join("lib/modules").display()))?
        .flatten()
        .map(|e| e.path())
        .next()
        .ok_or("the kernel package has no lib/modules")?;
    let release = module_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let vmlinuz = kernel.join(format!("boot/vmlinuz-{release}"));
    if !vmlinuz.exists() {
        return Err(format!("the kernel package has no {}", vmlinuz.display()));
    }

    let root = scratch.join("initramfs");
    initramfs_tree(&root, &module_dir)?;
    let initrd = scratch.join("initrd.gz");
    cpio_gz(&root, &initrd)?;

    let boot = scratch.join("boot");
    mkdir(&boot)?;
    fs::copy(&vmlinuz, boot.join("vmlinuz")).map_err(|e| format!("vmlinuz: {e}"))?;
    fs::copy(&initrd, boot.join("initrd.gz")).map_err(|e| format!("initrd.gz: {e}"))?;
    write(
        &boot.join("syslinux.cfg"),
        &format!(
            "DEFAULT dop\nPROMPT 0\nTIMEOUT 0\nLABEL dop\n  KERNEL vmlinuz\n  INITRD initrd.gz\n  \
             APPEND {}\n",
            inputs.cmdline
        ),
    )?;
    write(
        &boot.join(MARKER),
        &format!(
            "dop's libvirt test guest ({} {})\n",
            inputs.kernel_package, inputs.kernel_version
        ),
    )?;

    // The file system: the files plus a few MiB (the host key, slack), at least 32 MiB.
    let used: u64 = ["vmlinuz", "initrd.gz"]
        .iter()
        .map(|f| fs::metadata(boot.join(f)).map_or(0, |m| m.len()))
        .sum();
    let mib = ((used >> 20) + 8).max(32);
    let tmp = image.with_extension("raw.tmp");
    let _ = fs::remove_file(&tmp);
    // -C: create the file; -i: a fixed volume id, so equal inputs give an equal image.
    exec(
        Command::new("mkfs.vfat")
            .args(["-n", "DOPBOOT", "-i", "d0b0a7e5", "-C"])
            .arg(&tmp)
            .arg((mib * 1024).to_string())
            .stdout(Stdio::null()),
    )?;
    // SYSLINUX writes its boot sector and ldlinux.sys/.c32 through mtools: no mount.
    exec(Command::new("syslinux").arg("--install").arg(&tmp))?;
    let mut mcopy = Command::new("mcopy");
    mcopy.env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(&tmp);
    for f in ["vmlinuz", "initrd.gz", "syslinux.cfg", MARKER] {
        mcopy.arg(boot.join(f));
    }
    exec(mcopy.arg("::"))?;
    fs::rename(&tmp, image).map_err(|e| format!("{}: {e}", image.display()))
}

/// The initramfs's tree: busybox and its applets, dropbear and its libraries, the modules and
/// their load order, the files of [`FILES`].
fn initramfs_tree(root: &Path, module_dir: &Path) -> Result<(), String> {
    for d in DIRS
        .iter()
        .chain(&["bin", "sbin", "usr/bin", "usr/sbin", "lib/modules"])
    {
        mkdir(&root.join(d))?;
    }
    fs::set_permissions(root.join("root"), fs::Permissions::from_mode(0o700))
        .map_err(|e| e.to_string())?;
    fs::set_permissions(root.join("tmp"), fs::Permissions::from_mode(0o1777))
        .map_err(|e| e.to_string())?;
    copy(Path::new("/bin/busybox"), &root.join("bin/busybox"))?;
    // `--list-full` gives each applet's usual place (bin/ls, sbin/ip, usr/bin/awk …).
    let applets = output(Command::new("/bin/busybox").arg("--list-full"))?;
    for applet in applets.lines().map(str::trim).filter(|a| !a.is_empty()) {
        let link = root.join(applet);
        if link.exists() || applet == "bin/busybox" {
            continue;
        }
        if let Some(parent) = link.parent() {
            mkdir(parent)?;
        }
        let depth = applet.matches('/').count();
        let target = format!("{}bin/busybox", "../".repeat(depth));
        std::os::unix::fs::symlink(&target, &link)
            .map_err(|e| format!("{}: {e}", link.display()))?;
    }
    for (binary, to) in [
        ("/usr/sbin/dropbear", "usr/sbin/dropbear"),
        ("/usr/bin/dropbearkey", "usr/bin/dropbearkey"),
    ] {
        copy(Path::new(binary), &root.join(to))?;
        for lib in libraries(binary)? {
            let to = root.join(lib.strip_prefix("/").unwrap_or(&lib));
            if !to.exists() {
                copy(&lib, &to)?;
            }
        }
    }
    // /sbin/dropbear, as on Debian's dropbear.
    std::os::unix::fs::symlink("../usr/sbin/dropbear", root.join("sbin/dropbear"))
        .map_err(|e| format!("sbin/dropbear: {e}"))?;
    let order = modules(module_dir, MODULES)?;
    let mut list = String::new();
    for (name, path) in &order {
        copy(path, &root.join(format!("lib/modules/{name}.ko")))?;
        list.push_str(name);
        list.push('\n');
    }
    write(&root.join("lib/modules/order"), &list)?;
    for (path, mode, text) in FILES {
        let to = root.join(path);
        if let Some(parent) = to.parent() {
            mkdir(parent)?;
        }
        // A symlink of busybox's may stand there (mkfs.vfat): the script takes its place.
        let _ = fs::remove_file(&to);
        write(&to, text)?;
        fs::set_permissions(&to, fs::Permissions::from_mode(*mode))
            .map_err(|e| format!("{}: {e}", to.display()))?;
    }
    Ok(())
}

/// The shared libraries a binary loads (`ldd`), the dynamic loader included, by their paths.
fn libraries(binary: &str) -> Result<Vec<PathBuf>, String> {
    let text = output(Command::new("ldd").arg(binary))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let path = l.split("=>").last()?.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// The modules to load, each after the modules it depends on (`depends=` of its `.modinfo`),
/// as (name, file) in load order. Names use `_` (`nls_iso8859-1.ko` is `nls_iso8859_1`).
fn modules(module_dir: &Path, wanted: &[&str]) -> Result<Vec<(String, PathBuf)>, String> {
    let mut files = BTreeMap::new();
    let mut todo = vec![module_dir.join("kernel")];
    while let Some(d) = todo.pop() {
        for entry in fs::read_dir(&d)
            .map_err(|e| format!("{}: {e}", d.display()))?
            .flatten()
        {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".ko"))
            {
                files.insert(name.replace('-', "_"), path);
            }
        }
    }
    // Built into the kernel (`modules.builtin`: one `kernel/…/name.ko` a line): nothing to load.
    let builtin: Vec<String> = fs::read_to_string(module_dir.join("modules.builtin"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| Path::new(l.trim()).file_stem()?.to_str())
        .map(|n| n.replace('-', "_"))
        .collect();
    let mut order: Vec<(String, PathBuf)> = Vec::new();
    fn visit(
        name: &str,
        files: &BTreeMap<String, PathBuf>,
        builtin: &[String],
        order: &mut Vec<(String, PathBuf)>,
        path: &mut Vec<String>,
    ) -> Result<(), String> {
        if order.iter().any(|(n, _)| n == name) || builtin.iter().any(|b| b == name) {
            return Ok(());
        }
        if path.iter().any(|n| n == name) {
            return Err(format!("kernel modules depend on each other: {path:?}"));
        }
        let file = files
            .get(name)
            .ok_or_else(|| format!("the kernel package has no module {name}"))?;
        let bytes = fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
        path.push(name.to_string());
        for dep in module_depends(&bytes) {
            visit(&dep, files, builtin, order, path)?;
        }
        path.pop();
        order.push((name.to_string(), file.clone()));
        Ok(())
    }
    for name in wanted {
        visit(name, &files, &builtin, &mut order, &mut Vec::new())?;
    }
    Ok(order)
}

/// The `depends=` entry of a module's `.modinfo` (NUL-separated `key=value` strings).
fn module_depends(ko: &[u8]) -> Vec<String> {
    let key = b"\0depends=";
    let Some(at) = ko.windows(key.len()).position(|w| w == key) else {
        return Vec::new();
    };
    let rest = &ko[at + key.len()..];
    let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end])
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.replace('-', "_"))
        .collect()
}

/// A gzipped newc cpio archive of a tree, every file owned by root, in name order.
fn cpio_gz(root: &Path, out: &Path) -> Result<(), String> {
    let script = format!(
        "set -o pipefail; find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet \
         | gzip -6 -n > '{}'",
        out.display()
    );
    exec(Command::new("bash").args(["-c", &script]).current_dir(root))
}

fn installed_version(package: &str) -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", package])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "-".into(),
            |o| String::from_utf8_lossy(&o.stdout).into_owned(),
        )
}

/// FNV-1a, 64 bits: a stable digest of the embedded files (std's hasher may change).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn add(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

fn describe(cmd: &Command) -> String {
    let args: Vec<String> = cmd
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    format!("{} {}", cmd.get_program().to_string_lossy(), args.join(" "))
}

fn exec(cmd: &mut Command) -> Result<(), String> {
    output(cmd).map(drop)
}

fn output(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", describe(cmd)))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{} failed ({}): {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    if let Some(parent) = to.parent() {
        mkdir(parent)?;
    }
    fs::copy(from, to)
        .map(drop)
        .map_err(|e| format!("{} -> {}: {e}", from.display(), to.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn module_dependencies_are_read_from_modinfo() {
        let ko = b"\x7fELF....\0license=GPL\0depends=virtio_ring,virtio_pci_modern_dev,nls-x\0\
                   retpoline=Y\0";
        assert_eq!(
            super::module_depends(ko),
            ["virtio_ring", "virtio_pci_modern_dev", "nls_x"]
        );
        assert!(super::module_depends(b"\0depends=\0name=x\0").is_empty());
        assert!(super::module_depends(b"no modinfo").is_empty());
    }

    #[test]
    fn the_kernel_package_is_the_meta_packages_dependency() {
        let record = "Package: linux-image-amd64\nVersion: 6.1.192-3\n\
                      Depends: linux-image-6.1.0-57-amd64 (= 6.1.192-3)\nDescription: x\n";
        assert_eq!(
            super::kernel_dependency(record),
            Some(("linux-image-6.1.0-57-amd64".into(), "6.1.192-3".into()))
        );
        let record = "Version: 1\nDepends: initramfs-tools | linux-initramfs-tool, \
                      linux-image-6.12.9-amd64\n";
        assert_eq!(
            super::kernel_dependency(record),
            Some(("linux-image-6.12.9-amd64".into(), "1".into()))
        );
        assert_eq!(super::kernel_dependency("Version: 1\nDepends: x\n"), None);
    }

    #[test]
    fn the_init_and_its_files_are_shell_scripts() {
        for (path, mode, text) in super::FILES {
            if mode & 0o111 != 0 {
                assert!(text.starts_with("#!/bin/sh\n"), "{path}");
            }
        }
        let init = include_str!("../libvirt/init");
        // The seed's files, as dopv writes them.
        for name in ["meta-data", "user-data", "network-config"] {
            assert!(init.contains(name), "{name}");
        }
        assert!(init.contains("say \"ready "));
        assert!(init.contains(super::MARKER));
    }

    #[test]
    fn the_scripts_parse() {
        // The guest's shell is busybox's; the host's sh checks the same POSIX syntax.
        let shell = if std::path::Path::new("/bin/busybox").exists() {
            vec!["/bin/busybox", "sh", "-n"]
        } else {
            vec!["/bin/sh", "-n"]
        };
        for (path, mode, text) in super::FILES {
            if mode & 0o111 == 0 {
                continue;
            }
            let mut child = std::process::Command::new(shell[0])
                .args(&shell[1..])
                .stdin(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{path}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
