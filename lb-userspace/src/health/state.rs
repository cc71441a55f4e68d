//! A server's health: the rise/fall state machine and its probe history.
//!
//! A server with a check starts DOWN and takes traffic only after `rise` consecutive
//! successes; `fall` consecutive failures take it out of the selection table.

use std::time::Duration;

/// A server's health as the rise/fall rules see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Health {
    pub up: bool,
    streak: u32,
}

impl Health {
    /// Checked servers start DOWN; unchecked ones are UP and stay so.
    pub fn new(checked: bool) -> Self {
        Health::starting(!checked)
    }

    /// A checked server starting UP or DOWN (`init_state`, or as an earlier daemon left it).
    pub fn starting(up: bool) -> Self {
        Health { up, streak: 0 }
    }

    /// Record a probe result; returns the new state when it changes.
    pub fn record(&mut self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if ok { rise } else { fall };
        if self.streak >= needed.max(1) {
            self.up = ok;
            self.streak = 0;
            return Some(ok);
        }
        None
    }
}

/// A server's probe history, for metrics.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CheckStats {
    pub last_ok: bool,
    /// Why the last probe failed, if it did.
    pub last_error: Option<String>,
    pub last_duration: Duration,
    pub failures: u64,
    /// UP/DOWN transitions.
    pub transitions: u64,
    /// When the state last changed (or checks began).
    pub last_change: Option<std::time::Instant>,
}

/// What a probe found: healthy, or why not.
pub type ProbeResult = Result<(), String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rise_and_fall() {
        let mut h = Health::new(true);
        assert!(!h.up, "a checked server starts down");
        assert_eq!(h.record(true, 2, 3), None);
        assert_eq!(h.record(true, 2, 3), Some(true), "up after rise successes");
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(
            h.record(true, 2, 3),
            None,
            "a success resets the failure streak"
        );
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(h.record(false, 2, 3), None);
        assert_eq!(
            h.record(false, 2, 3),
            Some(false),
            "down after fall failures in a row"
        );
        assert!(Health::new(false).up, "unchecked servers are up");
    }
}
