//! The `sidewire` binary: run the sidecar, validate a config, run the standalone hub, or
//! print a token.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sidewire::app::{LogControl, Sidecar, StandaloneHub, hub_shutdown_sequence, shutdown_sequence};
use sidewire::cli::gentoken::{self, TokenRequest};
use sidewire::config::{Config, LogConfig, LogFormat, duration, env, sources};
use sidewire::lifecycle;
use sidewire::reload::{self, Trigger};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, reload as log_reload};

#[derive(Parser)]
#[command(
    name = "sidewire",
    version,
    about = "Real-time transports sidecar (Centrifugo-compatible)"
)]
struct Cli {
    /// YAML config file (defaults apply when omitted).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the sidecar (the default).
    Run,
    /// Validate the config and exit.
    Check,
    /// Run the reference hub standalone (gRPC Link server + server API).
    Hub,
    /// Print a connection token (or, with --channel, a subscription token) signed with
    /// hub.client.token.hmac_secret_key (HS256), as `centrifugo gentoken` does.
    Gentoken(GentokenArgs),
}

#[derive(clap::Args)]
struct GentokenArgs {
    /// User id (`sub` claim).
    #[arg(long, short)]
    user: String,
    /// Lifetime, e.g. 1h, 30m, 3600s (`exp` = now + ttl).
    #[arg(long, short, default_value = "168h", value_parser = duration::parse)]
    ttl: std::time::Duration,
    /// Make a subscription token for this channel (adds the `channel` claim).
    #[arg(long)]
    channel: Option<String>,
    /// Connection info, a JSON value (`info` claim).
    #[arg(long)]
    info: Option<String>,
}

/// Prints the token for `args`; exit code 1 with a clear message on error.
fn print_token(config: &Config, args: &GentokenArgs) -> anyhow::Result<()> {
    let info = args.info.as_deref().map(gentoken::parse_info).transpose()?;
    let request = TokenRequest {
        user: args.user.clone(),
        ttl: args.ttl,
        channel: args.channel.clone(),
        info,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("system clock before 1970")?
        .as_secs();
    let token = gentoken::generate(&config.hub.client, &request, now)?;
    let kind = if request.channel.is_some() {
        "subscription"
    } else {
        "connection"
    };
    eprintln!(
        "HS256 {kind} token for user {:?}, expires in {:?}:",
        request.user, request.ttl
    );
    println!("{token}");
    Ok(())
}

/// Logs which config keys the environment set (names only: values may be secrets) and
/// warns about `SIDEWIRE_*` variables that look like config keys but match none.
fn report_environment() {
    let vars = sources::process_vars();
    let schema = sources::schema();
    let applied = env::applied_variables(schema, &vars);
    if !applied.is_empty() {
        tracing::info!(variables = %applied.join(","), "config keys set from the environment");
    }
    for name in env::unknown_variables(schema, &vars) {
        tracing::warn!(variable = %name, "environment variable looks like a config key but matches none; ignored");
    }
}

fn load(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(path) => Config::load(path).with_context(|| format!("config {}", path.display())),
        // Defaults, with the SIDEWIRE_* overrides of the environment.
        None => Config::from_yaml("").context("config from the environment"),
    }
}

/// Installs the log subscriber; returns a control that swaps the filter at run time.
fn init_logging(log: &LogConfig) -> LogControl {
    let (filter, handle) = log_reload::Layer::new(log.level.filter());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let format = match log.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(format)
        .init();
    Box::new(move |filter: EnvFilter| {
        // Fails only once the subscriber is gone (the process is exiting): nothing to log to.
        let _ = handle.reload(filter);
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = match load(cli.config.as_ref()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("sidewire: {error:#}");
            std::process::exit(2);
        }
    };
    let command = cli.command.unwrap_or(Command::Run);
    match &command {
        Command::Check => {
            for name in env::unknown_variables(sources::schema(), &sources::process_vars()) {
                eprintln!(
                    "sidewire: warning: {name} looks like a config key but matches none; ignored"
                );
            }
            println!("sidewire: configuration is valid");
            return Ok(());
        }
        Command::Gentoken(args) => {
            if let Err(error) = print_token(&config, args) {
                eprintln!("sidewire gentoken: {error:#}");
                std::process::exit(1);
            }
            return Ok(());
        }
        Command::Run | Command::Hub => {}
    }
    let log_control = init_logging(&config.log);
    report_environment();
    let (phase_tx, phase) = lifecycle::channel();
    // Every handler is installed before the listening line is printed: a signal sent right
    // after it must find them.
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    match command {
        Command::Run | Command::Check | Command::Gentoken(_) => {
            let sidecar = Sidecar::bind(config, phase.clone(), Some(log_control)).await?;
            let (client, admin) = sidecar.addresses();
            let runtime = sidecar.runtime();
            println!("sidewire listening client={client} admin={admin}");
            tracing::info!(%client, %admin, "sidewire listening");

            let (trigger_tx, trigger_rx) = mpsc::channel(8);
            if let Some(path) = cli.config.clone() {
                tokio::spawn(reload::run(
                    path,
                    runtime.clone(),
                    trigger_tx.clone(),
                    trigger_rx,
                    phase.clone(),
                ));
            }
            let hup_trigger = trigger_tx.clone();
            tokio::spawn(async move {
                while hangup.recv().await.is_some() {
                    tracing::info!("SIGHUP: reloading config");
                    // Waits for room rather than dropping the request.
                    if hup_trigger.send(Trigger::Signal).await.is_err() {
                        break;
                    }
                }
            });

            let (deadline_tx, deadline) = watch::channel(None);
            let phase_tx = Arc::new(phase_tx);
            let signals_runtime = runtime.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = interrupt.recv() => {}
                }
                tracing::info!("shutdown signal received");
                shutdown_sequence(signals_runtime, (*phase_tx).clone(), deadline_tx).await;
            });
            sidecar.serve(deadline).await;
            tracing::info!("sidewire stopped");
        }
        Command::Hub => {
            let shutdown = config.shutdown.clone();
            let hub = StandaloneHub::bind(config, phase).await?;
            let (link, api) = hub.addresses();
            println!("sidewire hub listening link={link} api={api}");
            tracing::info!(%link, %api, "sidewire hub listening");
            let serving = tokio::spawn(hub.serve());
            tokio::select! {
                _ = terminate.recv() => {}
                _ = interrupt.recv() => {}
            }
            tracing::info!("shutdown signal received");
            hub_shutdown_sequence(shutdown, phase_tx).await;
            serving.abort();
            tracing::info!("sidewire hub stopped");
        }
    }
    Ok(())
}
