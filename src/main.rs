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
    /// Validate a config file, list every problem, exit non-zero if there is any; and/or
    /// check a flows file for nodes that do not survive a HA mode (advice).
    Check {
        #[arg(long, short, required_unless_present = "flows")]
        config: Option<PathBuf>,
        /// A flows file (Node-RED's export, or flows.json): report, per HA mode, the nodes that
        /// do not survive it and the fix. With --config, its readiness.ignore applies.
        #[arg(long)]
        flows: Option<PathBuf>,
        /// Only this mode: hot-spare or load-balanced (default: both).
        #[arg(long, requires = "flows")]
        mode: Option<String>,
        /// Exit 1 when the flows have findings.
        #[arg(long, requires = "flows")]
        strict: bool,
        /// Also connect to etcd (with `cluster:`) and show the controller and the replicas;
        /// exit 69 when it cannot be reached.
        #[arg(long)]
        connect: bool,
    },
    /// Talk to a running flowgate's admin API: status, switchover, restart, rolling-restart,
    /// resync, reload.
    Ctl {
        /// The config file: the admin address and token are read from it.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The admin API, e.g. http://127.0.0.1:9901 (default: from the config, else that).
        #[arg(long)]
        url: Option<String>,
        /// The admin token (default: FLOWGATE_ADMIN_TOKEN, else admin.token from the config).
        #[arg(long, env = "FLOWGATE_ADMIN_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[command(subcommand)]
        action: CtlCmd,
    },
    /// Make a Node-RED user directory boot with its flows stopped (use as ExecStartPre).
    PrepareStandby {
        #[arg(long)]
        user_dir: PathBuf,
    },
    /// Write a self-signed certificate and key (NAME.crt, NAME.key) into a certs folder.
    SelfSigned {
        /// DNS names (and IPs) the certificate serves.
        #[arg(long = "name", required = true)]
        names: Vec<String>,
        #[arg(long, default_value = "certs")]
        out: PathBuf,
        /// File name without extension.
        #[arg(long, default_value = "self-signed")]
        file: String,
    },
}

#[derive(Subcommand)]
enum CtlCmd {
    /// A table of the instances: role, health, flows, revision, in step, last probe, recovery.
    Status,
    /// Move the active role (break-before-make); without --to, to the best standby.
    Switchover {
        #[arg(long)]
        to: Option<String>,
    },
    /// Restart a non-active instance with its restart command; waits until it is back.
    Restart { id: String },
    /// Restart every instance: standbys first, one switchover, then the old active.
    RollingRestart,
    /// Bring an instance back in step with the target flows now.
    Resync { id: String },
    /// Re-read flowgate's config file.
    Reload,
}

