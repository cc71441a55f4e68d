//! Network-namespace test beds for lb: a guard that always removes what it created, the demo
//! topology (client, lb, three servers), servers that answer with their own name, and a
//! client that drives real connections and records who answered.
//!
//! Everything stays inside namespaces this crate creates and uses only 198.18.0.0/15.

pub mod fixture;
pub mod netns;
pub mod packets;
pub mod services;
pub mod topology;
pub mod traffic;

/// True when running as root (netns tests need it).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Netns tests need root. Under `CI=true` its absence is a failure; elsewhere the test is
/// skipped with a loud message. Returns whether the test should run.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: network-namespace tests need root, and CI=true forbids skipping them");
    }
    eprintln!(
        "\n!!! SKIPPED {test}: network-namespace tests need root (run `sudo cargo xtask test`) !!!\n"
    );
    false
}
