//! `cargo xtask`: setup, the demo, tests, fuzzing and benchmarks for lb.

mod demo;
mod fuzz;
mod package;
mod setup;

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Project tasks for lb")]
struct Cli {
    #[command(subcommand)]
    command: Option<Task>,
}

#[derive(Subcommand)]
enum Task {
    /// Install what a fresh machine lacks for every task (rust-src, bpf-linker, the tests'
    /// Debian packages, cargo-fuzz), services neither started nor enabled. Idempotent. Each
    /// other task installs only what it needs: `run` the toolchain, `test` and `bench` their
    /// tools too.
    Setup,
    /// With no lb arguments: the demo on an embedded topology. With `-- <args>`: run lb.
    Run {
        /// Stop the demo after this many seconds (Ctrl-C stops it earlier).
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Arguments for `lb` (after `--`), for example `-- run --config lb.toml`.
        #[arg(last = true)]
        lb_args: Vec<String>,
    },
    /// Build the Debian package (cargo-deb): target/package/lb.deb.
    Package,
    /// Style, lint, unit tests, the fuzz corpus replayed, BPF_PROG_TEST_RUN fixtures,
    /// network-namespace tests, and a quick benchmark run that checks the harness (never a
    /// speed).
    Test,
    /// Fuzz the targets of fuzz/ with cargo-fuzz (libFuzzer, nightly), each from its corpus
    /// in fuzz/corpus/; new inputs go to fuzz/target/corpus/, crashes to fuzz/artifacts/.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = 30)]
        time: u64,
        /// One target (a file of fuzz/fuzz_targets/ without `.rs`); default: every one.
        target: Option<String>,
        /// Only replay the committed corpus on stable, as `cargo xtask test` does.
        #[arg(long)]
        replay: bool,
    },
    /// Benchmarks: lb against direct routing, nftables and HAProxy on one topology, the XDP
    /// object against XDP's own cost, and Maglev's quality. Results in target/bench/.
    Bench {
        /// Every workload briefly (under 90 s in all).
        #[arg(long)]
        quick: bool,
        /// One group only, when working on it: micro, maglev, systems, http, flood or scale.
        #[arg(long, value_parser = ["micro", "maglev", "systems", "http", "flood", "scale"])]
        only: Option<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let task = cli.command.unwrap_or(Task::Run {
        duration: 10,
        lb_args: Vec::new(),
    });
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    let needs = match &task {
        Task::Run { .. } | Task::Fuzz { .. } => setup::Needs::Run,
        Task::Setup | Task::Test | Task::Bench { .. } | Task::Package => setup::Needs::Test,
    };
    let tools = setup::setup(&root, needs)?;
    // Every nested cargo finds bpf-linker through PATH.
    let path = std::env::join_paths(std::iter::once(tools.bin.clone()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))?;
    // SAFETY: single-threaded at this point.
    unsafe { std::env::set_var("PATH", path) };
    match task {
        Task::Setup => {
            setup::cargo_fuzz(&root.join(".tools"))?;
            setup::cargo_deb(&root.join(".tools"))
        }
        Task::Run { duration, lb_args } if lb_args.is_empty() => demo::run(duration),
        Task::Run { lb_args, .. } => {
            cargo(&["build", "-p", "lb-userspace"])?;
            let lb = lb_tests::topology::lb_binary()?;
            let status = Command::new(lb).args(lb_args).status()?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Task::Test => test(&root),
        Task::Package => package::build(&root).map(|_| ()),
        Task::Fuzz { replay: true, .. } => {
            fuzz::fmt_check()?;
            let (passed, failed) = fuzz::replay()?;
            println!("tests: {passed} passed, {failed} failed");
            Ok(())
        }
        Task::Fuzz { time, target, .. } => {
            setup::cargo_fuzz(&root.join(".tools"))?;
            fuzz::run(&root, time, target.as_deref())
        }
        Task::Bench { quick, only } => run_bench(quick, false, only.as_deref()),
    }
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Run cargo (the stable toolchain this xtask was built with) with `args`.
pub fn cargo(args: &[&str]) -> Result<()> {
    run(Command::new(env!("CARGO")).args(args))
}

pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {cmd:?}");
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn test(root: &std::path::Path) -> Result<()> {
    // Style and lint, host crates and the eBPF crate.
    cargo(&["fmt", "--all", "--", "--check"])?;
    fuzz::fmt_check()?;
    cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "lb-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    run(Command::new("rustup").args([
        "run",
        "nightly",
        "cargo",
        "clippy",
        "-p",
        "lb-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--release",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The fuzz corpus, replayed through the targets' bodies on stable (seconds).
    let (fuzz_passed, fuzz_failed) = fuzz::replay()?;
    // Unit tests, BPF_PROG_TEST_RUN fixtures and netns tests; the netns tests run the lb
    // binary, so build it first. The replay ran above: skipped here.
    cargo(&["build", "-p", "lb-userspace"])?;
    // tests/tests/deb_package.rs installs this into a scratch root.
    let deb = package::build(root)?;
    // SAFETY: single-threaded at this point.
    unsafe { std::env::set_var("LB_DEB", &deb) };
    let (passed, failed) = cargo_test_counted(&[
        "test",
        "--workspace",
        "--exclude",
        "lb-ebpf",
        "--lib",
        "--bins",
        "--tests",
        "--",
        "--skip",
        fuzz::REPLAY_PREFIX,
    ])?;
    let (passed, failed) = (passed + fuzz_passed, failed + fuzz_failed);
    // The benchmark harness itself: every row present and non-zero, never a speed.
    run_bench(true, true, None)?;
    println!("tests: {passed} passed, {failed} failed");
    Ok(())
}

fn run_bench(quick: bool, check: bool, only: Option<&str>) -> Result<()> {
    cargo(&["build", "--release", "-p", "lb-userspace"])?;
    let root = workspace_root();
    let out = root.join("target/bench");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(["bench", "-p", "lb-tests", "--bench", "lb", "--", "--out"])
        .arg(&out)
        .env("LB_BIN", root.join("target/release/lb"));
    if quick {
        cmd.arg("--quick");
    }
    if check {
        cmd.arg("--check");
    }
    if let Some(group) = only {
        cmd.args(["--only", group]);
    }
    run(&mut cmd)
}

/// Run `cargo test`, echoing its output; returns the passed and failed totals over every
/// test binary.
fn cargo_test_counted(args: &[&str]) -> Result<(u64, u64)> {
    use std::io::{BufRead as _, BufReader};
    let mut cmd = Command::new(env!("CARGO"));
    cmd.args(args).stdout(std::process::Stdio::piped());
    eprintln!("+ {cmd:?}");
    let mut child = cmd.spawn()?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split(['.', ';']) {
                let words: Vec<&str> = part.split_whitespace().collect();
                match words.as_slice() {
                    [n, "passed"] => passed += n.parse::<u64>().unwrap_or(0),
                    [n, "failed"] => failed += n.parse::<u64>().unwrap_or(0),
                    _ => {}
                }
            }
        }
    }
    let status = child.wait()?;
    if !status.success() {
        println!("tests: {passed} passed, {failed} failed");
        bail!("cargo test failed with {status}");
    }
    Ok((passed, failed))
}
