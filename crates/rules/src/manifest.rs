//! The vendor's app manifest (`ibkit.toml`): what the app is, which units
//! run it, which ports it listens on, where its docs are. `check` uses it
//! for APP-PORTS, APP-AUTOSTART-*, APP-DOCS and IMG-AGENT-DEPS.
//!
//! ```toml
//! [app]
//! name = "acme-wiki"
//! version = "2.4.1"
//! units = ["acme-wiki.service"]      # systemd units that run the app
//! ports = ["8080/tcp", "8443"]       # "/tcp" is the default protocol
//! agent = true                       # the platform's agent will be installed (default)
//!
//! [docs]
//! deployment_guide = "docs/deploy.md"   # relative to this file
//! user_guide = "docs/user.md"           # optional
//!
//! [health]                               # used by boot-test
//! http = { port = 8080, path = "/healthz" }
//!
//! [billing]                              # used by boot-test (APP-BILLING)
//! params = ["requests"]
//! ```
//!
//! `[health]` and `[billing]` are checked when the manifest is read (see
//! [`crate::health`], [`crate::billing`]).

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::billing::BillingManifest;
pub use crate::health::{DEFAULT_HEALTH_TIMEOUT, HealthSpec};

/// A manifest's duration field (`30s`, `2m`), or `default` when absent;
/// the error names the field (`[health] timeout "soon": …`).
pub(crate) fn duration_or(
    field: &str,
    text: Option<&str>,
    default: std::time::Duration,
) -> Result<std::time::Duration, String> {
    match text {
        Some(t) => t
            .parse::<ibkit_api::Duration>()
            .map(ibkit_api::Duration::to_std)
            .map_err(|e| format!("{field} {t:?}: {e}")),
        None => Ok(default),
    }
}

/// Transport protocol of a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// `tcp` or `udp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A declared port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Port {
    /// Number.
    pub number: u16,
    /// Protocol.
    pub protocol: Protocol,
}

impl std::fmt::Display for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.number, self.protocol.as_str())
    }
}

impl std::str::FromStr for Port {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (num, proto) = match s.split_once('/') {
            Some((n, p)) => (n, p),
            None => (s, "tcp"),
        };
        let protocol = match proto.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => {
                return Err(format!(
                    "port {s:?}: unknown protocol {other:?} (use tcp or udp)"
                ));
            }
        };
        let number = num
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| format!("port {s:?}: not a number between 1 and 65535"))?;
        Ok(Port { number, protocol })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    app: RawApp,
    #[serde(default)]
    docs: Option<RawDocs>,
    #[serde(default)]
    health: Option<toml::Value>,
    #[serde(default)]
    billing: Option<toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    name: String,
    version: String,
    #[serde(default)]
    units: Vec<String>,
    #[serde(default)]
    ports: Vec<toml::Value>,
    #[serde(default = "yes")]
    agent: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDocs {
    deployment_guide: Option<String>,
    user_guide: Option<String>,
}

/// A parsed manifest.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    /// Where it was read from (docs paths are relative to its directory).
    pub path: Option<PathBuf>,
    /// App name.
    pub name: String,
    /// App version (must appear in the docs).
    pub version: String,
    /// systemd units that run the app.
    pub units: Vec<String>,
    /// Ports the app listens on (SSH's 22/tcp is always allowed).
    pub ports: Vec<Port>,
    /// Whether the platform's agent is used (IMG-AGENT-DEPS applies).
    pub agent: bool,
    /// Deployment guide, resolved to a host path.
    pub deployment_guide: Option<PathBuf>,
    /// User guide, resolved to a host path.
    pub user_guide: Option<PathBuf>,
    /// The `[health]` check (used by boot-test), validated at load.
    pub health: Option<HealthSpec>,
    /// The `[billing]` table (boot-test's APP-BILLING), validated at load.
    pub billing: Option<BillingManifest>,
}

/// Why a manifest could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot read manifest {path}: {source}")]
    Read {
        /// Path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML or wrong fields.
    #[error("invalid manifest {path}: {message}")]
    Invalid {
        /// Path.
        path: String,
        /// What is wrong (with line and column from the TOML parser).
        message: String,
    },
}

