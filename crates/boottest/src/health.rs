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
//! `method` (GET), `path` (/), `port` and `http_codes` ([200]); `port` and
//! `http` are probed from the host through the VM's forwarded port, as a
//! buyer would reach the app; `script` runs in the guest over SSH with bash
//! (`type = "python"` for python3) and passes on exit status 0.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Probe {
    /// TCP connect.
    PortHealth {
        /// Guest port.
        port: u16,
    },
    /// HTTP(S) request.
    HttpHealth {
        /// `http` or `https`.
        protocol: String,
        /// Method (GET, HEAD, ...).
        method: String,
        /// Guest port.
        port: u16,
        /// Path with query.
        path: String,
        /// Accepted status codes.
        http_codes: Vec<u16>,
    },
    /// A script in the guest.
    ScriptHealth {
        /// `bash` or `python`.
        script_type: String,
        /// The script.
        script: String,
    },
}

impl Probe {
    /// `http://:8080/healthz`-style one-liner for reports.
    pub fn describe(&self) -> String {
        match self {
            Probe::PortHealth { port } => format!("port_health {port}/tcp"),
            Probe::HttpHealth {
                protocol,
                method,
                port,
                path,
                http_codes,
            } => format!(
                "http_health {method} {protocol}://guest:{port}{path} expecting {}",
                http_codes
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join("|")
            ),
            Probe::ScriptHealth {
                script_type,
                script,
            } => {
                let first = script.lines().next().unwrap_or("");
                format!("script_health ({script_type}) {first}")
            }
        }
    }

    /// The guest TCP port the host must reach, if any.
    pub fn port(&self) -> Option<u16> {
        match self {
            Probe::PortHealth { port } | Probe::HttpHealth { port, .. } => Some(*port),
            Probe::ScriptHealth { .. } => None,
        }
    }
}

/// The app's health check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthSpec {
    /// Every probe must pass.
    pub probes: Vec<Probe>,
    /// How long after the guest is reachable the probes may take to pass.
    pub timeout: Duration,
}

/// Default time the app gets to become healthy once SSH answers.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(120);

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
        let mut probes = Vec::new();
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
            probes.push(Probe::HttpHealth {
                protocol,
                method: h.method.to_ascii_uppercase(),
                port: h.port,
                path,
                http_codes: h.http_codes,
            });
        }
        if let Some(p) = raw.port {
            if p.port == 0 {
                return Err("[health] port.port: must be 1..65535".into());
            }
            probes.push(Probe::PortHealth { port: p.port });
        }
        if let Some(s) = raw.script {
            let t = s.script_type.to_ascii_lowercase();
            if t != "bash" && t != "python" {
                return Err(format!(
                    "[health] script.type {:?}: use bash or python",
                    s.script_type
                ));
            }
            if s.script.trim().is_empty() {
                return Err("[health] script.script: must not be empty".into());
            }
            probes.push(Probe::ScriptHealth {
                script_type: t,
                script: s.script,
            });
        }
        if probes.is_empty() {
            return Err("[health]: give at least one of http, port, script".into());
        }
        let timeout = match raw.timeout {
            Some(t) => t
                .parse::<ibkit_api::Duration>()
                .map_err(|e| format!("[health] timeout {t:?}: {e}"))?
                .to_std(),
            None => DEFAULT_HEALTH_TIMEOUT,
        };
        Ok(HealthSpec { probes, timeout })
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
            h.probes,
            vec![Probe::HttpHealth {
                protocol: "http".into(),
                method: "GET".into(),
                port: 8080,
                path: "/healthz".into(),
                http_codes: vec![200],
            }]
        );
        assert_eq!(h.timeout, DEFAULT_HEALTH_TIMEOUT);
    }

    #[test]
    fn platform_names_and_timeout() {
        let h = parse(
            "port_health = { port = 5432 }\nscript_health = { script = \"true\", type = \"python\" }\ntimeout = \"3m\"",
        )
        .expect("parses");
        assert_eq!(h.probes.len(), 2);
        assert_eq!(h.timeout, Duration::from_secs(180));
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
    }
}
