//! The Debian package (`cargo xtask package`, which `cargo xtask test` runs first and names
//! in LB_DEB): unpacked into a scratch root with `dpkg -x`, its lb validates its own config,
//! reports its commit, and systemd accepts its unit (`systemd-analyze verify`, where there).

use std::{path::PathBuf, process::Command};

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_package_installs_a_working_lb_its_config_and_a_valid_unit() {
    let Some(deb) = std::env::var_os("LB_DEB").map(PathBuf::from) else {
        assert!(
            std::env::var_os("CI").is_none(),
            "cargo xtask test builds the package and sets LB_DEB"
        );
        eprintln!("deb_package: skipped (LB_DEB unset: run `cargo xtask package` and set it)");
        return;
    };
    let root = std::env::temp_dir().join(format!("lb-deb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    run(Command::new("dpkg").arg("-x").arg(&deb).arg(&root));
    let lb = root.join("usr/bin/lb");
    for file in [
        "etc/lb/lb.toml",
        "lib/systemd/system/lb.service",
        "usr/share/man/man1/lb.1.gz",
        "usr/share/bash-completion/completions/lb",
        "usr/share/zsh/vendor-completions/_lb",
        "usr/share/fish/vendor_completions.d/lb.fish",
    ] {
        assert!(root.join(file).is_file(), "{file} is not in the package");
    }
    let checked = run(Command::new(&lb)
        .args(["check", "--config"])
        .arg(root.join("etc/lb/lb.toml")));
    assert!(checked.contains(": ok ("), "{checked}");
    let version = run(Command::new(&lb).arg("--version"));
    assert!(
        version.contains("commit ") && version.contains("eBPF object "),
        "{version}"
    );

    let unit = std::fs::read_to_string(root.join("lib/systemd/system/lb.service")).unwrap();
    for line in [
        "Type=notify",
        "ExecReload=/usr/bin/lb check --config /etc/lb/lb.toml",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(
            unit.contains(line),
            "{line:?} missing from the unit:\n{unit}"
        );
    }
    // The unit as installed there: its commands point into the scratch root.
    let verify = Command::new("systemd-analyze").arg("--version").output();
    if verify.is_ok_and(|o| o.status.success()) {
        let moved = root.join("lb.service");
        std::fs::write(&moved, unit.replace("/usr/bin/lb", lb.to_str().unwrap())).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&moved)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        let about_ours: Vec<&str> = said.lines().filter(|l| l.contains("lb.service")).collect();
        assert!(
            out.status.success() && about_ours.is_empty(),
            "systemd-analyze verify: {}\n{said}",
            out.status
        );
    } else {
        eprintln!("deb_package: no systemd-analyze here; the unit is not verified");
    }
    let _ = std::fs::remove_dir_all(&root);
}
