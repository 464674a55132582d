//! Small facts about the host and timing lines for the tests that boot VMs.

use std::io::Write;
use std::net::{IpAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// A TCP service on the host for network-isolation tests: it writes its
/// token to each connection and counts the connections it accepted, so a
/// test can tell "reached" from "blocked" on both ends.
pub struct CountingService {
    pub port: u16,
    pub token: String,
    accepted: Arc<AtomicUsize>,
}

impl CountingService {
    /// Listens on `addr`, a free port.
    pub fn start(addr: IpAddr) -> CountingService {
        let listener = TcpListener::bind((addr, 0)).expect("bind the counting service");
        let port = listener.local_addr().expect("local addr").port();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let token = format!("ibkit-service-{nanos:x}-{port}");
        let accepted = Arc::new(AtomicUsize::new(0));
        let (t, n) = (token.clone(), accepted.clone());
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                n.fetch_add(1, Ordering::SeqCst);
                let _ = writeln!(conn, "{t}");
            }
        });
        CountingService {
            port,
            token,
            accepted,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}
