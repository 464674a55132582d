//! What `ibkit serve` is told on its command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ibkit_api::InstanceSpec;

/// How the service speaks TLS.
#[derive(Debug, Clone)]
pub enum TlsMode {
    /// A self-signed certificate generated on first start and kept under
    /// `STATE/tls/`; `extra_sans` are added to localhost, 127.0.0.1 and the
    /// machine's hostname.
    Generated { extra_sans: Vec<String> },
    /// A certificate chain and key in PEM files.
    Provided { cert: PathBuf, key: PathBuf },
    /// Plain HTTP, for debugging only.
    InsecureHttp,
}

/// Default lifetime of a pairing key: long enough for a VM to boot and
/// install its agent, short enough that a leaked key is soon worthless.
pub const DEFAULT_PAIRING_KEY_TTL: Duration = Duration::from_secs(3600);

/// Longest pairing key lifetime an instance or a re-issued key may ask for.
pub const MAX_PAIRING_KEY_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Default lifetime of a billing access key (`--billing-key-ttl`): a new
/// key is issued when the newest is half this old, and each key is
/// accepted until its own expiry, so clients have half a lifetime to
/// switch.
pub const DEFAULT_BILLING_KEY_TTL: Duration = Duration::from_secs(24 * 3600);

/// Bounds of `--billing-key-ttl`: half of it (the rotation period) must be
/// at least a second; a year is VK's service token lifetime.
pub const MIN_BILLING_KEY_TTL: Duration = Duration::from_secs(2);
pub const MAX_BILLING_KEY_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub tls: TlsMode,
    /// The URL installers and agents use; default derived from the bound address.
    pub public_url: Option<String>,
    /// Default `STATE/operator-token`, generated on first start.
    pub operator_token_file: Option<PathBuf>,
    /// A token that opens `/metrics` only (for a Prometheus server); the
    /// operator token opens it too.
    pub metrics_token_file: Option<PathBuf>,
    /// Default `ibkit-agent` next to the current executable.
    pub agent_binary: Option<PathBuf>,
    /// The agent's Debian package, served at `/v1/agent/ibkit-agent.deb`
    /// (`--agent-deb`); none by default (that route answers 404).
    pub agent_deb: Option<PathBuf>,
    pub heartbeat_interval: Duration,
    pub agent_timeout: Duration,
    pub health_timeout: Duration,
    pub monitor_interval: Duration,
    /// How long a new pairing key stays valid (`--pairing-key-ttl`); an
    /// instance may ask for another lifetime when it is created.
    pub pairing_key_ttl: Duration,
    /// Largest structured result stored (compact JSON bytes); a step that
    /// reports a larger one is stored as failed, saying so.
    pub max_structured_bytes: usize,
    /// Agent binary downloads served at once; more get 503 + Retry-After.
    pub max_agent_downloads: usize,
    /// Lifetime of a billing access key (`--billing-key-ttl`).
    pub billing_key_ttl: Duration,
}

impl ServeConfig {
    /// HTTPS (anything but `--insecure-http`).
    pub fn tls_enabled(&self) -> bool {
        !matches!(self.tls, TlsMode::InsecureHttp)
    }

    /// The defaults of `ibkit serve` for a state directory.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        ServeConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8443)),
            state_dir: state_dir.into(),
            tls: TlsMode::Generated {
                extra_sans: Vec::new(),
            },
            public_url: None,
            operator_token_file: None,
            metrics_token_file: None,
            agent_binary: None,
            agent_deb: None,
            heartbeat_interval: Duration::from_secs(30),
            agent_timeout: Duration::from_secs(300),
            health_timeout: Duration::from_secs(300),
            monitor_interval: Duration::from_secs(5),
            pairing_key_ttl: DEFAULT_PAIRING_KEY_TTL,
            max_structured_bytes: ibkit_api::structured::DEFAULT_MAX_STRUCTURED_BYTES,
            max_agent_downloads: 4,
            billing_key_ttl: DEFAULT_BILLING_KEY_TTL,
        }
    }
}

