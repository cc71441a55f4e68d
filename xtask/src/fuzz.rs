//! The fuzz targets of `fuzz/` (a cargo-fuzz crate, a workspace of its own): replaying
//! their corpus on stable for `cargo xtask test`, and fuzzing them with cargo-fuzz on
//! nightly for `cargo xtask fuzz`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

/// The replay tests' names start with this (`lb-userspace/tests/fuzz_replay.rs`).
pub const REPLAY_PREFIX: &str = "fuzz_replay_";

/// `rustfmt --check` on the fuzz crate, which `cargo fmt --all` does not see (its
/// `src/` files are also modules of the replay test, so they are checked twice).
pub fn fmt_check() -> Result<()> {
    let fuzz = crate::workspace_root().join("fuzz");
    let mut cmd = Command::new("rustfmt");
    cmd.args(["--check", "--edition", "2024"])
        .arg(fuzz.join("src/lib.rs"));
    for target in targets(&fuzz)? {
        cmd.arg(fuzz.join("fuzz_targets").join(format!("{target}.rs")));
    }
    crate::run(&mut cmd)
}

/// Every file of `fuzz/corpus/<target>/` through its target's body, on stable: a test per
/// target in lb-userspace (it builds with the rest of the workspace, so this takes seconds).
pub fn replay() -> Result<(u64, u64)> {
    let fuzz = crate::workspace_root().join("fuzz");
    // Each target has its replay test and a corpus.
    let replay =
        std::fs::read_to_string(crate::workspace_root().join("lb-userspace/tests/fuzz_replay.rs"))?;
    for target in targets(&fuzz)? {
        if !replay.contains(&format!("fn {REPLAY_PREFIX}{target}()")) {
            bail!(
                "fuzz target {target} has no {REPLAY_PREFIX}{target} test in lb-userspace/tests/fuzz_replay.rs"
            );
        }
        let corpus = fuzz.join("corpus").join(&target);
        if !corpus.is_dir() {
            bail!("fuzz target {target} has no corpus in {}", corpus.display());
        }
    }
    crate::cargo_test_counted(&["test", "-p", "lb-userspace", "--test", "fuzz_replay"])
}

/// The targets: `fuzz/fuzz_targets/*.rs`, by name.
fn targets(fuzz: &Path) -> Result<Vec<String>> {
    let dir = fuzz.join("fuzz_targets");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".rs"))
                .map(str::to_string)
        })
        .collect();
    names.sort();
    Ok(names)
}

/// cargo-fuzz on nightly (from `.tools/bin`, on PATH), built once for every target: release
/// with debug assertions (so overflow checks too), no sanitizer (the code under test is safe
/// Rust, and AddressSanitizer would slow every run and the first build).
fn cargo_fuzz(args: &[&str]) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "fuzz"])
        .args(args)
        .args(["--sanitizer", "none", "--debug-assertions"]);
    cmd
}

/// Fuzz `target` (or every target) for `seconds` each, starting from its committed corpus;
/// what libFuzzer finds new goes to `fuzz/target/corpus/<target>/` (not committed; copy
/// the interesting inputs into `fuzz/corpus/`), crashes to `fuzz/artifacts/<target>/`.
pub fn run(root: &Path, seconds: u64, target: Option<&str>) -> Result<()> {
    let fuzz = root.join("fuzz");
    let all = targets(&fuzz)?;
    let chosen: Vec<String> = match target {
        Some(t) if all.iter().any(|a| a == t) => vec![t.to_string()],
        Some(t) => bail!("no fuzz target {t:?}; the targets are {}", all.join(", ")),
        None => all,
    };
    let mut build = cargo_fuzz(&["build"]);
    if let Some(t) = target {
        build.arg(t);
    }
    crate::run(build.current_dir(root))?;
    let mut results = Vec::new();
    for t in &chosen {
        let work: PathBuf = fuzz.join("target/corpus").join(t);
        std::fs::create_dir_all(&work)?;
        let seeds = fuzz.join("corpus").join(t);
        let started = std::time::Instant::now();
        let mut cmd = cargo_fuzz(&["run", t]);
        cmd.arg(&work)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .args(["-timeout=10", "-print_final_stats=1"])
            .current_dir(root);
        eprintln!("+ {cmd:?}");
        let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
        results.push((t, status.success(), started.elapsed().as_secs()));
    }
    for (t, ok, secs) in &results {
        let verdict = if *ok {
            "no failure".to_string()
        } else {
            format!("FAILED: see fuzz/artifacts/{t}/")
        };
        println!("fuzz: {t}: {secs} s, {verdict}");
    }
    let failed: Vec<&str> = results
        .iter()
        .filter(|(_, ok, _)| !ok)
        .map(|(t, ..)| t.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("fuzz targets failed: {}", failed.join(", "));
    }
    Ok(())
}
