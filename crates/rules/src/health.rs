//! The app's health check, from the `[health]` table of the app manifest,
//! written like the platform's `port_health` / `http_health` /
//! `script_health`:
//!
//! ```toml
//! [health]
//! http = { port = 8080, path = "/healthz" }   # or http_health = {...}
//! # port = { port = 5432 }                    # or port_health
//! # script = { script = "pg_isready -q" }     # or script_health; runs in the guest
//! timeout = "120s"                            # how long it may take to pass (default 120s)
//! ```
//!
//! Every check given must pass. `http` takes `protocol` (`http`|`https`),
//! `method` (GET), `path` (/), `port` and `http_codes` (`[200]`); `script`
//! takes `script` and `type` (`bash`|`python`, default bash).
//!
//! The checks are the platform's own [`HealthKind`], parsed when the
//! manifest is loaded so a bad table is reported there. `host` and `url`
//! are not accepted: the checks are about the app in the image, and
//! boot-test probes them from the host through the VM's forwarded port, as
//! a buyer would reach the app. The parsed kinds therefore always carry
//! `host = "127.0.0.1"` (the guest's view of itself) and no `url`; script
//! checks carry the default step options (boot-test runs them once per
//! probe round and judges exit status 0).

use std::time::Duration;

use ibkit_api::{HealthKind, ScriptType, StepOptions};
use serde::{Deserialize, Serialize};

/// The app's health check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSpec {
    /// Every check must pass, in this order (http, port, script).
    pub checks: Vec<HealthKind>,
    /// How long after the guest is reachable the checks may take to pass.
    pub timeout: Duration,
}

/// Default time the app gets to become healthy once SSH answers.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(120);

/// The `host` every parsed check carries: the guest itself.
const GUEST_SELF: &str = "127.0.0.1";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealth {
    #[serde(alias = "http_health")]
    http: Option<RawHttp>,
    #[serde(alias = "port_health")]
    port: Option<RawPort>,
    #[serde(alias = "script_health")]
    script: Option<RawScript>,
    timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    port: u16,
    #[serde(default = "default_path")]
    path: String,
    #[serde(default = "default_protocol")]
    protocol: String,
    #[serde(default = "default_method")]
    method: String,
    #[serde(default = "default_codes")]
    http_codes: Vec<u16>,
}