/// The shortest heartbeat interval an instance's `detection_timeout` can
/// ask for; faster would only load the service.
const MIN_INSTANCE_HEARTBEAT: Duration = Duration::from_secs(1);

/// A timeout and where it came from, for the monitor's messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout {
    pub value: Duration,
    /// `detection_timeout`, `--agent-timeout` or `--health-timeout`.
    pub source: &'static str,
}

impl ServeConfig {
    /// The heartbeat interval told to `spec`'s agents: the global one, or,
    /// with a `detection_timeout`, a third of it (at least a second) when
    /// that is shorter, so a healthy agent is never declared silent.
    pub fn heartbeat_interval_for(&self, spec: &InstanceSpec) -> Duration {
        match spec.detection_timeout {
            Some(t) => self
                .heartbeat_interval
                .min((t.to_std() / 3).max(MIN_INSTANCE_HEARTBEAT)),
            None => self.heartbeat_interval,
        }
    }

    /// How long `spec`'s agents may stay silent.
    pub fn agent_timeout_for(&self, spec: &InstanceSpec) -> Timeout {
        match spec.detection_timeout {
            Some(t) => Timeout {
                value: t.to_std(),
                source: "detection_timeout",
            },
            None => Timeout {
                value: self.agent_timeout,
                source: "--agent-timeout",
            },
        }
    }

    /// How long `spec`'s health checks may go without a passing result.
    pub fn health_timeout_for(&self, spec: &InstanceSpec) -> Timeout {
        match spec.detection_timeout {
            Some(t) => Timeout {
                value: t.to_std(),
                source: "detection_timeout",
            },
            None => Timeout {
                value: self.health_timeout,
                source: "--health-timeout",
            },
        }
    }
}

/// The machine's hostname, when it can be read.
pub fn hostname() -> Option<String> {
    for path in ["/proc/sys/kernel/hostname", "/etc/hostname"] {
        if let Ok(s) = std::fs::read_to_string(path) {
            let s = s.trim();
            if !s.is_empty() {
                return Some(s.to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(detection_timeout: Option<&str>) -> InstanceSpec {
        InstanceSpec {
            name: "x".into(),
            hosts: Vec::new(),
            groups: Vec::new(),
            health_checks: Vec::new(),
            detection_timeout: detection_timeout.map(|t| t.parse().expect("duration")),
            billing: None,
        }
    }

    #[test]
    fn detection_timeout_sets_timeouts_and_heartbeat() {
        let cfg = ServeConfig::new("/nonexistent");
        let secs = |s| Duration::from_secs(s);
        assert_eq!(cfg.heartbeat_interval_for(&spec(None)), secs(30));
        assert_eq!(cfg.heartbeat_interval_for(&spec(Some("30s"))), secs(10));
        // Never longer than the global interval, never under a second.
        assert_eq!(cfg.heartbeat_interval_for(&spec(Some("1h"))), secs(30));
        assert_eq!(cfg.heartbeat_interval_for(&spec(Some("2s"))), secs(1));
        let mut fast = cfg.clone();
        fast.heartbeat_interval = Duration::from_millis(500);
        assert_eq!(
            fast.heartbeat_interval_for(&spec(Some("2s"))),
            Duration::from_millis(500)
        );
        let t = cfg.agent_timeout_for(&spec(Some("2s")));
        assert_eq!((t.value, t.source), (secs(2), "detection_timeout"));
        let t = cfg.health_timeout_for(&spec(Some("2s")));
        assert_eq!((t.value, t.source), (secs(2), "detection_timeout"));
        let t = cfg.agent_timeout_for(&spec(None));
        assert_eq!((t.value, t.source), (secs(300), "--agent-timeout"));
        let t = cfg.health_timeout_for(&spec(None));
        assert_eq!((t.value, t.source), (secs(300), "--health-timeout"));
    }
}
