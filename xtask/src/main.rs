//! `cargo xtask …`: the project's own tasks, in Rust instead of shell scripts.
//!
//! * `cargo xtask demo` — the main job on built-in defaults: the bundled plan deployed by dopv
//!   on local test nodes and run by dopi over SSH, end to end.
//! * `cargo xtask bench [parse|store|ssh|dopc|soak|fleet]` — benchmarks, built in release mode.
//! * `cargo xtask dist` — shell completions and man pages of the three tools in `target/dist/`.
//! * `cargo xtask chaos [KILLS] [SEED]` — the fault-injection tests in their full form.
//! * `cargo xtask openstack up|down|status` — a local OpenStack (fake compute and volume
//!   drivers, loopback only) for the OpenStack provider's tests.
//! * `cargo xtask vm-image` — the libvirt testbed's guest disk image (Debian's kernel, a
//!   busybox and dropbear initramfs whose init reads dopv's NoCloud seed), built from Debian
//!   packages into `target/libvirt/image/dop-guest.raw` when its inputs changed.
//! * `cargo xtask libvirt up|down|status` — a local libvirt (libvirtd and virtlogd by pid, QEMU
//!   guests in software emulation, the storage pool `dop-test` holding the guest image) for the
//!   libvirt provider's tests; `down` removes dopv's domains and volumes and stops the daemons.
//! * `cargo xtask vsphere up|down|status` — VMware's vCenter simulator (vcsim and govc built
//!   from Debian's govmomi packages, cached) on 127.0.82.1 by pid, for the vSphere provider's
//!   tests.
//! * `cargo xtask puppet up|down|status` — a Puppet server (Debian's puppetserver by pid on
//!   127.0.81.1:8140, its CA, code and Hiera data in `target/puppet`, dop's autosign policy) for
//!   the Puppet tests; `down` stops it and removes its CA and data.

use std::path::PathBuf;
use std::process::ExitCode;

#[cfg(test)]
mod arrows;
mod bench;
mod chaos;
mod demo;
mod dist;
mod host;
mod libvirt;
mod openstack;
mod puppet;
mod testbed;
mod vm_image;
mod vsphere;

const USAGE: &str = "usage: cargo xtask <demo [PLANFILE] | bench [parse|store|ssh|dopc|soak|fleet] | dist | docs | chaos [KILLS] [SEED] | testbed up N [DIR] | testbed down [DIR] | openstack up|down|status | vm-image | libvirt up|down|status | vsphere up|down|status | puppet up|down|status>";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo::run(args.get(1).map(PathBuf::from)),
        Some("bench") => bench::run(args.get(1).map_or("all", String::as_str)),
        Some("testbed") => testbed::run(&args[1..]),
        Some("dist") => dist::dist(),
        Some("docs") => dist::docs()
            .map(|files| println!("{files} completion and man page files in target/dist")),
        Some("chaos") => chaos::run(args.get(1), args.get(2)),
        Some("openstack") => openstack::run(&args[1..]),
        Some("vm-image") => vm_image::run(&args[1..]),
        Some("libvirt") => libvirt::run(&args[1..]),
        Some("vsphere") => vsphere::run(&args[1..]),
        Some("puppet") => puppet::run(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => Err(USAGE.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
