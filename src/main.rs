//! The `sidewire` binary: run the sidecar, validate a config, or run the standalone hub.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sidewire::app::{LogControl, Sidecar, StandaloneHub, hub_shutdown_sequence, shutdown_sequence};
use sidewire::config::{Config, LogConfig, LogFormat};
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
}

fn load(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(path) => Config::load(path).with_context(|| format!("config {}", path.display())),
        None => Ok(Config::default()),
    }
}

/// Installs the log subscriber; returns a control that swaps the filter at run time.
fn init_logging(log: &LogConfig) -> LogControl {
    let filter = EnvFilter::try_new(&log.level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = log_reload::Layer::new(filter);
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
    Box::new(move |level: &str| {
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
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
    if let Command::Check = command {
        println!("sidewire: configuration is valid");
        return Ok(());
    }
    let log_control = init_logging(&config.log);
    let (phase_tx, phase) = lifecycle::channel();
    // Every handler is installed before the listening line is printed: a signal sent right
    // after it must find them.
    let mut terminate = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let mut hangup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    match command {
        Command::Run | Command::Check => {
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
