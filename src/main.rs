//! The `sidewire` binary: run the sidecar, validate a config, or run the standalone hub.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sidewire::app::{Sidecar, StandaloneHub};
use sidewire::config::{Config, LogConfig, LogFormat};
use tokio::sync::watch;

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
}

fn load(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(path) => Config::load(path).with_context(|| format!("config {}", path.display())),
        None => Ok(Config::default()),
    }
}

fn init_logging(log: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_new(&log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Fires the shutdown watch on SIGINT or SIGTERM.
fn spawn_signal_handler(shutdown: watch::Sender<bool>) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down");
        let _ = shutdown.send(true);
    });
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
    if let Command::Check = command {
        println!("sidewire: configuration is valid");
        return Ok(());
    }
    init_logging(&config.log);
    let (shutdown_tx, shutdown) = watch::channel(false);
    spawn_signal_handler(shutdown_tx);
    match command {
        Command::Run | Command::Check => {
            let sidecar = Sidecar::bind(config, shutdown).await?;
            let (client, admin) = sidecar.addresses();
            println!("sidewire listening client={client} admin={admin}");
            tracing::info!(%client, %admin, "sidewire listening");
            sidecar.serve().await;
        }
        Command::Hub => {
            let hub = StandaloneHub::bind(config, shutdown).await?;
            let (link, api) = hub.addresses();
            println!("sidewire hub listening link={link} api={api}");
            tracing::info!(%link, %api, "sidewire hub listening");
            hub.serve().await;
        }
    }
    Ok(())
}
