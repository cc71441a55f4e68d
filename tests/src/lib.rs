//! Network-namespace test beds for lb: a guard that always removes what it created, the demo
//! topology (client, lb, three servers), servers that answer with their own name, and a
//! client that drives real connections and records who answered.
//!
//! Everything stays inside namespaces this crate creates and uses only 198.18.0.0/15.

pub mod fixture;
pub mod flood;
pub mod netns;
pub mod packets;
pub mod pair;
pub mod services;
pub mod topology;
pub mod traffic;

use std::time::{Duration, Instant};

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

/// Wait for `what` by polling `probe`, for at most `timeout`. `Ok(Some(v))` means the awaited
/// condition holds and returns `v`; `Ok(None)` means not yet; `Err(e)` means not yet either
/// (the condition could not be observed, or the probe says what it saw instead) and the last
/// such error is part of the timeout's message. Tests wait with this instead of sleeping
/// for a guessed time.
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        let last = match probe() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => None,
            Err(e) => Some(e),
        };
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            let message = format!("timed out after {timeout:?} waiting for {what}");
            return Err(match last {
                Some(e) => e.context(message),
                None => anyhow::anyhow!(message),
            });
        }
        // The interval between probes (5 ms, doubling up to 100 ms), not a guess at how
        // long the condition takes: the probe decides.
        std::thread::sleep(pause.min(timeout - elapsed));
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_returns_the_value_or_names_what_it_awaited() {
        let mut probes = 0;
        let value = wait_until("three probes", Duration::from_secs(5), || {
            probes += 1;
            Ok((probes >= 3).then_some(probes))
        });
        assert_eq!(value.unwrap(), 3);
        let error = wait_until::<()>("nothing", Duration::from_millis(20), || {
            anyhow::bail!("saw something else")
        })
        .unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            "timed out after 20ms waiting for nothing: saw something else"
        );
    }
}
