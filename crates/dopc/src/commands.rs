//! What the `dopc` commands of the server side do (`serve`, `token`, `openapi`); the binary
//! parses the arguments and calls these, the client commands live in dopc-client.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use dop_cli::{self as cli, EXIT_FAILURE, EXIT_OK};
use dop_core::Config;

use crate::app::{ServeArgs, TokenCommand};
use crate::server::ServeConfig;

/// `dopc openapi`: prints the OpenAPI document.
pub fn openapi(out: &mut dyn Write) -> u8 {
    let _ = writeln!(out, "{}", crate::openapi::document());
    EXIT_OK
}

/// `dopc serve`: serves the API until SIGTERM or SIGINT.
pub fn serve(args: &ServeArgs, config: &Config, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let file = args.server_config.clone().or_else(|| {
        let default = PathBuf::from("/etc/dop/dopc.toml");
        default.exists().then_some(default)
    });
    let mut settings = match &file {
        Some(f) => match std::fs::read_to_string(f)
            .map_err(|e| e.to_string())
            .and_then(|t| ServeConfig::from_toml(&t))
        {
            Ok(s) => s,
            Err(e) => {
                let _ = writeln!(err, "error: {}: {e}", f.display());
                return EXIT_FAILURE;
            }
        },
        None => ServeConfig::default(),
    };
    if let Some(bind) = args.bind {
        settings.bind = bind;
    }
    if let Some(dir) = args.local_dir.clone().filter(|d| !d.as_os_str().is_empty()) {
        settings.local_dir = Some(dir);
    }
    // The request log and the server's own messages: `cli::main_with` set up the diagnostics
    // at dop.conf's `verbosity` (info by default), `--verbosity` or `DOP_LOG`.
    let url = config
        .store_url
        .as_deref()
        .or(settings.store_url.as_deref());
    let store = match dop_store::Store::open_at(&config.store_dir, url) {
        Ok(s) => Arc::new(s),
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "error: cannot start the runtime: {e}");
            return EXIT_FAILURE;
        }
    };
    let log_dir = config.log_dir.clone();
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(settings.bind)
            .await
            .map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", settings.bind))
            })?;
        // The address, for people and for scripts that asked for port 0.
        let scheme = if settings.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let _ = writeln!(
            out,
            "dopc listening on {scheme}://{}",
            listener.local_addr()?
        );
        let _ = out.flush();
        settings.hiera_dir = Some(config.hiera_dir());
        settings.lookup = config.lookup.clone();
        settings.limits = config.limits;
        crate::server::serve(listener, store, log_dir, &settings, stop_signal()).await
    });
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            EXIT_FAILURE
        }
    }
}

/// `--plans a,b,/web.*/` as patterns (a comma inside a `/regex/` does not split it; `all` or
/// nothing: every plan).
fn plan_patterns(list: Option<&str>) -> Result<Vec<String>, crate::auth::TokenError> {
    let selector = dop_core::Selector::parse_cli_list(list.unwrap_or(""))?;
    Ok(selector.patterns().iter().map(|p| p.to_string()).collect())
}

/// One token in `token list`: name, role, plans, times.
fn token_line(t: &crate::auth::TokenRecord) -> String {
    let plans = match t.plans.is_empty() {
        true => "all plans".to_string(),
        false => format!("plans {}", t.plans.join(",")),
    };
    format!(
        "{:<24} {:<8} {:<24} created {}{}",
        t.name,
        t.role,
        plans,
        dop_store::rfc3339(t.created_ms),
        t.revoked_ms
            .map(|r| format!(", revoked {}", dop_store::rfc3339(r)))
            .unwrap_or_default()
    )
}

async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => std::future::pending().await,
    }
}

/// `dopc token create|list|revoke`.
pub fn token(
    command: &TokenCommand,
    json: bool,
    config: &Config,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let store = match dop_store::Store::open_at(&config.store_dir, config.store_url.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_FAILURE;
        }
    };
    let result = match command {
        TokenCommand::Create { name, role, plans } => plan_patterns(plans.as_deref())
            .and_then(|plans| crate::auth::create(&store, name, *role, &plans))
            .map(|t| {
                let _ = writeln!(out, "{t}");
                let _ = writeln!(
                    err,
                    "token '{name}' ({role}) created; it is shown only now: keep it safe"
                );
            }),
        TokenCommand::List => crate::auth::list(&store).map(|tokens| {
            if json {
                cli::print_json(out, &tokens);
            } else {
                for t in tokens {
                    let _ = writeln!(out, "{}", token_line(&t));
                }
            }
        }),
        TokenCommand::Revoke { name } => crate::auth::revoke(&store, name).map(|n| {
            let _ = writeln!(out, "revoked {n} token(s) named '{name}'");
        }),
    };
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            EXIT_FAILURE
        }
    }
}
