//! Installs what a fresh machine lacks into the project (`.tools/`) or the system (Debian
//! packages). Every step checks first, so a second call is fast.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

pub struct Tools {
    pub bin: PathBuf,
}

const BPF_LINKER_VERSION: &str = "0.13";
/// Debian packages the demo needs: `ip` (iproute2) for namespaces and veths, ethtool to turn
/// off veth checksum offload.
const RUN_PACKAGES: &[&str] = &["iproute2", "ethtool"];

/// Debian packages the tests and benchmarks add: nft, haproxy, nginx, iperf3, wrk and h2load
/// (nghttp2-client) as systems to compare with and load generators, and real PostgreSQL, MariaDB, Redis and
/// openssl servers for health-check tests; curl as a real HTTP client; python3 for a test
/// server that digests request bodies, and python3-venv for schemathesis (from PyPI), which
/// tests the REST API against its OpenAPI document; keepalived (VRRP) and bird2 (BGP), the
/// partners of an HA pair and of ECMP scale-out; prometheus for promtool, which checks a real
/// scrape and the alert rules.
const TEST_PACKAGES: &[&str] = &[
    "nftables",
    "haproxy",
    "nginx",
    "iperf3",
    "wrk",
    "nghttp2-client",
    "curl",
    "openssl",
    "postgresql",
    "mariadb-server",
    "redis-server",
    "python3",
    "python3-venv",
    "keepalived",
    "bird2",
    "prometheus",
];

/// What the invoked command needs installed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// The toolchain (rust-src, bpf-linker) and what the demo's namespaces use.
    Run,
    /// That, and every test's and benchmark's tools.
    Test,
}

/// Schemathesis, pinned: its checks are part of the test suite.
const SCHEMATHESIS: &str = "schemathesis==4.32.5";

/// cargo-deb, pinned: `cargo xtask package` builds the .deb with it.
const CARGO_DEB_VERSION: &str = "3.8.0";

/// cargo-fuzz, pinned: `cargo xtask fuzz` runs the targets in fuzz/ with it.
const CARGO_FUZZ_VERSION: &str = "0.13.2";

pub fn setup(root: &Path, needs: Needs) -> Result<Tools> {
    let tools_dir = root.join(".tools");
    let tools = Tools {
        bin: tools_dir.join("bin"),
    };
    rust_src()?;
    bpf_linker(&tools_dir)?;
    debian_packages(RUN_PACKAGES)?;
    if needs == Needs::Test {
        debian_packages(TEST_PACKAGES)?;
        schemathesis(&tools_dir)?;
    }
    Ok(tools)
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed with {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn nightly_sysroot() -> Result<PathBuf> {
    Ok(PathBuf::from(
        output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
            .context("the `nightly` toolchain is needed for the eBPF crate")?,
    ))
}

fn rust_src() -> Result<()> {
    let library = nightly_sysroot()?.join("lib/rustlib/src/rust/library");
    if library.is_dir() {
        return Ok(());
    }
    eprintln!("setup: installing rust-src for nightly");
    crate::run(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))
}

fn bpf_linker(tools_dir: &Path) -> Result<()> {
    let linker = tools_dir.join("bin/bpf-linker");
    // bpf-linker loads nightly's libLLVM, which rustc puts on the library path when it links.
    let sysroot_lib = nightly_sysroot()?.join("lib");
    if linker.is_file()
        && output(
            Command::new(&linker)
                .arg("--version")
                .env("LD_LIBRARY_PATH", &sysroot_lib),
        )
        .map(|v| v.contains(&format!(" {BPF_LINKER_VERSION}.")))
        .unwrap_or(false)
    {
        return Ok(());
    }
    eprintln!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM (about a minute)"
    );
    // bpf-linker links the LLVM that nightly rustc itself uses, so bitcode versions match.
    let lib = sysroot_lib;
    let llvm = std::fs::read_dir(&lib)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so.") && n.contains("-rust-"))
        })
        .with_context(|| format!("no libLLVM.so.*-rust-* in {}", lib.display()))?;
    let llvm_major = llvm
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("libLLVM.so."))
        .and_then(|n| n.split('.').next())
        .context("cannot read the LLVM version")?
        .to_string();
    let prefix = tools_dir.join("llvm");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&llvm, &link)?;
    crate::run(
        Command::new(env!("CARGO"))
            .args(["install", "bpf-linker", "--force", "--locked", "--version"])
            .arg(format!("^{BPF_LINKER_VERSION}"))
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{llvm_major}"))
            .arg("--root")
            .arg(tools_dir)
            .env("LLVM_PREFIX", &prefix),
    )
}

