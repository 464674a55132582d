//! What `ibkit serve` is told on its command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

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

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub tls: TlsMode,
    /// The URL installers and agents use; default derived from the bound address.
    pub public_url: Option<String>,
    /// Default `STATE/operator-token`, generated on first start.
    pub operator_token_file: Option<PathBuf>,
    /// Default `ibkit-agent` next to the current executable.
    pub agent_binary: Option<PathBuf>,
    pub heartbeat_interval: Duration,
    pub agent_timeout: Duration,
    pub health_timeout: Duration,
    pub monitor_interval: Duration,
}

impl ServeConfig {
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
            agent_binary: None,
            heartbeat_interval: Duration::from_secs(30),
            agent_timeout: Duration::from_secs(300),
            health_timeout: Duration::from_secs(300),
            monitor_interval: Duration::from_secs(5),
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
