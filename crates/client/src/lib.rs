//! The operator API client of `ibkit serve`, as `ibkit deploy` and the tests
//! use it.
//!
//! There is one generic call, [`OperatorClient::call`], typed by an
//! [`Endpoint`] of `ibkit_api::operator::endpoint`: method, path, query,
//! body and answer all come from the endpoint the service is built from, so
//! the client cannot ask for a route or decode an answer the service does
//! not have. The named methods below are shorthands for the usual calls.
//! Unknown answer fields are ignored, so a newer service still works. The
//! connection is pinned to the service's certificate when its SHA-256 is
//! given, as the agent does.

use std::path::Path;
use std::time::Duration;

use ibkit_api::InstanceSpec;
use ibkit_api::operator::endpoint::{self as ep, Endpoint, RequestBody as _};
use ibkit_api::operator::{
    BillingPublicKey, CreateInstanceQuery, DeploymentStored, DeploymentTimeline, GroupName,
    HealthResultView, HostName, HostPairing, InstanceBilling, InstanceCreated, InstanceDetail,
    InstanceId, InstanceStatusView, InstanceSummary, InstanceUsage, NoBody, NoQuery,
    PairingKeyQuery, RecoveryQuery, RecoveryRequest, RecoveryRequestId, RecoveryResolved,
    RecoveryStatus, Redeployed, StepResult, StepView,
};
use ibkit_api::wire::ServiceInfo;
pub use ibkit_support::secret::Secret;

/// Why a call failed.
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
    /// 404: the service does not know the instance, host or request (any more).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ClientError::Status { status: 404, .. })
    }

    /// The HTTP status of a refused call.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            ClientError::Unauthorized(_) => Some(401),
            _ => None,
        }
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

/// Answers larger than this are refused (a step listing with its logs is
/// the largest: 16 MiB logs per step are cut by the agent long before).
const MAX_ANSWER_BYTES: usize = 256 << 20;

/// The operator API client.
#[derive(Debug, Clone)]
pub struct OperatorClient {
    http: reqwest::Client,
    base: String,
    token: Secret,
}