/// cargo-fuzz in .tools/bin, for `cargo xtask fuzz` (and `cargo xtask setup`) only: the
/// corpus replay of `cargo xtask test` runs on stable without it.
pub fn cargo_fuzz(tools_dir: &Path) -> Result<()> {
    let bin = tools_dir.join("bin/cargo-fuzz");
    if bin.is_file()
        && output(Command::new(&bin).arg("--version"))
            .map(|v| v.ends_with(CARGO_FUZZ_VERSION))
            .unwrap_or(false)
    {
        return Ok(());
    }
    eprintln!(
        "setup: building cargo-fuzz {CARGO_FUZZ_VERSION} into {}",
        tools_dir.display()
    );
    crate::run(
        Command::new(env!("CARGO"))
            .args(["install", "cargo-fuzz", "--force", "--locked", "--version"])
            .arg(CARGO_FUZZ_VERSION)
            .arg("--root")
            .arg(tools_dir),
    )
}

/// A virtualenv in .tools/venv with schemathesis (the netns API test runs it).
fn schemathesis(tools_dir: &Path) -> Result<()> {
    let venv = tools_dir.join("venv");
    let marker = venv.join(SCHEMATHESIS);
    if marker.exists() {
        return Ok(());
    }
    eprintln!("setup: installing {SCHEMATHESIS} into {}", venv.display());
    crate::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    crate::run(Command::new(venv.join("bin/pip")).args([
        "install",
        "-q",
        "--disable-pip-version-check",
        SCHEMATHESIS,
    ]))?;
    std::fs::write(marker, "")?;
    Ok(())
}

/// Install the `packages` missing. Their services are neither started (a policy-rc.d that
/// refuses, while apt runs) nor enabled at boot: the tests start their own instances.
fn debian_packages(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .stderr(Stdio::null())
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages {missing:?} (services not started nor enabled)");
    crate::run(Command::new("apt-get").arg("update").arg("-q"))?;
    let before = enabled_units();
    let policy = Path::new("/usr/sbin/policy-rc.d");
    // An existing policy (a container image's) is the host's choice: kept.
    let ours = !policy.exists();
    if ours {
        std::fs::write(
            policy,
            "#!/bin/sh\n# cargo xtask setup: start no service\nexit 101\n",
        )?;
        std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let installed = crate::run(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    );
    if ours {
        let _ = std::fs::remove_file(policy);
    }
    installed?;
    let enabled: Vec<String> = enabled_units().difference(&before).cloned().collect();
    disable_services(&enabled);
    Ok(())
}

/// The units enabled at boot: the symlinks in /etc/systemd/system/*.wants/.
fn enabled_units() -> std::collections::BTreeSet<String> {
    let mut units = std::collections::BTreeSet::new();
    let Ok(dirs) = std::fs::read_dir("/etc/systemd/system") else {
        return units;
    };
    for dir in dirs.flatten() {
        if dir.file_name().to_string_lossy().ends_with(".wants")
            && let Ok(links) = std::fs::read_dir(dir.path())
        {
            units.extend(
                links
                    .flatten()
                    .map(|l| l.file_name().to_string_lossy().into_owned()),
            );
        }
    }
    units
}

/// Undo the boot-time enabling the packages' maintainer scripts did (`units` appeared during
/// the install; a unit may come from a dependency, nginx's from nginx-common).
fn disable_services(units: &[String]) {
    for unit in units {
        eprintln!("setup: disabling {unit} at boot (tests start their own instances)");
        // deb-systemd-helper edits the symlinks directly, with or without systemd running,
        // and remembers the choice across upgrades; it wants to be called as if by dpkg.
        let _ = Command::new("deb-systemd-helper")
            .args(["disable", unit])
            .env("DPKG_MAINTSCRIPT_PACKAGE", "lb-xtask-setup")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// cargo-deb into .tools (`cargo xtask package`, and the package test).
pub fn cargo_deb(tools_dir: &Path) -> Result<()> {
    let bin = tools_dir.join("bin/cargo-deb");
    if bin.is_file()
        && output(Command::new(&bin).arg("--version"))
            .map(|v| v.contains(CARGO_DEB_VERSION))
            .unwrap_or(false)
    {
        return Ok(());
    }
    eprintln!(
        "setup: building cargo-deb {CARGO_DEB_VERSION} into {}",
        tools_dir.display()
    );
    crate::run(
        Command::new(env!("CARGO"))
            .args(["install", "cargo-deb", "--force", "--locked", "--version"])
            .arg(CARGO_DEB_VERSION)
            .arg("--root")
            .arg(tools_dir),
    )
}
