//! `lb`: the load balancer daemon and its CLI.

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};
use lb_common::maps::{PROG_LB, PROG_PASS};
use lb_userspace::{config::Config, dataplane::Dataplane, plan::Plan};
use tracing::{info, warn};

#[derive(Parser)]
#[command(
    name = "lb",
    version,
    about = "XDP load balancer for bare-metal edge nodes"
)]
struct Cli {
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the data plane to the config's interfaces and balance until SIGINT/SIGTERM.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file and exit (non-zero when it is invalid).
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Attach the pass-only XDP program to an interface (for the far end of a veth, so that
    /// frames lb redirects into the veth are delivered) and wait until SIGINT/SIGTERM.
    #[command(hide = true)]
    Peer { interfaces: Vec<String> },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    let result = match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} frontends, {} backends)",
                    config.display(),
                    c.frontends.len(),
                    c.backends.len()
                );
                Ok(())
            }
            Err(e) => {
                eprint!("{e}");
                return ExitCode::from(2);
            }
        },
        Command::Run { config } => match Config::load(&config) {
            Ok(c) => run(c),
            Err(e) => {
                eprint!("{e}");
                return ExitCode::from(2);
            }
        },
        Command::Peer { interfaces } => peer(&interfaces),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: Config) -> Result<()> {
    let mut dataplane = Dataplane::load()?;
    for iface in config.interfaces() {
        let ifindex = nix::net::if_::if_nametoindex(iface.as_str()).with_context(|| {
            format!("interface {iface:?} (frontends[].interfaces) does not exist")
        })?;
        let mode = dataplane.attach(PROG_LB, &iface)?;
        dataplane.add_tx_port(ifindex)?;
        info!(%iface, ifindex, ?mode, "XDP attached");
    }
    let plan = Plan::from_config(&config);
    let written = dataplane.apply(&plan)?;
    info!(
        frontends = plan.frontends.len(),
        servers = plan.servers.len(),
        slots_written = written,
        "ready"
    );
    wait_for_signal()?;
    for (label, value) in dataplane.stats()? {
        if value > 0 {
            info!(counter = label, value, "xdp counter");
        }
    }
    drop(dataplane);
    info!("XDP detached; bye");
    Ok(())
}

fn peer(interfaces: &[String]) -> Result<()> {
    let mut dataplane = Dataplane::load()?;
    for iface in interfaces {
        dataplane.attach(PROG_PASS, iface)?;
    }
    info!(?interfaces, "ready");
    wait_for_signal()
}

fn wait_for_signal() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
        warn!("signal received; detaching");
        Ok::<(), anyhow::Error>(())
    })
}
