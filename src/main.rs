use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// flowgate: keeps exactly one Node-RED instance active and fails over in well under a second.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run flowgate.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file, list every problem, exit non-zero if there is any.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Make a Node-RED user directory boot with its flows stopped (use as ExecStartPre).
    PrepareStandby {
        #[arg(long)]
        user_dir: PathBuf,
    },
}

/// Exit code for a bad config (EX_USAGE).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Check { config } => match flowgate::config::load(&config) {
            Ok(c) => {
                println!("{}: ok ({} backends)", config.display(), c.backends.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Cmd::PrepareStandby { user_dir } => match flowgate::standby::prepare_standby(&user_dir) {
            Ok(()) => {
                println!("{}: runtimeFlowState set to stop", user_dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("prepare-standby: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::Run { config } => {
            let cfg = match flowgate::config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            init_logging(&cfg.log);
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
            rt.block_on(run(cfg))
        }
    }
}

fn init_logging(log: &flowgate::config::LogConfig) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(log.level.as_deref().unwrap_or("info")));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if log.json { builder.json().init() } else { builder.init() }
}

async fn run(cfg: flowgate::config::Config) -> ExitCode {
    let listeners = match flowgate::Listeners::bind(&cfg).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let handle = match flowgate::start(cfg, listeners) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    shutdown_signal().await;
    tracing::info!("shutting down; Node-RED instances keep their state (the active keeps running flows)");
    handle.shutdown(Duration::from_secs(15)).await;
    ExitCode::SUCCESS
}

/// SIGTERM (service managers) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
