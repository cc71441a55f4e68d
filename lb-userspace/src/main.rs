//! `lb`: the load balancer daemon and its CLI.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use lb_common::maps::PROG_PASS;
use lb_userspace::{config::Config, dataplane::Dataplane};
use tracing::{info, warn};

// The proxy allocates per request (headers, bodies' frames); glibc's malloc cost 9 % of the
// proxy's CPU under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
enum Output {
    Table,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Attach the data plane to the config's interfaces and balance until SIGINT/SIGTERM.
    /// SIGHUP, or a change of the file, reloads the config (only the difference is applied;
    /// an invalid file is rejected and the running config stays).
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Remove a pinned data plane first instead of taking it over.
        #[arg(long)]
        fresh: bool,
        /// On SIGINT/SIGTERM detach XDP and remove the pins (by default the pinned data
        /// plane keeps forwarding for the next `lb run`).
        #[arg(long)]
        detach_on_exit: bool,
    },
    /// Detach a pinned data plane and remove its pins (`[dataplane] pin_path`).
    Stop {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file and exit (non-zero when it is invalid).
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Frontends and servers of the running daemon (health, weight, open flows, rates), read
    /// from its metrics endpoint (`[metrics] listen` in the config).
    Status {
        #[arg(long, short)]
        config: PathBuf,
        /// Output format.
        #[arg(long, short, value_enum, default_value_t = Output::Table)]
        output: Output,
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
        Command::Run {
            config: path,
            fresh,
            detach_on_exit,
        } => match Config::load(&path) {
            Ok(c) => {
                let options = lb_userspace::daemon::RunOptions {
                    fresh,
                    detach_on_exit,
                };
                lb_userspace::daemon::Daemon::start(&path, c, options).and_then(|d| d.run())
            }
            Err(e) => {
                eprint!("{e}");
                return ExitCode::from(2);
            }
        },
        Command::Peer { interfaces } => peer(&interfaces),
        Command::Status { config, output } => status(&config, output),
        Command::Stop { config } => match Config::load(&config) {
            Ok(c) => {
                let dir = lb_userspace::dataplane::pin_dir(&c.dataplane.pin_path);
                lb_userspace::dataplane::remove_pins(&dir).map(|()| {
                    println!(
                        "removed {}: the pinned data plane is detached",
                        dir.display()
                    )
                })
            }
            Err(e) => {
                eprint!("{e}");
                return ExitCode::from(2);
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn status(path: &std::path::Path, output: Output) -> Result<()> {
    let config = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let listen = config.metrics.listen.ok_or_else(|| {
        anyhow::anyhow!(
            "{}: lb status reads the daemon's metrics; set [metrics] listen = \"127.0.0.1:9100\" and reload",
            path.display()
        )
    })?;
    let status = lb_userspace::status::collect(listen)?;
    match output {
        Output::Table => print!("{}", lb_userspace::status::table(&status)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
    }
    Ok(())
}

fn peer(interfaces: &[String]) -> Result<()> {
    let mut dataplane = Dataplane::load()?;
    for iface in interfaces {
        dataplane.attach(PROG_PASS, iface)?;
    }
    info!(?interfaces, "ready");
    run_until_signal(std::time::Duration::from_secs(3600), || {})
}

/// Call `tick` every `interval` until SIGINT or SIGTERM.
fn run_until_signal(interval: std::time::Duration, mut tick: impl FnMut()) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut ticks = tokio::time::interval(interval);
        loop {
            tokio::select! {
                r = tokio::signal::ctrl_c() => { r?; break }
                _ = term.recv() => break,
                _ = ticks.tick() => tick(),
            }
        }
        warn!("signal received; detaching");
        Ok::<(), anyhow::Error>(())
    })
}
