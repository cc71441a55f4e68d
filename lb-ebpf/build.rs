//! Rebuild when the bpf-linker binary changes: the link step depends on it, but cargo cannot
//! see that dependency.
fn main() {
    match which::which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(_) => println!(
            "cargo:warning=bpf-linker is not on PATH; run `cargo xtask setup` (it installs it into .tools/bin)"
        ),
    }
}
