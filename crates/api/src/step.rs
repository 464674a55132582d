//! A script step and its options, with the platform's defaults (SPEC §2), and
//! the step hash that tells the service whether a host already ran a step.

use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

use crate::Duration;

/// The interpreter of a step.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ScriptType {
    #[default]
    Bash,
    Python,
}

impl ScriptType {
    pub fn as_str(self) -> &'static str {
        match self {
            ScriptType::Bash => "bash",
            ScriptType::Python => "python",
        }
    }
}

/// One step of a script group.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    pub index: u32,
    #[serde(rename = "type", default)]
    pub kind: ScriptType,
    pub content: String,
    #[serde(default)]
    pub options: StepOptions,
}

/// Step options; every field has the platform's default (SPEC §2).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StepOptions {
    /// `NAME=VALUE` entries added to the script's environment.
    pub environment_variables: Vec<String>,
    /// Exit codes that mean success.
    pub exit_codes: Vec<i32>,
    /// Exit codes that fail the step at once, without further attempts.
    pub halt_codes: Vec<i32>,
    /// Wall time of one attempt before `stop_signal` is sent.
    pub timeout: Duration,
    /// Signal sent to the script's whole process group at the timeout.
    /// A number; on input also a name (`SIGTERM`, `TERM`).
    #[serde(deserialize_with = "de_signal")]
    pub stop_signal: i32,
    /// Grace time after `stop_signal` before SIGKILL.
    pub stop_timeout: Duration,
    pub cwd: String,
    /// Falls back to root when the user does not exist on the VM.
    pub user: String,
    /// Falls back to root when the group does not exist on the VM.
    pub group: String,
    pub attempts: u32,
    pub attempt_pause: Duration,
    pub pause_before: Duration,
    pub pause_after: Duration,
    /// Keep the result on the VM's disk under the agent's state directory.
    pub store_result: bool,
    /// A file the script writes with a JSON object: the structured result.
    /// Relative paths are taken from `cwd`.
    pub structured_result_file: Option<String>,
    /// Run only on the first deployment of a host, never on redeploys.
    pub once: bool,
}

impl Default for StepOptions {
    fn default() -> Self {
        StepOptions {
            environment_variables: Vec::new(),
            exit_codes: vec![0],
            halt_codes: vec![125],
            timeout: Duration::from_secs(60),
            stop_signal: 15,
            stop_timeout: Duration::from_secs(5),
            cwd: "/tmp".into(),
            user: "root".into(),
            group: "root".into(),
            attempts: 3,
            attempt_pause: Duration::from_secs(5),
            pause_before: Duration::ZERO,
            pause_after: Duration::ZERO,
            store_result: true,
            structured_result_file: None,
            once: false,
        }
    }
}

impl StepOptions {
    /// Checks what serde cannot; the message names the option.
    pub fn validate(&self) -> Result<(), String> {
        if self.attempts == 0 {
            return Err("attempts: must be at least 1".into());
        }
        if self.exit_codes.is_empty() {
            return Err("exit_codes: must name at least one success code".into());
        }
        if self.timeout == Duration::ZERO {
            return Err("timeout: must be longer than 0s".into());
        }
        if !(1..=64).contains(&self.stop_signal) {
            return Err(format!(
                "stop_signal: {} is not a signal number (1-64)",
                self.stop_signal
            ));
        }
        for entry in &self.environment_variables {
            let Some((name, _)) = entry.split_once('=') else {
                return Err(format!(
                    "environment_variables: {entry:?} is not NAME=VALUE"
                ));
            };
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(format!(
                    "environment_variables: {name:?} is not a valid variable name"
                ));
            }
        }
        if self.cwd.is_empty() {
            return Err("cwd: must not be empty".into());
        }
        if matches!(&self.structured_result_file, Some(p) if p.is_empty()) {
            return Err("structured_result_file: must not be empty".into());
        }
        Ok(())
    }

    /// The environment as (name, value) pairs, in order.
    pub fn env_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.environment_variables
            .iter()
            .filter_map(|e| e.split_once('='))
    }
}

fn de_signal<'de, D: Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(i32),
        Name(String),
    }
    match Raw::deserialize(d)? {
        Raw::Number(n) => Ok(n),
        Raw::Name(name) => signal_number(&name).ok_or_else(|| {
            serde::de::Error::custom(format!("stop_signal: unknown signal name {name:?}"))
        }),
    }
}

