//! `lb`: the load balancer daemon and its CLI.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Result;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand, ValueEnum};
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
    /// How the daemon's log lines are written to stderr (RUST_LOG sets the level).
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

/// How to reach the REST API.
#[derive(clap::Args)]
struct ApiArgs {
    /// The daemon's API (`[api] listen`).
    #[arg(
        long,
        env = "LB_API_URL",
        default_value = "http://127.0.0.1:8081",
        global = true
    )]
    api: String,
    /// Bearer token (a line of `[api] token_file`).
    #[arg(long, env = "LB_API_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Load balancer id (default: the first the API lists).
    #[arg(long, env = "LB_ID", global = true)]
    lb: Option<String>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Table, global = true)]
    output: Output,
}

#[derive(Subcommand)]
enum Action {
    /// Every one, a line each.
    List,
    /// One, as the JSON document the API stores.
    Get {
        /// Its name.
        name: String,
    },
    /// Replace NAME with the JSON document in FILE ("-" for stdin), or create it.
    Put {
        /// Its name.
        name: String,
        /// The JSON document ("-" for stdin).
        #[arg(long, short)]
        file: String,
    },
    /// Remove it (the config file is saved without it).
    Delete {
        /// Its name.
        name: String,
    },
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
        /// The config file (TOML).
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
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Preflight: check the host for lb (kernel, BTF, memlock) and, with --config, the BPF
    /// filesystem at pin_path, native XDP on each interface, DSR and the servers' next hops.
    /// Exits non-zero when a check fails; each problem comes with its fix.
    Doctor {
        /// The config file (TOML) to check the host against.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to stdout: `lb man | man -l -`.
    Man,
    /// Validate a config file and exit (non-zero when it is invalid).
    Check {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// The running daemon through its REST API: frontends with open flows, totals and rates;
    /// each backend's servers with configured and effective weight, health and open flows.
    /// With --config, the API is the one that config's `[api]` names.
    Status {
        /// Reach the API that this config file's `[api]` names, with its first token.
        #[arg(long, short)]
        config: Option<PathBuf>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Backends of a load balancer, through the REST API.
    Backends {
        #[command(subcommand)]
        action: Action,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Frontends of a load balancer, through the REST API.
    Frontends {
        #[command(subcommand)]
        action: Action,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// A backend's servers with live health, weight and open flows, through the REST API.
    Servers {
        /// The backend's name.
        backend: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Change one server at runtime, through the REST API; the change is saved to the
    /// config file (its comments kept). SERVER is the server's name or address.
    Server {
        #[command(subcommand)]
        action: ServerAction,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// High availability: the configs lb's partners need (README "High availability").
    Ha {
        #[command(subcommand)]
        action: HaAction,
    },
    /// Attach the pass-only XDP program to an interface (for the far end of a veth, so that
    /// frames lb redirects into the veth are delivered) and wait until SIGINT/SIGTERM.
    #[command(hide = true)]
    Peer {
        /// The interfaces to attach it to.
        interfaces: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ServerAction {
    /// Set the configured weight (0..100; 0 takes no new flows).
    SetWeight {
        /// The backend's name.
        backend: String,
        /// The server's name or address.
        server: String,
        /// The new weight.
        weight: u32,
    },
    /// No new flows; its flows run on, until the timeout if one is given, then the
    /// backend's `on_drain_timeout` ("reset", the default, or "keep") applies.
    Drain {
        /// The backend's name.
        backend: String,
        /// The server's name or address.
        server: String,
        /// How long its flows may run on ("30s", "5m"); default: until `lb server ready`.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<std::time::Duration>,
    },
    /// Maintenance: no new flows, health checks paused; its flows run on.
    Maint {
        /// The backend's name.
        backend: String,
        /// The server's name or address.
        server: String,
    },
    /// Back in service from drain or maint (new flows again once healthy).
    Ready {
        /// The backend's name.
        backend: String,
        /// The server's name or address.
        server: String,
    },
}

impl ServerAction {
    /// The backend, the server and the API's patch.
    fn patch(self) -> (String, String, serde_json::Value) {
        match self {
            ServerAction::SetWeight {
                backend,
                server,
                weight,
            } => (backend, server, serde_json::json!({ "weight": weight })),
            ServerAction::Drain {
                backend,
                server,
                timeout,
            } => {
                let mut patch = serde_json::json!({ "state": "drain" });
                if let Some(t) = timeout {
                    patch["drain_timeout"] = humantime::format_duration(t).to_string().into();
                }
                (backend, server, patch)
            }
            ServerAction::Maint { backend, server } => {
                (backend, server, serde_json::json!({ "state": "maint" }))
            }
            ServerAction::Ready { backend, server } => {
                (backend, server, serde_json::json!({ "state": "ready" }))
            }
        }
    }
}

#[derive(Subcommand)]
enum HaAction {
    /// Print keepalived's config for this node of the pair (`[ha]`): VRRPv3, unicast to
    /// the peer, lb's notify_fifo and track_file.
    KeepalivedConfig {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print BIRD's config for this node (`[bgp]`): an eBGP session to each neighbor
    /// announcing every frontend's VIP.
    BirdConfig {
        /// The config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let (version, commit, ebpf) = lb_userspace::metrics::build_info();
    // Leaked once: clap wants the version for the process's lifetime.
    let long: &'static str =
        Box::leak(format!("{version} (commit {commit}, eBPF object {ebpf})").into_boxed_str());
    let cli = match Cli::command()
        .long_version(long)
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let filter = lb_userspace::logging::filter(std::env::var("RUST_LOG").ok().as_deref());
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
                for w in c.host_warnings() {
                    eprintln!(
                        "{}: warning: {}: {}\n    fix: {}",
                        config.display(),
                        w.field,
                        w.message,
                        w.fix
                    );
                }
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
                raise_open_file_limit();
                let options = lb_userspace::daemon::RunOptions {
                    fresh,
                    detach_on_exit,
                };
                admin_runtime().and_then(|rt| {
                    rt.block_on(async {
                        lb_userspace::daemon::Daemon::start(&path, c, options)
                            .await?
                            .run()
                            .await
                    })
                })
            }
            Err(e) => {
                eprint!("{e}");
                return ExitCode::from(2);
            }
        },
        Command::Peer { interfaces } => peer(&interfaces),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "lb", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => clap_mangen::Man::new(Cli::command().long_version(long))
            .render(&mut std::io::stdout())
            .map_err(anyhow::Error::from),
        Command::Doctor { config } => {
            let loaded = match config.as_deref().map(Config::load) {
                Some(Err(e)) => {
                    eprint!("{e}");
                    return ExitCode::from(2);
                }
                Some(Ok(c)) => Some(c),
                None => None,
            };
            let checks = lb_userspace::cli::doctor::run(loaded.as_ref());
            print!("{}", lb_userspace::cli::doctor::render(&checks));
            let failed = checks
                .iter()
                .any(|c| c.verdict == lb_userspace::cli::doctor::Verdict::Fail);
            return if failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
        Command::Status { config, api } => status(config.as_deref(), &api),
        Command::Backends { action, api } => entity_command(&api, "backends", action),
        Command::Frontends { action, api } => entity_command(&api, "frontends", action),
        Command::Servers { backend, api } => api_command(&api, |client, lb| {
            let servers = client.call(
                "GET",
                &format!("/v1/lbs/{lb}/backends/{backend}/servers"),
                None,
            )?;
            Ok((lb_userspace::cli::servers_table(&servers), servers))
        }),
        Command::Server { action, api } => api_command(&api, |client, lb| {
            let (backend, server, patch) = action.patch();
            let stored = client.call(
                "PATCH",
                &format!("/v1/lbs/{lb}/backends/{backend}/servers/{server}"),
                Some(&patch.to_string()),
            )?;
            let list = serde_json::json!({ "servers": [stored.clone()] });
            Ok((lb_userspace::cli::servers_table(&list), stored))
        }),
        Command::Ha { action } => {
            let (path, render): (_, fn(&Config) -> anyhow::Result<String>) = match action {
                HaAction::KeepalivedConfig { config } => {
                    (config, lb_userspace::ha::keepalived::render)
                }
                HaAction::BirdConfig { config } => (config, lb_userspace::ha::bird::render),
            };
            match Config::load(&path) {
                Ok(c) => render(&c).map(|text| print!("{text}")),
                Err(e) => {
                    eprint!("{e}");
                    return ExitCode::from(2);
                }
            }
        }
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

/// Run `f` against the API and print its (table, JSON) answer in the chosen format.
fn api_command(
    args: &ApiArgs,
    f: impl FnOnce(&lb_userspace::cli::Client, &str) -> Result<(String, serde_json::Value)>,
) -> Result<()> {
    let client = lb_userspace::cli::Client::new(&args.api, args.token.clone())?;
    let lb = client.lb(args.lb.clone())?;
    let result = f(&client, &lb);
    if let (Output::Json, Err(e)) = (args.output, &result)
        && let Some(failure) = e.downcast_ref::<lb_userspace::cli::ApiFailure>()
    {
        // Scripts get the API's error document as it was.
        println!("{}", serde_json::to_string_pretty(&failure.body)?);
    }
    let (table, json) = result?;
    match args.output {
        Output::Table => print!("{table}"),
        Output::Json => println!("{}", serde_json::to_string_pretty(&json)?),
    }
    Ok(())
}

/// `lb backends|frontends list|get|put|delete`.
fn entity_command(args: &ApiArgs, kind: &str, action: Action) -> Result<()> {
    use lb_userspace::cli::{ApiFailure, backends_table, frontends_table, read_document};
    api_command(args, |client, lb| {
        let base = format!("/v1/lbs/{lb}/{kind}");
        let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).map(|s| s + "\n");
        match action {
            Action::List => {
                let list = client.call("GET", &base, None)?;
                let table = if kind == "backends" {
                    backends_table(&list)
                } else {
                    frontends_table(&list)
                };
                Ok((table, list))
            }
            Action::Get { name } => {
                let one = client.call("GET", &format!("{base}/{name}"), None)?;
                Ok((pretty(&one)?, one))
            }
            Action::Put { name, file } => {
                let body = read_document(&file)?;
                let stored = match client.call("PUT", &format!("{base}/{name}"), Some(&body)) {
                    Err(e)
                        if e.downcast_ref::<ApiFailure>()
                            .is_some_and(|f| f.status == 404) =>
                    {
                        client.call("POST", &base, Some(&body))?
                    }
                    other => other?,
                };
                Ok((pretty(&stored)?, stored))
            }
            Action::Delete { name } => {
                client.call("DELETE", &format!("{base}/{name}"), None)?;
                Ok((
                    format!("deleted {kind} {name}\n"),
                    serde_json::json!({ "deleted": name }),
                ))
            }
        }
    })
}

/// `lb status`, through the API named by `--api` or by the config file's `[api]`.
fn status(config: Option<&std::path::Path>, args: &ApiArgs) -> Result<()> {
    let client = match config {
        Some(path) => {
            let config = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
            lb_userspace::cli::Client::for_config(&config, args.token.clone())?
        }
        None => lb_userspace::cli::Client::new(&args.api, args.token.clone())?,
    };
    let lb = client.lb(args.lb.clone())?;
    let status = client.status(&lb)?;
    match args.output {
        Output::Table => print!("{}", lb_userspace::cli::status_table(&status)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&status)?),
    }
    Ok(())
}

/// Raise RLIMIT_NOFILE's soft limit to the hard one, as HAProxy and nginx do: the default
/// soft limit of 1024 ran out at 966 idle proxy connections, and then the API and
/// /metrics could not accept either. (`LimitNOFILE=` in the unit sets the hard limit.)
fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        warn!(soft, hard, error = %e, "cannot raise the open file limit");
        return;
    }
    info!(nofile = hard.max(soft), "open file limit");
}

/// The daemon's one runtime for the API, metrics, probes, netlink and its own event loop;
/// map I/O runs on its blocking threads. (The proxy's workers have runtimes of their own.)
fn admin_runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("admin")
        .enable_all()
        .build()?)
}

fn peer(interfaces: &[String]) -> Result<()> {
    let mut dataplane = Dataplane::load()?;
    for iface in interfaces {
        dataplane.attach(PROG_PASS, iface, lb_userspace::config::XdpAttach::Auto)?;
    }
    info!(?interfaces, "ready");
    run_until_signal(std::time::Duration::from_secs(3600), || {})
}

/// Call `tick` every `interval` until SIGINT or SIGTERM.
fn run_until_signal(interval: std::time::Duration, mut tick: impl FnMut()) -> Result<()> {
    admin_runtime()?.block_on(async {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `lb help` explains everything: each subcommand and each of its flags and arguments.
    #[test]
    fn every_subcommand_flag_and_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" && arg.get_help().is_none() {
                    missing.push(format!("{path} {id}"));
                }
            }
            for sub in cmd.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                if sub.get_about().is_none() {
                    missing.push(path.clone());
                }
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "lb", &mut missing);
        assert!(missing.is_empty(), "no help for: {missing:#?}");
        Cli::command().debug_assert();
    }
}
