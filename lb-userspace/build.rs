//! Builds the XDP program (lb-ebpf) with aya-build and leaves the object in OUT_DIR, where
//! `src/dataplane.rs` embeds it.
use std::{env, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .context("lb-userspace has no parent directory")?;
    // `cargo xtask setup` installs bpf-linker here; put it on PATH for the nested nightly build
    // so that a plain `cargo build` works too once setup has run.
    let tools_bin = workspace.join(".tools").join("bin");
    let path = env::var_os("PATH").unwrap_or_default();
    let mut paths: Vec<PathBuf> = vec![tools_bin];
    paths.extend(env::split_paths(&path));
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { env::set_var("PATH", env::join_paths(paths)?) };

    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .iter()
        .find(|p| p.name.as_str() == "lb-ebpf")
        .ok_or_else(|| anyhow!("lb-ebpf is not in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .context("lb-ebpf manifest has no directory")?
        .as_str();
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("lb-common").display()
    );
    git_commit(workspace);
    aya_build::build_ebpf(
        [Package {
            name: "lb-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context("building the XDP program; run `cargo xtask setup` if the toolchain is missing")
}

/// `LB_GIT_COMMIT` for `lb --version` and `lb_build_info`: the commit built, "unknown" outside
/// a git checkout (a source tarball); the environment's value wins (a packager's).
fn git_commit(workspace: &std::path::Path) {
    println!("cargo:rerun-if-env-changed=LB_GIT_COMMIT");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(workspace)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit = env::var("LB_GIT_COMMIT")
        .ok()
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    // Every commit and checkout appends to HEAD's reflog.
    if let Some(log) = git(&[
        "rev-parse",
        "--path-format=absolute",
        "--git-path",
        "logs/HEAD",
    ]) {
        println!("cargo:rerun-if-changed={log}");
    }
    println!("cargo:rustc-env=LB_GIT_COMMIT={commit}");
}
