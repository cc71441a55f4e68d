//! `cargo xtask package`: the .deb (cargo-deb) with /usr/bin/lb, /etc/lb/lb.toml, the
//! systemd unit, the man page and shell completions, generated here from the binary.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Build the package; returns its path (target/package/lb.deb).
pub fn build(root: &Path) -> Result<PathBuf> {
    crate::setup::cargo_deb(&root.join(".tools"))?;
    crate::cargo(&["build", "--release", "-p", "lb-userspace"])?;
    let lb = root.join("target/release/lb");
    // cargo-deb finds generated assets under target/release/ only.
    let out = root.join("target/release/package");
    std::fs::create_dir_all(&out)?;
    for (shell, file) in [("bash", "lb.bash"), ("zsh", "_lb"), ("fish", "lb.fish")] {
        std::fs::write(
            out.join(file),
            stdout_of(Command::new(&lb).args(["completions", shell]))?,
        )?;
    }
    let man = stdout_of(Command::new(&lb).arg("man"))?;
    let mut gzip = Command::new("gzip")
        .args(["-9n", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("gzip")?;
    std::io::Write::write_all(&mut gzip.stdin.take().expect("piped"), &man)?;
    let compressed = gzip.wait_with_output()?;
    if !compressed.status.success() {
        bail!("gzip of the man page failed");
    }
    std::fs::write(out.join("lb.1.gz"), compressed.stdout)?;
    let deb = root.join("target/package/lb.deb");
    crate::run(
        Command::new(env!("CARGO"))
            .args(["deb", "-p", "lb-userspace", "--no-build", "--output"])
            .arg(&deb),
    )?;
    println!("package: {}", deb.display());
    Ok(deb)
}

fn stdout_of(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out.stdout)
}
