//! The operator side of `ibkit serve`'s API, as `ibkit deploy` uses it.
//!
//! Answers are decoded into the small structs below (only the fields the
//! controller reads; unknown fields are ignored, so a newer service still
//! works). The connection is pinned to the service's certificate when its
//! SHA-256 is given, as the agent does.

use std::path::Path;
use std::time::Duration;

use ibkit_api::InstanceSpec;
use ibkit_api::wire::{InstanceStatus, ServiceInfo, StepStatus};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::userdata::Secret;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the service at {url} is unreachable: {why}")]
    Unreachable { url: String, why: String },
    #[error("the service refused the operator token (401): {0}")]
    Unauthorized(String),
    #[error("{method} {path}: the service answered {status}: {message}")]
    Status {
        method: &'static str,
        path: String,
        status: u16,
        message: String,
    },
    #[error("{path}: unexpected answer from the service: {why}")]
    Decode { path: String, why: String },
    #[error("cannot set up the service client: {0}")]
    Setup(String),
}

impl ClientError {
    /// 404 on the instance: the service does not know it (any more).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Status { status: 404, .. })
    }
}

/// Where the service is and how to trust it.
#[derive(Clone)]
pub struct ServiceEndpoint {
    /// e.g. `https://127.0.0.1:8443`.
    pub url: String,
    /// Hex SHA-256 of the service certificate; `None`: CA verification.
    pub cert_sha256: Option<String>,
    pub operator_token: Secret,
}

impl std::fmt::Debug for ServiceEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceEndpoint")
            .field("url", &self.url)
            .field("cert_sha256", &self.cert_sha256)
            .finish_non_exhaustive()
    }
}

