//! The agent's configuration file (`/etc/ibkit/agent.toml`).

use std::path::{Path, PathBuf};

use ibkit_api::Duration;
use ibkit_support::posix::is_account_name;
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
    /// The marketplace's billing token file the agent keeps current (VK's
    /// `ivkcs_user_data` `token_file_path`); see [`crate::billing_token`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_token: Option<BillingTokenConfig>,
}

/// `[billing_token]`: where the instance's marketplace API key is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillingTokenConfig {
    /// Absolute, without `.`/`..`; missing directories are created (0755).
    pub path: PathBuf,
    /// The file's owner and group: user and group names on the VM.
    #[serde(default = "root")]
    pub owner: String,
    #[serde(default = "root")]
    pub group: String,
    /// Octal permission bits (`"0640"`); default 0640 when `group` is not
    /// root (the group is there to read it), else 0600. Never more than
    /// owner read-write and group read-write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Fetch the key again when the service says (`refresh_after_ms`) and
    /// replace the file when it changed; false: fetch once and keep.
    #[serde(default)]
    pub rotate: bool,
}

fn root() -> String {
    "root".into()
}

/// The bits a token file may have: owner and group read-write.
pub const BILLING_TOKEN_MODE_MASK: u32 = 0o660;

impl BillingTokenConfig {
    /// The file's permission bits (validated by [`Config::parse`]).
    pub fn file_mode(&self) -> u32 {
        match self.mode.as_deref().map(parse_mode) {
            Some(Ok(m)) => m,
            _ if self.group != "root" => 0o640,
            _ => 0o600,
        }
    }

    fn validate(&self) -> Result<(), String> {
        check_token_path(&self.path).map_err(|e| format!("billing_token.path: {e}"))?;
        for (field, name) in [("owner", &self.owner), ("group", &self.group)] {
            if !is_account_name(name) {
                return Err(format!(
                    "billing_token.{field} {name:?}: not a user or group name ([a-z_][a-z0-9_-]{{0,31}})"
                ));
            }
        }
        if let Some(m) = &self.mode {
            parse_mode(m).map_err(|e| format!("billing_token.mode {m:?}: {e}"))?;
        }
        Ok(())
    }
}

/// [`ibkit_support::posix::check_plain_file_path`] of a path.
pub fn check_token_path(path: &Path) -> Result<(), String> {
    let text = path.to_str().ok_or("not UTF-8")?;
    ibkit_support::posix::check_plain_file_path(text)
}

/// `"0640"`, `"640"`, `"0o640"`: octal, within [`BILLING_TOKEN_MODE_MASK`],
/// readable by its owner.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    let m = u32::from_str_radix(digits, 8).map_err(|_| "not an octal mode".to_string())?;
    if digits.is_empty() || m & !BILLING_TOKEN_MODE_MASK != 0 {
        return Err(format!(
            "at most {BILLING_TOKEN_MODE_MASK:04o} (owner and group read-write; nothing for others, no execute)"
        ));
    }
    if m & 0o400 == 0 {
        return Err("the owner must be able to read it".into());
    }
    Ok(m)
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
        if let Some(b) = &cfg.billing_token {
            b.validate().map_err(ParseError::Invalid)?;
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
    fn billing_token_section() {
        let base = "server_url = \"http://x\"\ninstance = \"i\"\nhost = \"h\"\n";
        let cfg = Config::parse(&format!(
            "{base}[billing_token]\npath = \"/opt/agent/xaas-secret-auth-token.key\"\nrotate = true\n"
        ))
        .expect("parses");
        let b = cfg.billing_token.clone().expect("section");
        assert_eq!((b.owner.as_str(), b.group.as_str()), ("root", "root"));
        assert!(b.rotate);
        assert_eq!(b.file_mode(), 0o600);
        // Written back and read again: the same.
        let again = Config::parse(&cfg.to_toml().expect("toml")).expect("round trip");
        assert_eq!(again.billing_token, Some(b));
        let with = |extra: &str| {
            Config::parse(&format!(
                "{base}[billing_token]\npath = \"/opt/t.key\"\n{extra}"
            ))
        };
        let g = with("group = \"app\"\n").expect("group");
        assert_eq!(g.billing_token.expect("b").file_mode(), 0o640);
        let m = with("group = \"app\"\nmode = \"0660\"\n").expect("mode");
        assert_eq!(m.billing_token.expect("b").file_mode(), 0o660);
        for bad in [
            "mode = \"0644\"\n",
            "mode = \"0700\"\n",
            "mode = \"0040\"\n",
            "mode = \"rw\"\n",
            "owner = \"Root\"\n",
            "group = \"a b\"\n",
            "owner = \"\"\n",
            "colour = \"red\"\n",
        ] {
            assert!(with(bad).is_err(), "{bad}");
        }
        for bad in [
            "t.key",
            "/opt/../etc/t",
            "/opt/./t",
            "/",
            "/opt/",
            "//opt/t/..",
        ] {
            let r = Config::parse(&format!("{base}[billing_token]\npath = \"{bad}\"\n"));
            assert!(
                matches!(&r, Err(ParseError::Invalid(m)) if m.starts_with("billing_token.path")),
                "{bad}: {:?}",
                r.map(|_| ())
            );
        }
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
