//! Small facts about the host and timing lines for the tests that boot VMs.

use std::path::Path;
use std::time::Instant;

/// Whether the tests run as root (bridges, taps and dnsmasq need it).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Whether a network interface (bridge, tap) exists.
pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Prints how long each phase of a slow test took, on stderr:
/// `[LABEL] WHAT: 12.3 s (total 45.6 s)`.
pub struct Phase {
    label: &'static str,
    start: Instant,
    last: Instant,
}

impl Phase {
    pub fn new(label: &'static str) -> Phase {
        let now = Instant::now();
        Phase {
            label,
            start: now,
            last: now,
        }
    }

    pub fn done(&mut self, what: &str) {
        let now = Instant::now();
        eprintln!(
            "[{}] {what}: {:.1} s (total {:.1} s)",
            self.label,
            (now - self.last).as_secs_f64(),
            (now - self.start).as_secs_f64()
        );
        self.last = now;
    }
}