impl ServiceEndpoint {
    /// A service running on this machine, from its state directory:
    /// `endpoint.json` (URL, certificate hash) and `operator-token`.
    pub fn from_serve_state(dir: &Path) -> Result<Self, ClientError> {
        let setup = |what: &Path, e: &dyn std::fmt::Display| {
            ClientError::Setup(format!(
                "cannot read {} ({e}); is `ibkit serve --state-dir {}` running?",
                what.display(),
                dir.display()
            ))
        };
        let ep_path = dir.join(ibkit_api::wire::ServiceEndpoint::FILE_NAME);
        let raw = std::fs::read(&ep_path).map_err(|e| setup(&ep_path, &e))?;
        let ep: ibkit_api::wire::ServiceEndpoint =
            serde_json::from_slice(&raw).map_err(|e| setup(&ep_path, &e))?;
        let token_path = dir.join("operator-token");
        let token = std::fs::read_to_string(&token_path).map_err(|e| setup(&token_path, &e))?;
        Ok(ServiceEndpoint {
            url: ep.url,
            cert_sha256: ep.cert_sha256,
            operator_token: Secret::new(token.trim()),
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct HostPairing {
    pub name: String,
    pub pairing_key: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct InstanceCreated {
    pub id: uuid::Uuid,
    pub hosts: Vec<HostPairing>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HostView {
    pub name: String,
    pub paired: bool,
    #[serde(default)]
    pub health: String,
    pub unhealthy_reason: Option<String>,
    pub checks_active_since: Option<i64>,
    #[serde(default)]
    pub steps: std::collections::BTreeMap<String, i64>,
}

impl HostView {
    /// Steps still `pending` or `running`.
    pub fn steps_not_done(&self) -> i64 {
        ["pending", "running"]
            .iter()
            .filter_map(|s| self.steps.get(*s))
            .sum()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct InstanceDetail {
    pub id: uuid::Uuid,
    pub status: InstanceStatus,
    pub status_reason: Option<String>,
    pub generation: i64,
    pub hosts: Vec<HostView>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StepView {
    pub group: String,
    pub index: u32,
    pub status: StepStatus,
    #[serde(default)]
    pub attempts: i64,
    pub exit_code: Option<i64>,
    pub log: Option<String>,
    pub error: Option<String>,
    pub exec_id: Option<String>,
    pub finished_at_ms: Option<i64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HealthResultView {
    pub check: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct StepResult {
    pub status: StepStatus,
    pub raw: Option<String>,
    pub structured: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RecoveryRequest {
    pub id: String,
    pub host: String,
    pub kind: String,
    pub reason: String,
    pub created_at: i64,
}

/// `url` with its host replaced (scheme, port and path kept): the service
/// as a VM reaches it, e.g. `https://127.0.0.1:8443` → `https://10.77.0.1:8443`.
pub fn with_host(url: &str, host: &str) -> Result<String, ClientError> {
    let bad = |why: &str| ClientError::Setup(format!("service URL {url:?}: {why}"));
    let (scheme, rest) = url
        .split_once("://")
        .filter(|(s, _)| matches!(*s, "http" | "https"))
        .ok_or_else(|| bad("not an http(s) URL"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let port = if let Some(v6) = authority.strip_prefix('[') {
        let (_, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        after.strip_prefix(':')
    } else {
        authority.rsplit_once(':').map(|(_, p)| p)
    };
    if let Some(p) = port
        && p.parse::<u16>().is_err()
    {
        return Err(bad("the port is not a number"));
    }
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    Ok(match port {
        Some(p) => format!("{scheme}://{host}:{p}{path}"),
        None => format!("{scheme}://{host}{path}"),
    })
}

/// The operator API client.
#[derive(Debug, Clone)]
pub struct ServiceClient {
    http: reqwest::Client,
    base: String,
    token: Secret,
}

impl ServiceClient {
    pub fn new(endpoint: &ServiceEndpoint) -> Result<Self, ClientError> {
        let builder = match endpoint.cert_sha256.as_deref().filter(|s| !s.is_empty()) {
            Some(hex) => {
                let pin = ibkit_api::pin::parse_cert_sha256(hex)
                    .map_err(|e| ClientError::Setup(format!("service certificate hash: {e}")))?;
                let tls = ibkit_api::pin::pinned_client_config(pin).map_err(ClientError::Setup)?;
                reqwest::Client::builder().tls_backend_preconfigured(tls)
            }
            None => reqwest::Client::builder(),
        };
        let http = builder
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("ibkit-deploy/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Setup(format!("{e:#}")))?;
        Ok(ServiceClient {
            http,
            base: endpoint.url.trim_end_matches('/').to_string(),
            token: endpoint.operator_token.clone(),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let m = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        let mut req = self.http.request(m, &url).bearer_auth(self.token.expose());
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            why: format!("{e:#}"),
        })?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| ClientError::Unreachable {
            url: self.base.clone(),
            why: format!("{e:#}"),
        })?;
        if !(200..300).contains(&status) {
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(300).collect());
            if status == 401 {
                return Err(ClientError::Unauthorized(message));
            }
            return Err(ClientError::Status {
                method,
                path: path.to_string(),
                status,
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            path: path.to_string(),
            why: e.to_string(),
        })
    }

    pub async fn service_info(&self) -> Result<ServiceInfo, ClientError> {
        self.call("GET", "/v1/service", None).await
    }

    pub async fn create_instance(
        &self,
        spec: &InstanceSpec,
    ) -> Result<InstanceCreated, ClientError> {
        let body = serde_json::to_value(spec).map_err(|e| ClientError::Setup(e.to_string()))?;
        self.call("POST", "/v1/instances", Some(&body)).await
    }

    pub async fn update_instance(
        &self,
        id: uuid::Uuid,
        spec: &InstanceSpec,
    ) -> Result<serde_json::Value, ClientError> {
        let body = serde_json::to_value(spec).map_err(|e| ClientError::Setup(e.to_string()))?;
        self.call("PUT", &format!("/v1/instances/{id}"), Some(&body))
            .await
    }

    pub async fn instance(&self, id: uuid::Uuid) -> Result<InstanceDetail, ClientError> {
        self.call("GET", &format!("/v1/instances/{id}"), None).await
    }

    pub async fn delete_instance(&self, id: uuid::Uuid) -> Result<serde_json::Value, ClientError> {
        self.call("DELETE", &format!("/v1/instances/{id}"), None)
            .await
    }

    /// A new pairing key for a host whose VM is recreated: revokes the old
    /// credential and resets the host's steps (`once` steps that succeeded
    /// are skipped).
    pub async fn rekey(&self, id: uuid::Uuid, host: &str) -> Result<Secret, ClientError> {
        let p: HostPairing = self
            .call(
                "POST",
                &format!("/v1/instances/{id}/hosts/{host}/pairing-key"),
                None,
            )
            .await?;
        Ok(Secret::new(p.pairing_key))
    }

    pub async fn steps(&self, id: uuid::Uuid, host: &str) -> Result<Vec<StepView>, ClientError> {
        self.call(
            "GET",
            &format!("/v1/instances/{id}/hosts/{host}/steps"),
            None,
        )
        .await
    }

    pub async fn health(
        &self,
        id: uuid::Uuid,
        host: &str,
    ) -> Result<Vec<HealthResultView>, ClientError> {
        self.call(
            "GET",
            &format!("/v1/instances/{id}/hosts/{host}/health"),
            None,
        )
        .await
    }

    pub async fn result(
        &self,
        id: uuid::Uuid,
        host: &str,
        group: &str,
        index: u32,
    ) -> Result<StepResult, ClientError> {
        self.call(
            "GET",
            &format!("/v1/instances/{id}/results/{host}/{group}/{index}"),
            None,
        )
        .await
    }

    pub async fn open_recovery_requests(
        &self,
        id: uuid::Uuid,
    ) -> Result<Vec<RecoveryRequest>, ClientError> {
        self.call(
            "GET",
            &format!("/v1/recovery-requests?status=open&instance={id}"),
            None,
        )
        .await
    }

    pub async fn resolve_recovery_request(&self, request: &str) -> Result<(), ClientError> {
        let _: serde_json::Value = self
            .call(
                "POST",
                &format!("/v1/recovery-requests/{request}/resolve"),
                None,
            )
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::with_host;

    #[test]
    fn the_guest_url_keeps_scheme_port_and_path() {
        let cases = [
            ("https://127.0.0.1:8443", "https://10.77.0.1:8443"),
            ("https://localhost:8443/", "https://10.77.0.1:8443/"),
            ("http://[::1]:80/x", "http://10.77.0.1:80/x"),
            ("https://svc.example", "https://10.77.0.1"),
        ];
        for (from, to) in cases {
            assert_eq!(with_host(from, "10.77.0.1").expect(from), to);
        }
        assert!(with_host("ftp://x", "10.0.0.1").is_err());
        assert!(with_host("https://x:port", "10.0.0.1").is_err());
    }
}