impl Manifest {
    /// Read and validate a manifest file.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut m = Manifest::parse(&text).map_err(|message| ManifestError::Invalid {
            path: path.display().to_string(),
            message,
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        m.deployment_guide = m.deployment_guide.map(|p| dir.join(p));
        m.user_guide = m.user_guide.map(|p| dir.join(p));
        m.path = Some(path.to_owned());
        Ok(m)
    }

    /// Parse manifest text (doc paths stay relative).
    pub fn parse(text: &str) -> Result<Manifest, String> {
        let raw: RawManifest = toml::from_str(text).map_err(|e| e.to_string())?;
        if raw.app.name.trim().is_empty() {
            return Err("app.name is empty".into());
        }
        if raw.app.version.trim().is_empty() {
            return Err("app.version is empty".into());
        }
        let mut ports = Vec::new();
        for v in &raw.app.ports {
            let p = match v {
                toml::Value::Integer(n) => u16::try_from(*n)
                    .ok()
                    .filter(|&n| n > 0)
                    .map(|number| Port {
                        number,
                        protocol: Protocol::Tcp,
                    })
                    .ok_or_else(|| format!("app.ports: {n} is not a port number"))?,
                toml::Value::String(s) => {
                    s.parse::<Port>().map_err(|e| format!("app.ports: {e}"))?
                }
                other => {
                    return Err(format!(
                        "app.ports: {other} is neither a number nor \"N/proto\""
                    ));
                }
            };
            ports.push(p);
        }
        for u in &raw.app.units {
            if !u.contains('.') {
                return Err(format!("app.units: {u:?} needs a suffix such as .service"));
            }
        }
        let health = raw.health.as_ref().map(HealthSpec::from_toml).transpose()?;
        let billing = raw
            .billing
            .as_ref()
            .map(BillingManifest::from_toml)
            .transpose()?;
        let docs = raw.docs.unwrap_or(RawDocs {
            deployment_guide: None,
            user_guide: None,
        });
        Ok(Manifest {
            path: None,
            name: raw.app.name,
            version: raw.app.version,
            units: raw.app.units,
            ports,
            agent: raw.app.agent,
            deployment_guide: docs.deployment_guide.map(PathBuf::from),
            user_guide: docs.user_guide.map(PathBuf::from),
            health,
            billing,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = "[app]\nname = \"x\"\nversion = \"1\"\n";

    #[test]
    fn health_is_parsed_at_load() {
        let m = Manifest::parse(&format!(
            "{APP}[health]\nhttp = {{ port = 8080 }}\ntimeout = \"30s\"\n"
        ))
        .expect("parses");
        let h = m.health.expect("health");
        assert_eq!(h.checks.len(), 1);
        assert_eq!(h.timeout, std::time::Duration::from_secs(30));
        assert_eq!(Manifest::parse(APP).expect("parses").health, None);
    }

    #[test]
    fn a_bad_health_table_fails_the_manifest() {
        for (table, needle) in [
            ("http = { port = 0 }", "http.port"),
            ("htp = { port = 80 }", "htp"),
            ("timeout = \"1m\"", "at least one"),
            ("port = { port = 80 }\ntimeout = \"later\"", "timeout"),
            (
                "script = { script = \"true\", type = \"sh\" }",
                "script.type",
            ),
        ] {
            let e = Manifest::parse(&format!("{APP}[health]\n{table}\n")).expect_err(table);
            assert!(e.contains("[health]") && e.contains(needle), "{table}: {e}");
        }
    }

    #[test]
    fn load_names_the_file_and_the_field() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("ibkit.toml");
        std::fs::write(&p, format!("{APP}[health]\nhttp = {{ port = 0 }}\n")).expect("write");
        let e = Manifest::load(&p).expect_err("bad health").to_string();
        assert!(
            e.contains("ibkit.toml") && e.contains("[health] http.port"),
            "{e}"
        );
    }
}