fn default_path() -> String {
    "/".into()
}
fn default_protocol() -> String {
    "http".into()
}
fn default_method() -> String {
    "GET".into()
}
fn default_codes() -> Vec<u16> {
    vec![200]
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPort {
    port: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScript {
    script: String,
    #[serde(default = "default_type", rename = "type", alias = "script_type")]
    script_type: String,
}

fn default_type() -> String {
    "bash".into()
}

impl HealthSpec {
    /// Parse the manifest's `[health]` table; the error names the field.
    pub fn from_toml(value: &toml::Value) -> Result<HealthSpec, String> {
        let raw: RawHealth = value
            .clone()
            .try_into()
            .map_err(|e| format!("[health]: {e}"))?;
        let mut checks = Vec::new();
        if let Some(h) = raw.http {
            if h.port == 0 {
                return Err("[health] http.port: must be 1..65535".into());
            }
            let protocol = h.protocol.to_ascii_lowercase();
            if protocol != "http" && protocol != "https" {
                return Err(format!(
                    "[health] http.protocol {:?}: use http or https",
                    h.protocol
                ));
            }
            if h.http_codes.is_empty() {
                return Err("[health] http.http_codes: must not be empty".into());
            }
            let path = if h.path.starts_with('/') {
                h.path
            } else {
                format!("/{}", h.path)
            };
            checks.push(HealthKind::HttpHealth {
                url: None,
                protocol,
                method: h.method.to_ascii_uppercase(),
                host: GUEST_SELF.into(),
                port: Some(h.port),
                path,
                http_codes: h.http_codes,
            });
        }
        if let Some(p) = raw.port {
            if p.port == 0 {
                return Err("[health] port.port: must be 1..65535".into());
            }
            checks.push(HealthKind::PortHealth {
                host: GUEST_SELF.into(),
                port: p.port,
            });
        }
        if let Some(s) = raw.script {
            let script_type = match s.script_type.to_ascii_lowercase().as_str() {
                "bash" => ScriptType::Bash,
                "python" => ScriptType::Python,
                _ => {
                    return Err(format!(
                        "[health] script.type {:?}: use bash or python",
                        s.script_type
                    ));
                }
            };
            if s.script.trim().is_empty() {
                return Err("[health] script.script: must not be empty".into());
            }
            checks.push(HealthKind::ScriptHealth {
                script_type,
                script: s.script,
                options: StepOptions::default(),
            });
        }
        if checks.is_empty() {
            return Err("[health]: give at least one of http, port, script".into());
        }
        let timeout = crate::manifest::duration_or(
            "[health] timeout",
            raw.timeout.as_deref(),
            DEFAULT_HEALTH_TIMEOUT,
        )?;
        Ok(HealthSpec { checks, timeout })
    }
}

/// `http_health GET http://guest:8080/healthz expecting 200`-style one-liner
/// for reports.
pub fn describe(check: &HealthKind) -> String {
    match check {
        HealthKind::PortHealth { port, .. } => format!("port_health {port}/tcp"),
        HealthKind::HttpHealth {
            url: Some(url),
            method,
            http_codes,
            ..
        } => format!("http_health {method} {url} expecting {}", codes(http_codes)),
        HealthKind::HttpHealth {
            url: None,
            protocol,
            method,
            port,
            path,
            http_codes,
            ..
        } => format!(
            "http_health {method} {protocol}://guest{}{path} expecting {}",
            port.map(|p| format!(":{p}")).unwrap_or_default(),
            codes(http_codes)
        ),
        HealthKind::ScriptHealth {
            script_type,
            script,
            ..
        } => {
            let first = script.lines().next().unwrap_or("");
            format!("script_health ({}) {first}", script_type.as_str())
        }
    }
}

fn codes(http_codes: &[u16]) -> String {
    http_codes
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join("|")
}

/// The guest TCP port a check reaches from outside the guest, if any.
pub fn guest_port(check: &HealthKind) -> Option<u16> {
    match check {
        HealthKind::PortHealth { port, .. } => Some(*port),
        HealthKind::HttpHealth {
            url: None, port, ..
        } => *port,
        HealthKind::HttpHealth { url: Some(_), .. } | HealthKind::ScriptHealth { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<HealthSpec, String> {
        let v: toml::Value = toml::from_str(s).map_err(|e| e.to_string())?;
        HealthSpec::from_toml(&v)
    }

    #[test]
    fn http_with_defaults() {
        let h = parse(r#"http = { port = 8080, path = "healthz" }"#).expect("parses");
        assert_eq!(
            h.checks,
            vec![HealthKind::HttpHealth {
                url: None,
                protocol: "http".into(),
                method: "GET".into(),
                host: "127.0.0.1".into(),
                port: Some(8080),
                path: "/healthz".into(),
                http_codes: vec![200],
            }]
        );
        assert_eq!(h.timeout, DEFAULT_HEALTH_TIMEOUT);
        assert_eq!(
            describe(&h.checks[0]),
            "http_health GET http://guest:8080/healthz expecting 200"
        );
        assert_eq!(guest_port(&h.checks[0]), Some(8080));
    }

    #[test]
    fn platform_names_and_timeout() {
        let h = parse(
            "port_health = { port = 5432 }\nscript_health = { script = \"true\", type = \"python\" }\ntimeout = \"3m\"",
        )
        .expect("parses");
        assert_eq!(h.checks.len(), 2);
        assert_eq!(h.timeout, Duration::from_secs(180));
        assert_eq!(describe(&h.checks[0]), "port_health 5432/tcp");
        assert_eq!(describe(&h.checks[1]), "script_health (python) true");
        assert_eq!(guest_port(&h.checks[1]), None);
    }

    #[test]
    fn short_forms_and_case() {
        let h = parse(
            "http = { port = 443, protocol = \"HTTPS\", method = \"head\", http_codes = [200, 204] }\nport = { port = 22 }\nscript = { script = \"exit 0\", script_type = \"Bash\" }",
        )
        .expect("parses");
        assert_eq!(
            h.checks.iter().map(describe).collect::<Vec<_>>(),
            vec![
                "http_health HEAD https://guest:443/ expecting 200|204",
                "port_health 22/tcp",
                "script_health (bash) exit 0",
            ]
        );
    }

    #[test]
    fn errors_name_the_field() {
        let e = parse("http = { port = 0 }").expect_err("port 0");
        assert!(e.contains("http.port"), "{e}");
        let e = parse("").expect_err("empty");
        assert!(e.contains("at least one"), "{e}");
        let e = parse("htp = { port = 1 }").expect_err("typo");
        assert!(e.contains("htp"), "{e}");
        let e = parse("http = { port = 1, protocol = \"ftp\" }").expect_err("ftp");
        assert!(e.contains("protocol"), "{e}");
        let e = parse("http = { port = 1, http_codes = [] }").expect_err("no codes");
        assert!(e.contains("http.http_codes"), "{e}");
        let e = parse("port = { port = 0 }").expect_err("port 0");
        assert!(e.contains("port.port"), "{e}");
        let e = parse("script = { script = \"x\", type = \"perl\" }").expect_err("perl");
        assert!(e.contains("script.type") && e.contains("perl"), "{e}");
        let e = parse("script = { script = \"  \" }").expect_err("blank");
        assert!(e.contains("script.script"), "{e}");
        let e = parse("port = { port = 1 }\ntimeout = \"soon\"").expect_err("timeout");
        assert!(e.contains("timeout") && e.contains("soon"), "{e}");
        // host and url belong to the platform's checks, not the image's.
        let e = parse("http = { port = 1, host = \"example.com\" }").expect_err("host");
        assert!(e.contains("host"), "{e}");
    }
}
