//! When a dead VM is recreated: backoff and a cap per window.
//!
//! The service's monitor (`ibkit serve`) opens a recovery request for a host
//! whose agent reported `failed`, went silent, or whose health checks did not
//! pass in time. `ibkit deploy` reads the open requests and, per host, asks
//! [`RecoveryPolicy::decide`] what to do with the host's
//! [`RecoveryHistory`]: recreate the VM after a delay, or give up and mark
//! the instance `failed`. Pure logic, no clock: times are milliseconds since
//! the Unix epoch passed in by the caller.

use ibkit_api::Duration;
use serde::{Deserialize, Serialize};

use crate::manifest::RecoveryPolicy;

/// What to do with a dead host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecoveryDecision {
    /// `[recovery] enabled = false`: leave the VM as it is and fail the
    /// instance.
    Disabled,
    /// Recreate the VM once `delay` has passed since the host was found dead.
    Recreate {
        delay: Duration,
        /// This recovery's number among consecutive ones (1 = the first).
        consecutive: u32,
    },
    /// The host was recreated `max_per_window` times within the window:
    /// stop trying and mark the instance `failed`.
    GiveUp { recoveries_in_window: u32 },
}

/// The recoveries of one host, as `ibkit deploy` records them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryHistory {
    /// When each recovery started (ms since the epoch), oldest first.
    pub recoveries_ms: Vec<u64>,
    /// Recoveries since the host was last healthy (the backoff exponent).
    pub consecutive: u32,
}

impl RecoveryHistory {
    /// Records a recovery that starts now.
    pub fn record(&mut self, now_ms: u64) {
        self.recoveries_ms.push(now_ms);
        self.consecutive = self.consecutive.saturating_add(1);
    }

    /// The recreated host is running and healthy again: the next death
    /// starts the backoff from the beginning (the window still counts).
    pub fn healthy(&mut self) {
        self.consecutive = 0;
    }

    /// Forgets recoveries older than the window.
    pub fn prune(&mut self, window: Duration, now_ms: u64) {
        let since = now_ms.saturating_sub(window.as_millis());
        self.recoveries_ms.retain(|t| *t > since);
    }

    fn in_window(&self, window: Duration, now_ms: u64) -> u32 {
        let since = now_ms.saturating_sub(window.as_millis());
        let n = self.recoveries_ms.iter().filter(|t| **t > since).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }
}

impl RecoveryPolicy {
    /// The wait before the `n`-th consecutive recovery (1-based): `backoff`,
    /// doubled each time, capped at `max_backoff`.
    pub fn backoff_for(&self, n: u32) -> Duration {
        let doublings = n.saturating_sub(1).min(63);
        let ms = self.backoff.as_millis().saturating_mul(1u64 << doublings);
        Duration::from_millis(ms.min(self.max_backoff.as_millis()))
    }

    /// Decides for a host found dead at `now_ms`.
    pub fn decide(&self, history: &RecoveryHistory, now_ms: u64) -> RecoveryDecision {
        if !self.enabled {
            return RecoveryDecision::Disabled;
        }
        let recent = history.in_window(self.window, now_ms);
        if recent >= self.max_per_window {
            return RecoveryDecision::GiveUp {
                recoveries_in_window: recent,
            };
        }
        let consecutive = history.consecutive.saturating_add(1);
        RecoveryDecision::Recreate {
            delay: self.backoff_for(consecutive),
            consecutive,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RecoveryPolicy::default(); // 30s, max 10m
        let secs: Vec<u64> = (1..=7)
            .map(|n| p.backoff_for(n).as_millis() / 1000)
            .collect();
        assert_eq!(secs, [30, 60, 120, 240, 480, 600, 600]);
        assert_eq!(p.backoff_for(0).as_millis(), 30_000);
        assert_eq!(p.backoff_for(u32::MAX).as_millis(), 600_000);
    }

    #[test]
    fn gives_up_after_max_per_window_and_recovers_once_the_window_passes() {
        let p = RecoveryPolicy::default(); // 3 per 1h
        let mut h = RecoveryHistory::default();
        let mut now = 1_000 * MIN;
        for n in 1..=3 {
            assert_eq!(
                p.decide(&h, now),
                RecoveryDecision::Recreate {
                    delay: p.backoff_for(n),
                    consecutive: n
                }
            );
            h.record(now);
            now += 5 * MIN;
        }
        assert_eq!(
            p.decide(&h, now),
            RecoveryDecision::GiveUp {
                recoveries_in_window: 3
            }
        );
        // An hour after the first recovery, one slot is free again.
        now = 1_000 * MIN + 60 * MIN + 1;
        assert!(matches!(
            p.decide(&h, now),
            RecoveryDecision::Recreate { consecutive: 4, .. }
        ));
        h.prune(p.window, now);
        assert_eq!(h.recoveries_ms.len(), 2);
        // Healthy in between: the backoff starts over.
        h.healthy();
        assert!(matches!(
            p.decide(&h, now),
            RecoveryDecision::Recreate { consecutive: 1, delay } if delay == p.backoff
        ));
    }

    #[test]
    fn disabled_policy_never_recreates() {
        let p = RecoveryPolicy {
            enabled: false,
            ..RecoveryPolicy::default()
        };
        assert_eq!(
            p.decide(&RecoveryHistory::default(), 0),
            RecoveryDecision::Disabled
        );
    }
}