impl OperatorClient {
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
            .user_agent(concat!("ibkit-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Setup(format!("{e:#}")))?;
        Ok(OperatorClient {
            http,
            base: endpoint.url.trim_end_matches('/').to_string(),
            token: endpoint.operator_token.clone(),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Calls endpoint `E`: its method and path with `params` filled in,
    /// `query`, and `body` as JSON unless `E` takes none.
    pub async fn call<E: Endpoint>(
        &self,
        params: &E::Params,
        query: &E::Query,
        body: &E::Body,
    ) -> Result<E::Answer, ClientError> {
        let path = ep::fill_path::<E>(params);
        let url = format!("{}{path}", self.base);
        let method = E::METHOD.as_str();
        let m = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        let mut req = self
            .http
            .request(m, &url)
            .bearer_auth(self.token.expose())
            .query(query);
        if E::Body::absent().is_none() {
            req = req.json(body);
        }
        let unreachable = |e: reqwest::Error| ClientError::Unreachable {
            url: self.base.clone(),
            why: format!("{e:#}"),
        };
        let mut resp = req.send().await.map_err(unreachable)?;
        let status = resp.status().as_u16();
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(unreachable)? {
            if bytes.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(ClientError::Decode {
                    path,
                    why: format!("the answer is over {} MiB", MAX_ANSWER_BYTES >> 20),
                });
            }
            bytes.extend_from_slice(&chunk);
        }
        if !(200..300).contains(&status) {
            let message = serde_json::from_slice::<ibkit_api::wire::ErrorBody>(&bytes)
                .map(|b| b.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).chars().take(300).collect());
            if status == 401 {
                return Err(ClientError::Unauthorized(message));
            }
            return Err(ClientError::Status {
                method,
                path,
                status,
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            path,
            why: e.to_string(),
        })
    }

    pub async fn service_info(&self) -> Result<ServiceInfo, ClientError> {
        self.call::<ep::GetService>(&ep::NoParams {}, &NoQuery {}, &NoBody)
            .await
    }

    pub async fn list_instances(&self) -> Result<Vec<InstanceSummary>, ClientError> {
        self.call::<ep::ListInstances>(&ep::NoParams {}, &NoQuery {}, &NoBody)
            .await
    }

    pub async fn create_instance(
        &self,
        spec: &InstanceSpec,
        query: &CreateInstanceQuery,
    ) -> Result<InstanceCreated, ClientError> {
        self.call::<ep::CreateInstance>(&ep::NoParams {}, query, spec)
            .await
    }

    pub async fn update_instance(
        &self,
        id: &InstanceId,
        spec: &InstanceSpec,
    ) -> Result<InstanceStatusView, ClientError> {
        self.call::<ep::UpdateInstance>(&instance(id), &NoQuery {}, spec)
            .await
    }

    pub async fn instance(&self, id: &InstanceId) -> Result<InstanceDetail, ClientError> {
        self.call::<ep::GetInstance>(&instance(id), &NoQuery {}, &NoBody)
            .await
    }

    pub async fn delete_instance(
        &self,
        id: &InstanceId,
    ) -> Result<InstanceStatusView, ClientError> {
        self.call::<ep::DeleteInstance>(&instance(id), &NoQuery {}, &NoBody)
            .await
    }

    pub async fn redeploy(&self, id: &InstanceId) -> Result<Redeployed, ClientError> {
        self.call::<ep::Redeploy>(&instance(id), &NoQuery {}, &NoBody)
            .await
    }

    /// A new pairing key for a host whose VM is recreated: revokes the old
    /// credential and resets the host's steps (`once` steps that succeeded
    /// are skipped).
    pub async fn rekey(
        &self,
        id: &InstanceId,
        host: &HostName,
        query: &PairingKeyQuery,
    ) -> Result<HostPairing, ClientError> {
        self.call::<ep::Rekey>(&host_path(id, host), query, &NoBody)
            .await
    }

    pub async fn steps(
        &self,
        id: &InstanceId,
        host: &HostName,
    ) -> Result<Vec<StepView>, ClientError> {
        self.call::<ep::ListSteps>(&host_path(id, host), &NoQuery {}, &NoBody)
            .await
    }

    pub async fn health(
        &self,
        id: &InstanceId,
        host: &HostName,
    ) -> Result<Vec<HealthResultView>, ClientError> {
        self.call::<ep::HostHealthResults>(&host_path(id, host), &NoQuery {}, &NoBody)
            .await
    }

    pub async fn result(
        &self,
        id: &InstanceId,
        host: &HostName,
        group: &GroupName,
        index: u32,
    ) -> Result<StepResult, ClientError> {
        let params = ep::StepPath {
            id: id.clone(),
            host: host.clone(),
            group: group.clone(),
            index,
        };
        self.call::<ep::GetStepResult>(&params, &NoQuery {}, &NoBody)
            .await
    }

    pub async fn recovery_requests(
        &self,
        query: &RecoveryQuery,
    ) -> Result<Vec<RecoveryRequest>, ClientError> {
        self.call::<ep::ListRecoveryRequests>(&ep::NoParams {}, query, &NoBody)
            .await
    }

    /// The open recovery requests of one instance.
    pub async fn open_recovery_requests(
        &self,
        id: &InstanceId,
    ) -> Result<Vec<RecoveryRequest>, ClientError> {
        self.recovery_requests(&RecoveryQuery {
            status: Some(RecoveryStatus::Open),
            instance: Some(id.clone()),
        })
        .await
    }

    pub async fn resolve_recovery_request(
        &self,
        request: &RecoveryRequestId,
    ) -> Result<RecoveryResolved, ClientError> {
        let params = ep::RecoveryPath {
            id: request.clone(),
        };
        self.call::<ep::ResolveRecoveryRequest>(&params, &NoQuery {}, &NoBody)
            .await
    }

    /// The billing emulator's public key (secure push encryption and
    /// answer signatures).
    pub async fn billing_public_key(&self) -> Result<BillingPublicKey, ClientError> {
        self.call::<ep::GetBillingPublicKey>(&ep::NoParams {}, &NoQuery {}, &NoBody)
            .await
    }

    /// The instance's billing service token and current access keys
    /// (asking may rotate them); 404 when it has no billing.
    pub async fn instance_billing(&self, id: &InstanceId) -> Result<InstanceBilling, ClientError> {
        self.call::<ep::GetInstanceBilling>(&instance(id), &NoQuery {}, &NoBody)
            .await
    }

    /// The usage counted for the instance, per option and UTC day.
    pub async fn instance_usage(&self, id: &InstanceId) -> Result<InstanceUsage, ClientError> {
        self.call::<ep::GetInstanceUsage>(&instance(id), &NoQuery {}, &NoBody)
            .await
    }

    /// Publishes the deployment controller's timeline of the instance.
    pub async fn put_deployment(
        &self,
        id: &InstanceId,
        timeline: &DeploymentTimeline,
    ) -> Result<DeploymentStored, ClientError> {
        self.call::<ep::PutDeployment>(&instance(id), &NoQuery {}, timeline)
            .await
    }

    /// The instance's last published deployment timeline (404 when none).
    pub async fn deployment(&self, id: &InstanceId) -> Result<DeploymentTimeline, ClientError> {
        self.call::<ep::GetDeployment>(&instance(id), &NoQuery {}, &NoBody)
            .await
    }
}

fn instance(id: &InstanceId) -> ep::InstancePath {
    ep::InstancePath { id: id.clone() }
}

fn host_path(id: &InstanceId, host: &HostName) -> ep::HostPath {
    ep::HostPath {
        id: id.clone(),
        host: host.clone(),
    }
}
