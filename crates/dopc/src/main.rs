//! `dopc`: the server that queues dopv and dopi executions and serves their logs and state.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use dop_core::cli::{self, ValidateArgs, EXIT_FAILURE, EXIT_OK};
use dop_core::Config;
use dopc::server::ServeConfig;

/// The dop server: queues executions of dopv and dopi, streams their logs and serves the
/// combined state of each plan.
#[derive(Parser)]
#[command(name = "dopc", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(flatten)]
    global: cli::GlobalArgs,
    #[command(flatten)]
    client: dopc::cli::ClientArgs,
    #[command(subcommand)]
    command: Command,
}

const EXIT_CODES: &str = "Exit status: 0 success, 1 invalid plan, failed command or failed \
                          execution, 2 usage error, 4 execution cancelled, 5 server unreachable \
                          (or TLS failed, or it timed out), 6 token refused.";

#[derive(Subcommand)]
enum Command {
    /// Check a plan file and report every problem at once (file, plan path, line).
    Validate(ValidateArgs),
    /// Serve the API (`/api/v1`) until SIGTERM or SIGINT; then stop taking requests and hand
    /// running executions back to the queue.
    Serve(ServeArgs),
    /// Manage API tokens (stored hashed in the plan store; works while a server runs).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print the API's OpenAPI description (JSON).
    Openapi,
    /// Ask the server whether it answers.
    Ping,
    /// Plans on the server.
    #[command(subcommand)]
    Plan(dopc::cli::PlanCommand),
    /// Executions on the server: start tasks, follow logs, cancel, clean up.
    #[command(subcommand)]
    Execution(dopc::cli::ExecutionCommand),
}

#[derive(Args)]
struct ServeArgs {
    /// The server's settings file (TOML: bind, max_body_bytes, shutdown_timeout_secs,
    /// local_dir, connect_timeout_secs, [tls] cert and key) [default: /etc/dop/dopc.toml when
    /// it exists].
    #[arg(
        long,
        value_name = "FILE",
        env = "DOPC_SERVER_CONFIG",
        hide_env_values = true
    )]
    server_config: Option<PathBuf>,
    /// Where to listen [default: 127.0.0.1:8780; port 0 picks a free one].
    #[arg(long, value_name = "ADDR", env = "DOPC_BIND", hide_env_values = true)]
    bind: Option<SocketAddr>,
    /// Where the `local` provider keeps its nodes [default: <store-dir>/local].
    #[arg(
        long,
        value_name = "DIR",
        env = "DOP_LOCAL_DIR",
        hide_env_values = true
    )]
    local_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make a token; it is printed once and stored only as its hash.
    Create {
        /// Who or what uses it.
        name: String,
    },
    /// List the tokens (names and times; never the tokens); `--json` for JSON.
    List,
    /// Revoke the tokens of a name: requests with them are refused from now on.
    Revoke {
        /// The token's name.
        name: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cli::main_with(&cli.global, |config, out, err| match &cli.command {
        Command::Validate(args) => cli::validate(args, config, out, err),
        Command::Serve(args) => serve(args, config, out, err),
        Command::Token(command) => token(command, cli.client.json, config, out, err),
        Command::Openapi => {
            let _ = writeln!(out, "{}", dopc::openapi::document());
            EXIT_OK
        }
        Command::Ping | Command::Plan(_) | Command::Execution(_) => client(&cli, out, err),
    })
}

fn serve(args: &ServeArgs, config: &Config, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
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
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .with_max_level(tracing::Level::INFO)
        .init();
    let store = match dop_store::Store::open(&config.store_dir) {
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
        dopc::server::serve(listener, store, log_dir, &settings, stop_signal()).await
    });
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            EXIT_FAILURE
        }
    }
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

fn client(cli: &Cli, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let client = match dopc::cli::client(&cli.client) {
        Ok(c) => c,
        Err(e) => return dopc::cli::failed(err, &e),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "error: cannot start the runtime: {e}");
            return EXIT_FAILURE;
        }
    };
    let mut session = dopc::cli::Session {
        client,
        json: cli.client.json,
        out,
        err,
    };
    runtime.block_on(async {
        match &cli.command {
            Command::Ping => dopc::cli::ping(&mut session).await,
            Command::Plan(c) => dopc::cli::plan(&mut session, c).await,
            Command::Execution(c) => dopc::cli::execution(&mut session, c).await,
            _ => EXIT_FAILURE,
        }
    })
}

fn token(
    command: &TokenCommand,
    json: bool,
    config: &Config,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let store = match dop_store::Store::open(&config.store_dir) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(err, "error: {e}");
            return EXIT_FAILURE;
        }
    };
    let result = match command {
        TokenCommand::Create { name } => dopc::auth::create(&store, name).map(|t| {
            let _ = writeln!(out, "{t}");
            let _ = writeln!(
                err,
                "token '{name}' created; it is shown only now: keep it safe"
            );
        }),
        TokenCommand::List => dopc::auth::list(&store).map(|tokens| {
            if json {
                cli::print_json(out, &tokens);
            } else {
                for t in tokens {
                    let _ = writeln!(
                        out,
                        "{:<24} created {}{}",
                        t.name,
                        dop_store::rfc3339(t.created_ms),
                        t.revoked_ms
                            .map(|r| format!(", revoked {}", dop_store::rfc3339(r)))
                            .unwrap_or_default()
                    );
                }
            }
        }),
        TokenCommand::Revoke { name } => dopc::auth::revoke(&store, name).map(|n| {
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
