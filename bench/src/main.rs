//! `sidewire-bench`: loopback load generator for sidewire and comparable servers.
//!
//! Scenarios (one per module): `idle` (connect rate, server memory per idle connection),
//! `fanout` (deliveries per second, delivery latency, loss / order check), `rpc` (closed-loop
//! rpc `echo`), `flood` (victims' latency and server memory while one client attacks), plus `floor-server` (a minimal raw WebSocket server to compare against) and
//! `report` (Markdown tables from result lines). Every scenario prints one human line and one
//! JSON line (`{"scenario": ..., ...}`). Only loopback addresses are accepted.
#![forbid(unsafe_code)]

mod client;
mod fanout;
mod flood;
mod floor;
mod frame;
mod http;
mod idle;
mod report;
mod rpc;
mod stats;
mod stream;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "sidewire-bench",
    version,
    about = "Loopback load generator for sidewire"
)]
struct Cli {
    /// Tokio worker threads of this process (default: the CPUs it may run on).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Scenario,
}

/// What to run.
#[derive(Debug, Subcommand)]
enum Scenario {
    /// Open N idle connections; connect rate and server KiB per connection.
    Idle(idle::IdleArgs),
    /// N subscribers over C channels, publications through the HTTP API.
    Fanout(fanout::FanoutArgs),
    /// K clients calling rpc `echo` in a closed loop.
    Rpc(rpc::RpcArgs),
    /// One hostile client floods (subscribe or publish) while victims call rpc `echo`.
    Flood(flood::FloodArgs),
    /// Minimal raw WebSocket server with an HTTP publish endpoint (the comparison floor).
    FloorServer(floor::FloorArgs),
    /// Markdown tables from a file of result lines.
    Report(report::ReportArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Scenario::Report(args) = cli.command {
        return finish(report::run(args));
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(threads) = cli.threads {
        builder.worker_threads(threads.max(1));
    }
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sidewire-bench: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Scenario::Idle(args) => idle::run(args).await,
            Scenario::Fanout(args) => fanout::run(args).await,
            Scenario::Rpc(args) => rpc::run(args).await,
            Scenario::Flood(args) => flood::run(args).await,
            Scenario::FloorServer(args) => floor::run(args).await,
            Scenario::Report(_) => Ok(()),
        }
    });
    // Connection tasks still unwinding must not delay the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    finish(result)
}

fn finish(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sidewire-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}
