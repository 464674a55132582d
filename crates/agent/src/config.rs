//! The agent's configuration file (`/etc/ibkit/agent.toml`).

use std::path::{Path, PathBuf};

use ibkit_api::Duration;
use serde::{Deserialize, Serialize};

/// Default cap of a step's stdout and of its log, per attempt.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 16 * 1024 * 1024;

/// Default cap of a structured result file (1 MiB, as the service's).
pub const DEFAULT_MAX_STRUCTURED_RESULT_BYTES: u64 =
    ibkit_api::structured::DEFAULT_MAX_STRUCTURED_BYTES as u64;

/// Largest `max_structured_result_bytes`: a quarter of a report, so a
/// structured result always leaves room for the log and the raw result.
pub const MAX_STRUCTURED_RESULT_BYTES_LIMIT: u64 =
    (ibkit_api::wire::REPORT_BUDGET_BYTES / 4) as u64;

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
    /// The one-time pairing key, inline. Prefer `pairing_key_file`: the
    /// agent removes this line from the file once it paired.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pairing_key: String,
    /// A file holding the one-time pairing key (0600); deleted once the
    /// agent paired. Used when `pairing_key` is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pairing_key_file: Option<PathBuf>,
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default = "default_max_output")]
    pub max_output_bytes: u64,
    /// Cap of a step's `structured_result_file`: a larger file fails the
    /// step with the size named.
    #[serde(default = "default_max_structured")]
    pub max_structured_result_bytes: u64,
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

fn default_max_structured() -> u64 {
    DEFAULT_MAX_STRUCTURED_RESULT_BYTES
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
    #[error(
        "no credential yet and no pairing key: set pairing_key_file (or pairing_key) in the agent's config"
    )]
    NoPairingKey,
}

/// Removes `pairing_key = …` lines from a config file's text (the rest,
/// comments included, is kept as written).
pub fn without_inline_pairing_key(text: &str) -> Option<String> {
    let mut changed = false;
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let key = line.trim_start();
        let is_key = key
            .strip_prefix("pairing_key")
            .is_some_and(|rest| rest.trim_start().starts_with('='));
        if is_key {
            changed = true;
        } else {
            out.push_str(line);
        }
    }
    changed.then_some(out)
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
        if !(2..=MAX_STRUCTURED_RESULT_BYTES_LIMIT).contains(&cfg.max_structured_result_bytes) {
            return Err(ParseError::Invalid(format!(
                "max_structured_result_bytes: must be between 2 and {MAX_STRUCTURED_RESULT_BYTES_LIMIT}"
            )));
        }
        Ok(cfg)
    }

    /// The pairing key: `pairing_key`, else the first line of
    /// `pairing_key_file`.
    pub fn read_pairing_key(&self) -> Result<String, ConfigError> {
        if !self.pairing_key.trim().is_empty() {
            return Ok(self.pairing_key.trim().to_string());
        }
        let Some(path) = &self.pairing_key_file else {
            return Err(ConfigError::NoPairingKey);
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let key = text.lines().next().unwrap_or("").trim().to_string();
        if key.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.clone(),
                why: "the pairing key file is empty".into(),
            });
        }
        Ok(key)
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
        assert_eq!(cfg.max_structured_result_bytes, 1 << 20);
        assert_eq!(cfg.read_pairing_key().expect("inline key"), "k");
    }

    #[test]
    fn pairing_key_file_and_scrubbing() {
        let dir = tempfile::tempdir().expect("tmp");
        let key = dir.path().join("key");
        std::fs::write(&key, "abc-1\n").expect("write");
        let text = format!(
            "server_url = \"http://x\"\ninstance = \"i\"\nhost = \"h\"\npairing_key_file = \"{}\"\n",
            key.display()
        );
        let cfg = Config::parse(&text).expect("parses");
        assert_eq!(cfg.read_pairing_key().expect("from the file"), "abc-1");
        std::fs::remove_file(&key).expect("rm");
        assert!(cfg.read_pairing_key().is_err());
        let none = Config::parse("server_url = \"http://x\"\ninstance = \"i\"\nhost = \"h\"\n")
            .expect("a paired agent needs no key");
        assert!(matches!(
            none.read_pairing_key(),
            Err(ConfigError::NoPairingKey)
        ));
        // The inline key goes, pairing_key_file and comments stay.
        let scrubbed = without_inline_pairing_key(
            "# c\npairing_key = \"k\"\n  pairing_key=\"k2\"\npairing_key_file = \"/f\"\nhost = \"h\"\n",
        )
        .expect("changed");
        assert_eq!(scrubbed, "# c\npairing_key_file = \"/f\"\nhost = \"h\"\n");
        assert!(without_inline_pairing_key("host = \"h\"\n").is_none());
        assert!(
            Config::parse(
                "server_url = \"http://x\"\ninstance = \"i\"\nhost = \"h\"\nmax_structured_result_bytes = 1\n"
            )
            .is_err()
        );
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