fn ctl(config: Option<PathBuf>, url: Option<String>, token: Option<String>, action: CtlCmd) -> ExitCode {
    use flowgate::ops::ctl::{Action, Target};
    let mut target = match &config {
        Some(path) => match flowgate::config::load(path) {
            Ok(c) => Target::from_config(&c),
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
        None => Target { url: format!("http://{}", flowgate::config::DEFAULT_ADMIN_ADDR), token: None },
    };
    if let Some(u) = url {
        target.url = u;
    }
    if token.is_some() {
        target.token = token;
    }
    let action = match action {
        CtlCmd::Status => Action::Status,
        CtlCmd::Switchover { to } => Action::Switchover { to },
        CtlCmd::Restart { id } => Action::Restart { id },
        CtlCmd::RollingRestart => Action::RollingRestart,
        CtlCmd::Resync { id } => Action::Resync { id },
        CtlCmd::Reload => Action::Reload,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    match rt.block_on(flowgate::ops::ctl::run(&target, &action)) {
        Ok(out) => {
            println!("{}", out.trim_end());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("flowgate ctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// `flowgate check --flows`: the readiness findings of a flows file.
fn check_flows(path: &std::path::Path, mode: Option<&str>, strict: bool, ignore: &[String]) -> ExitCode {
    use flowgate::readiness::{Mode, nodes, report};
    let modes: Vec<Mode> = match mode {
        None => Mode::ALL.to_vec(),
        Some(m) => match Mode::ALL.into_iter().find(|x| x.as_str() == m) {
            Some(x) => vec![x],
            None => {
                eprintln!("--mode {m}: give hot-spare or load-balanced");
                return ExitCode::from(EXIT_CONFIG);
            }
        },
    };
    let doc: serde_json::Value = match std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| format!("not JSON: {e}")))
    {
        Ok(d) => d,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if nodes(&doc).is_none() {
        eprintln!("{}: not a flows file (an array of nodes, or {{\"flows\": [...]}})", path.display());
        return ExitCode::from(EXIT_CONFIG);
    }
    let (text, found) = report(&doc, &modes, ignore);
    println!("{}: HA readiness (advice; silence a kind with readiness.ignore)\n{}", path.display(), text.trim_end());
    if strict && found > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

/// Exit code for a bad config (EX_USAGE).
const EXIT_CONFIG: u8 = 64;
/// Exit code for an unreachable etcd (EX_UNAVAILABLE).
const EXIT_UNAVAILABLE: u8 = 69;

fn check_etcd(cluster: &flowgate::config::ClusterConfig) -> ExitCode {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    match rt.block_on(flowgate::control::coord::etcd::probe(cluster)) {
        Ok(v) => {
            let controller = match (&v.controller, v.epoch) {
                (Some(c), Some(e)) => format!("{c} (epoch {e})"),
                _ => "none".into(),
            };
            println!(
                "etcd {}: ok; controller: {controller}; replicas: [{}]",
                cluster.etcd.join(", "),
                v.replicas.join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("etcd {}: {e}", cluster.etcd.join(", "));
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Check { config, connect, flows, mode, strict } => {
            let mut ignore = Vec::new();
            if let Some(config) = config {
                match flowgate::config::load(&config) {
                    Ok(c) => {
                        println!("{}: ok ({} backends)", config.display(), c.backends.len());
                        let code = match (&c.cluster, connect) {
                            (Some(cluster), true) => check_etcd(cluster),
                            (None, true) => {
                                println!("no cluster: section: nothing to connect to");
                                ExitCode::SUCCESS
                            }
                            _ => ExitCode::SUCCESS,
                        };
                        if code != ExitCode::SUCCESS {
                            return code;
                        }
                        ignore = c.readiness_ignore;
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        return ExitCode::from(EXIT_CONFIG);
                    }
                }
            }
            match flows {
                Some(f) => check_flows(&f, mode.as_deref(), strict, &ignore),
                None => ExitCode::SUCCESS,
            }
        }
        Cmd::Ctl { config, url, token, action } => ctl(config, url, token, action),
        Cmd::PrepareStandby { user_dir } => match flowgate::ops::standby::prepare_standby(&user_dir) {
            Ok(()) => {
                println!("{}: runtimeFlowState set to stop", user_dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("prepare-standby: {e}");
                ExitCode::FAILURE
            }
        },
        Cmd::SelfSigned { names, out, file } => {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            let written =
                flowgate::traffic::tls::self_signed(&names).map_err(|e| e.to_string()).and_then(|(cert, key)| {
                    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
                    std::fs::write(out.join(format!("{file}.crt")), cert).map_err(|e| e.to_string())?;
                    let key_path = out.join(format!("{file}.key"));
                    std::fs::write(&key_path, key).map_err(|e| e.to_string())?;
                    #[cfg(unix)]
                    {
                        use std::os::unix::fs::PermissionsExt;
                        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))
                            .map_err(|e| e.to_string())?;
                    }
                    Ok(())
                });
            match written {
                Ok(()) => {
                    println!("{}: wrote {file}.crt and {file}.key", out.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("self-signed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Cmd::Run { config } => {
            let cfg = match flowgate::config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            init_logging(&cfg.log);
            // Client connections are served by one current-thread runtime per core (or
            // FLOWGATE_WORKERS), each connection staying on one: a request never wakes another
            // thread. Health, election and the admin API run on their own runtime.
            let workers = match std::env::var("FLOWGATE_WORKERS") {
                Err(_) => std::thread::available_parallelism().map_or(1, |n| n.get()),
                Ok(w) => match w.parse::<usize>() {
                    Ok(n) if n > 0 => n,
                    _ => {
                        eprintln!("FLOWGATE_WORKERS: expected a number of threads (1 or more), got {w:?}");
                        return ExitCode::from(EXIT_CONFIG);
                    }
                },
            };
            let workers = match flowgate::traffic::server::Workers::spawn(workers) {
                Ok(w) => w,
                Err(e) => {
                    eprintln!("cannot start the worker threads: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            let code = rt.block_on(run(cfg, config, workers.handles()));
            workers.stop();
            code
        }
    }
}

fn init_logging(log: &flowgate::config::LogConfig) {
    // rustls warns on every handshake from a client that sends an IP address as SNI (which
    // clients connecting by IP do): at its default level that floods the log.
    let level = log.level.as_deref().unwrap_or("info");
    let level = if level.contains("rustls") { level.to_string() } else { format!("{level},rustls=error") };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // Diagnostics go to stderr; stdout stays for command output.
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if log.json { builder.json().init() } else { builder.init() }
}

async fn run(cfg: flowgate::config::Config, path: PathBuf, workers: Vec<tokio::runtime::Handle>) -> ExitCode {
    // Every client connection, websocket tunnel and upstream connection is a file descriptor:
    // take all the system allows (the soft limit is often 1024) rather than fail at 1024.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(limit = n, "open file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit"),
    }
    let listeners = match flowgate::Listeners::bind(&cfg).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen");
            return ExitCode::FAILURE;
        }
    };
    let handle = match flowgate::start_on(cfg, listeners, Some(path), workers) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::FAILURE;
        }
    };
    handle.watch_config(Duration::from_secs(2));
    #[cfg(unix)]
    {
        let app = handle.app.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
            while hup.recv().await.is_some() {
                let _ = app.reload_file().await;
            }
        });
    }
    shutdown_signal().await;
    tracing::info!("shutting down; Node-RED instances keep their state (the active keeps running flows)");
    handle.shutdown().await;
    ExitCode::SUCCESS
}

/// SIGTERM (service managers) or SIGINT (Ctrl-C). SIGHUP reloads the configuration.
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
