//! `dop-puppet-autosign`: see [`dop_puppet`].

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use dop_core::{Config, Environment};
use dop_puppet::app::Cli;
use dop_puppet::{decide, Policy, Verdict};

/// Puppet sends a request of a few kilobytes; more is not one.
const MAX_REQUEST: u64 = 1 << 20;

fn main() -> ExitCode {
    let cli: Cli = dop_cli::parse();
    // The Puppet server's user is not root, but the settings are the system's.
    let env = Environment {
        root: true,
        ..Environment::of_process()
    };
    let file = cli.config.clone().or_else(|| {
        let system = PathBuf::from("/etc/dop/dop.conf");
        system.exists().then_some(system)
    });
    let config = match Config::load(&env, file.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("dop-puppet-autosign: refused {}: {e}", cli.certname);
            return ExitCode::from(1);
        }
    };
    let data_dir = cli.data_dir.clone().unwrap_or_else(|| config.hiera_dir());
    let mut csr = Vec::new();
    let verdict = match std::io::stdin().take(MAX_REQUEST).read_to_end(&mut csr) {
        Ok(_) => decide(
            &Policy {
                data_dir: &data_dir,
                require_challenge: cli.require_challenge,
            },
            &cli.certname,
            &csr,
        ),
        Err(e) => Verdict::Refuse(format!("cannot read the request on standard input: {e}")),
    };
    let line = match &verdict {
        Verdict::Sign { plan, challenged } => format!(
            "signed {} (node of plan '{plan}'{})",
            cli.certname,
            if *challenged {
                ", challenge password checked"
            } else {
                ""
            }
        ),
        Verdict::Refuse(reason) => format!("refused {}: {reason}", cli.certname),
    };
    eprintln!("dop-puppet-autosign: {line}");
    let log_file = cli
        .log_file
        .clone()
        .unwrap_or_else(|| config.log_dir.join("autosign.log"));
    if log_file.as_os_str() != "-" {
        let record = serde_json::json!({
            "time": dop_store::rfc3339(dop_store::now_ms()),
            "certname": cli.certname,
            "signed": verdict.exit_status() == 0,
            "decision": line,
        });
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_file)
            .and_then(|mut f| writeln!(f, "{record}"));
        if let Err(e) = written {
            eprintln!(
                "dop-puppet-autosign: cannot log to {}: {e}",
                log_file.display()
            );
        }
    }
    ExitCode::from(verdict.exit_status())
}
