//! Health checks as the platform defines them: `port_health`, `http_health`,
//! `script_health`, each run by the agent at its period.

use serde::{Deserialize, Serialize};

use crate::{Duration, ScriptType, StepOptions};

/// One health check of an instance.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub name: String,
    /// Hosts that run the check; empty means every host of the instance.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default = "default_period")]
    pub period: Duration,
    #[serde(flatten)]
    pub kind: HealthKind,
}

fn default_period() -> Duration {
    Duration::from_secs(30)
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum HealthKind {
    /// A TCP connect to `host:port` succeeds.
    PortHealth {
        #[serde(default = "localhost")]
        host: String,
        port: u16,
    },
    /// An HTTP request answers with one of `http_codes`.
    HttpHealth {
        /// A full URL; when set, protocol/host/port/path are not used.
        #[serde(default)]
        url: Option<String>,
        #[serde(default = "http")]
        protocol: String,
        #[serde(default = "get")]
        method: String,
        #[serde(default = "localhost")]
        host: String,
        #[serde(default)]
        port: Option<u16>,
        #[serde(default = "root_path")]
        path: String,
        #[serde(default = "ok_codes")]
        http_codes: Vec<u16>,
    },
    /// A script whose exit code is judged by its step options.
    ScriptHealth {
        #[serde(default)]
        script_type: ScriptType,
        script: String,
        #[serde(default)]
        options: StepOptions,
    },
}

fn localhost() -> String {
    "127.0.0.1".into()
}
fn http() -> String {
    "http".into()
}
fn get() -> String {
    "GET".into()
}
fn root_path() -> String {
    "/".into()
}
fn ok_codes() -> Vec<u16> {
    vec![200]
}

impl HealthCheck {
    pub fn applies_to(&self, host: &str) -> bool {
        self.hosts.is_empty() || self.hosts.iter().any(|h| h == host)
    }

    pub fn validate(&self) -> Result<(), String> {
        if !crate::is_valid_name(&self.name) {
            return Err(format!("name {:?} is not a valid name", self.name));
        }
        if self.period == Duration::ZERO {
            return Err("period: must be longer than 0s".into());
        }
        match &self.kind {
            HealthKind::PortHealth { port, .. } if *port == 0 => Err("port: must not be 0".into()),
            HealthKind::HttpHealth {
                url,
                protocol,
                port,
                http_codes,
                ..
            } => {
                if url.is_none() && port.is_none() {
                    return Err("http_health needs a port or a url".into());
                }
                if !matches!(protocol.as_str(), "http" | "https") {
                    return Err(format!("protocol {protocol:?}: use http or https"));
                }
                if http_codes.is_empty() {
                    return Err("http_codes: must not be empty".into());
                }
                Ok(())
            }
            HealthKind::ScriptHealth { options, .. } => options.validate(),
            HealthKind::PortHealth { .. } => Ok(()),
        }
    }

    /// The URL an `http_health` check requests.
    pub fn http_url(&self) -> Option<String> {
        match &self.kind {
            HealthKind::HttpHealth { url: Some(url), .. } => Some(url.clone()),
            HealthKind::HttpHealth {
                protocol,
                host,
                port,
                path,
                ..
            } => {
                let port = port.map(|p| format!(":{p}")).unwrap_or_default();
                let slash = if path.starts_with('/') { "" } else { "/" };
                Some(format!("{protocol}://{host}{port}{slash}{path}"))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_kinds() {
        let checks: Vec<HealthCheck> = serde_json::from_str(
            r#"[{"name":"ssh","kind":"port_health","port":22,"period":"10s"},
                {"name":"web","kind":"http_health","port":8080,"path":"healthz","http_codes":[200,204]},
                {"name":"disk","kind":"script_health","script":"test -w /","options":{"timeout":"5s"}}]"#,
        )
        .expect("parses");
        assert_eq!(checks[0].period.as_millis(), 10_000);
        assert_eq!(
            checks[1].http_url().as_deref(),
            Some("http://127.0.0.1:8080/healthz")
        );
        assert_eq!(checks[1].period.as_millis(), 30_000);
        for c in &checks {
            c.validate().expect("valid");
        }
        let bad = serde_json::from_str::<HealthCheck>(r#"{"name":"x","kind":"ping_health"}"#);
        assert!(bad.is_err());
    }
}
