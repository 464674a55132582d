//! The agent's configuration file (`/etc/ibkit/agent.toml`).

use std::path::{Path, PathBuf};

use ibkit_api::Duration;
use serde::{Deserialize, Serialize};

/// Default cap of a step's stdout and of its log, per attempt.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 16 * 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `https://service:8443`.
    pub server_url: String,
    /// Hex SHA-256 of the service's certificate (DER); when set, exactly
    /// that certificate is accepted, whatever its name or issuer. Empty
    /// means unset: the system's roots are used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_cert_sha256: Option<String>,
    pub instance: String,
    pub host: String,
    pub pairing_key: String,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default = "default_max_output")]
    pub max_output_bytes: u64,
    /// Overrides the interval the service asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval: Option<Duration>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/ibkit-agent")
}

fn default_max_output() -> u64 {
    DEFAULT_MAX_OUTPUT_BYTES
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid agent config")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ParseError::Toml(source) => ConfigError::Parse {
                path: path.into(),
                source,
            },
            ParseError::Invalid(why) => ConfigError::Invalid {
                path: path.into(),
                why,
            },
        })
    }

    pub fn parse(text: &str) -> Result<Config, ParseError> {
        let mut cfg: Config = toml::from_str(text).map_err(ParseError::Toml)?;
        if matches!(&cfg.server_cert_sha256, Some(s) if s.trim().is_empty()) {
            cfg.server_cert_sha256 = None;
        }
        if let Some(pin) = &cfg.server_cert_sha256 {
            parse_pin(pin).map_err(ParseError::Invalid)?;
        }
        if !(cfg.server_url.starts_with("http://") || cfg.server_url.starts_with("https://")) {
            return Err(ParseError::Invalid(format!(
                "server_url {:?}: must start with https:// or http://",
                cfg.server_url
            )));
        }
        cfg.server_url = cfg.server_url.trim_end_matches('/').to_string();
        if cfg.max_output_bytes < 1024 {
            return Err(ParseError::Invalid(
                "max_output_bytes: must be at least 1024".into(),
            ));
        }
        Ok(cfg)
    }

    /// The file's text, as [`Config::parse`] reads it back.
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// The certificate pin as bytes, if set (validated by [`Config::parse`]).
    pub fn pin(&self) -> Option<[u8; 32]> {
        self.server_cert_sha256
            .as_deref()
            .and_then(|p| parse_pin(p).ok())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error(transparent)]
    Toml(toml::de::Error),
    #[error("{0}")]
    Invalid(String),
}

/// Hex SHA-256, case-insensitive, `:` separators allowed (openssl's
/// `-fingerprint` spelling).
pub fn parse_pin(pin: &str) -> Result<[u8; 32], String> {
    ibkit_api::pin::parse_cert_sha256(pin).map_err(|e| format!("server_cert_sha256 {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installer_config_parses() {
        let cfg = Config::parse(
            r#"server_url = "https://10.0.2.2:8443/"
server_cert_sha256 = ""
instance = "i1"
host = "db"
pairing_key = "k"
state_dir = "/var/lib/ibkit-agent"
"#,
        )
        .expect("parses");
        assert_eq!(cfg.server_url, "https://10.0.2.2:8443");
        assert!(cfg.pin().is_none());
        assert_eq!(cfg.max_output_bytes, DEFAULT_MAX_OUTPUT_BYTES);
    }

    #[test]
    fn pins() {
        let hex = "AB".repeat(32);
        assert_eq!(parse_pin(&hex).expect("hex"), [0xab; 32]);
        let colons = vec!["ab"; 32].join(":");
        assert_eq!(parse_pin(&colons).expect("colons"), [0xab; 32]);
        assert!(parse_pin("abc").is_err());
    }
}