/// `SIGTERM`, `TERM` or `15` to 15.
pub fn signal_number(name: &str) -> Option<i32> {
    if let Ok(n) = name.parse() {
        return Some(n);
    }
    let bare = name.strip_prefix("SIG").unwrap_or(name);
    Some(match bare.to_ascii_uppercase().as_str() {
        "HUP" => 1,
        "INT" => 2,
        "QUIT" => 3,
        "ABRT" => 6,
        "KILL" => 9,
        "USR1" => 10,
        "USR2" => 12,
        "ALRM" => 14,
        "TERM" => 15,
        _ => return None,
    })
}

/// The hash of a step: what it runs and how, not where it sits.
///
/// Defined as lowercase hex SHA-256 of `ibkit-step-v1\n` followed by the
/// compact JSON of `{"type":…,"content":…,"options":{…}}`, where `options`
/// lists every option in the order of [`StepOptions`] with defaults filled in
/// and durations in their shortest spelling (`1m30s`). So writing a default
/// explicitly does not change the hash; `index` is not part of it. The content
/// is hashed before result references are resolved.
pub fn step_hash(kind: ScriptType, content: &str, options: &StepOptions) -> String {
    #[derive(Serialize)]
    struct HashInput<'a> {
        #[serde(rename = "type")]
        kind: ScriptType,
        content: &'a str,
        options: &'a StepOptions,
    }
    let json = serde_json::to_string(&HashInput {
        kind,
        content,
        options,
    })
    .unwrap_or_default();
    let mut hasher = Sha256::new();
    hasher.update(b"ibkit-step-v1\n");
    hasher.update(json.as_bytes());
    hex(&hasher.finalize())
}

impl StepSpec {
    pub fn hash(&self) -> String {
        step_hash(self.kind, &self.content, &self.options)
    }
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 15)] as char);
    }
    out
}

/// SHA-256 as lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_spec() {
        let step: StepSpec =
            serde_json::from_str(r#"{"index":1,"content":"echo hi"}"#).expect("parses");
        let o = &step.options;
        assert_eq!(step.kind, ScriptType::Bash);
        assert_eq!(o.exit_codes, [0]);
        assert_eq!(o.halt_codes, [125]);
        assert_eq!(o.timeout.as_millis(), 60_000);
        assert_eq!(o.stop_signal, 15);
        assert_eq!(o.stop_timeout.as_millis(), 5_000);
        assert_eq!(o.cwd, "/tmp");
        assert_eq!((o.user.as_str(), o.group.as_str()), ("root", "root"));
        assert_eq!(o.attempts, 3);
        assert_eq!(o.attempt_pause.as_millis(), 5_000);
        assert_eq!(o.pause_before, Duration::ZERO);
        assert!(o.store_result && !o.once);
        assert_eq!(o.structured_result_file, None);
    }

    #[test]
    fn hash_is_stable_and_ignores_explicit_defaults() {
        let a: StepSpec =
            serde_json::from_str(r#"{"index":1,"type":"bash","content":"echo hi"}"#).expect("a");
        let b: StepSpec = serde_json::from_str(
            r#"{"index":7,"content":"echo hi","options":{"timeout":"1m","stop_signal":"SIGTERM","attempts":3}}"#,
        )
        .expect("b");
        assert_eq!(a.hash(), b.hash());
        // Pinned (recomputed independently with Python's hashlib over the
        // documented canonical JSON): changing the definition breaks hosts.
        assert_eq!(
            a.hash(),
            "12b2a57cee7ff855f918b5a280758d5c3e8c65204ce108c55b61e94fc66bbe20"
        );
        let c: StepSpec =
            serde_json::from_str(r#"{"index":1,"content":"echo hi","options":{"timeout":"61s"}}"#)
                .expect("c");
        assert_ne!(a.hash(), c.hash());
        let d: StepSpec =
            serde_json::from_str(r#"{"index":1,"type":"python","content":"echo hi"}"#).expect("d");
        assert_ne!(a.hash(), d.hash());
    }

    #[test]
    fn unknown_options_and_bad_values_are_refused() {
        let e = serde_json::from_str::<StepSpec>(
            r#"{"index":1,"content":"x","options":{"timout":"5s"}}"#,
        )
        .expect_err("typo");
        assert!(e.to_string().contains("timout"), "{e}");
        let o: StepOptions = serde_json::from_str(r#"{"attempts":0}"#).expect("parses, invalid");
        assert!(o.validate().expect_err("zero").contains("attempts"));
        let o: StepOptions =
            serde_json::from_str(r#"{"environment_variables":["NOEQUALS"]}"#).expect("parses");
        assert!(o.validate().expect_err("env").contains("NOEQUALS"));
        assert!(serde_json::from_str::<StepOptions>(r#"{"stop_signal":"SIGFOO"}"#).is_err());
    }
}
