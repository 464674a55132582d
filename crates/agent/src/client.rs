//! HTTP client of the service's agent API, with optional certificate
//! pinning.

use std::time::Duration;

use ibkit_api::wire::{
    BillingToken, ErrorBody, HealthReport, Heartbeat, PairRequest, PairResponse, Report,
    WorkResponse,
};

/// Extra time over the long-poll wait before the client gives up.
const LONG_POLL_SLACK: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the service is unreachable: {0}")]
    Unreachable(String),
    #[error("the service refused the credential (401: {0}); was the host re-keyed or deleted?")]
    Unauthorized(String),
    #[error("the service answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("unexpected answer from the service: {0}")]
    Decode(String),
    #[error("cannot build the HTTP client: {0}")]
    Setup(String),
}

impl ApiError {
    /// Retrying the same request cannot help (4xx other than 401/408/429).
    pub fn is_permanent(&self) -> bool {
        matches!(self, ApiError::Status { status, .. }
            if (400..500).contains(status) && !matches!(status, 401 | 408 | 429))
    }

    /// The service refused the request for its size: 413, or a 4xx whose
    /// message says so.
    pub fn is_size_refusal(&self) -> bool {
        match self {
            ApiError::Status { status: 413, .. } => true,
            ApiError::Status { status, message } if (400..500).contains(status) => {
                let m = message.to_ascii_lowercase();
                ["too large", "length limit", "too big", "exceeds"]
                    .iter()
                    .any(|w| m.contains(w))
            }
            _ => false,
        }
    }

    /// The connection broke while the request body was being sent: what a
    /// service that refuses a large body early (413) often looks like, as
    /// it closes the connection before the client reads the answer.
    pub fn is_cut_while_sending(&self) -> bool {
        match self {
            ApiError::Unreachable(m) => {
                let m = m.to_ascii_lowercase();
                [
                    "writing a body",
                    "broken pipe",
                    "connection reset",
                    "reset by peer",
                ]
                .iter()
                .any(|w| m.contains(w))
            }
            _ => false,
        }
    }

    /// 409: the service does not (or no longer) know what the request is
    /// about.
    pub fn is_conflict(&self) -> bool {
        matches!(self, ApiError::Status { status: 409, .. })
    }
}

/// The verifier lives in `ibkit-api` so `ibkit deploy` pins the same way.
pub use ibkit_api::pin::PinnedCertVerifier;

/// A reqwest client builder that accepts only the pinned certificate.
pub fn pinned_builder(pin: [u8; 32]) -> Result<reqwest::ClientBuilder, ApiError> {
    let tls = ibkit_api::pin::pinned_client_config(pin).map_err(ApiError::Setup)?;
    Ok(reqwest::Client::builder().tls_backend_preconfigured(tls))
}

/// The service's agent API.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    credential: Option<String>,
}

impl Api {
    pub fn new(server_url: &str, pin: Option<[u8; 32]>) -> Result<Api, ApiError> {
        let builder = match pin {
            Some(pin) => pinned_builder(pin)?,
            None => reqwest::Client::builder(),
        };
        let http = builder
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("ibkit-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ApiError::Setup(format!("{e:#}")))?;
        Ok(Api {
            http,
            base: server_url.trim_end_matches('/').to_string(),
            credential: None,
        })
    }

    pub fn with_credential(mut self, credential: String) -> Api {
        self.credential = Some(credential);
        self
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.base))
            .timeout(Duration::from_secs(30));
        if let Some(c) = &self.credential {
            rb = rb.bearer_auth(c);
        }
        rb
    }

    async fn send(rb: reqwest::RequestBuilder) -> Result<reqwest::Response, ApiError> {
        let resp = rb.send().await.map_err(|e| {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                src = s.source();
            }
            ApiError::Unreachable(msg)
        })?;
        let status = resp.status().as_u16();
        if resp.status().is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<ErrorBody>(&text)
            .map(|b| b.error)
            .unwrap_or(text);
        if status == 401 {
            return Err(ApiError::Unauthorized(message));
        }
        if status >= 500 {
            return Err(ApiError::Unreachable(format!("{status}: {message}")));
        }
        Err(ApiError::Status { status, message })
    }

    async fn json<T: serde::de::DeserializeOwned>(resp: reqwest::Response) -> Result<T, ApiError> {
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ApiError::Unreachable(e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Decode(e.to_string()))
    }

    pub async fn pair(&self, req: &PairRequest) -> Result<PairResponse, ApiError> {
        let resp = Self::send(
            self.request(reqwest::Method::POST, "/v1/agent/pair")
                .json(req),
        )
        .await?;
        Self::json(resp).await
    }

    /// Long-polls for work; `wait` is how long the service may hold it.
    pub async fn work(&self, config_rev: &str, wait: Duration) -> Result<WorkResponse, ApiError> {
        let path = format!(
            "/v1/agent/work?wait_ms={}&config_rev={}",
            wait.as_millis(),
            encode_query(config_rev)
        );
        let rb = self
            .request(reqwest::Method::GET, &path)
            .timeout(wait + LONG_POLL_SLACK);
        Self::json(Self::send(rb).await?).await
    }

    /// Posts a report; returns whether the service applied it (false: it
    /// had it already).
    pub async fn report(&self, report: &Report) -> Result<bool, ApiError> {
        let body = serde_json::to_vec(report).map_err(|e| ApiError::Decode(e.to_string()))?;
        self.report_bytes(body).await
    }

    /// [`Api::report`] of a report already serialized.
    pub async fn report_bytes(&self, body: Vec<u8>) -> Result<bool, ApiError> {
        #[derive(serde::Deserialize)]
        struct Ack {
            #[serde(default)]
            applied: bool,
        }
        let rb = self
            .request(reqwest::Method::POST, "/v1/agent/reports")
            .timeout(Duration::from_secs(120))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let resp = Self::send(rb).await?;
        Ok(Self::json::<Ack>(resp)
            .await
            .map(|a| a.applied)
            .unwrap_or(true))
    }

    pub async fn heartbeat(&self, hb: &Heartbeat) -> Result<(), ApiError> {
        Self::send(
            self.request(reqwest::Method::POST, "/v1/agent/heartbeat")
                .json(hb),
        )
        .await?;
        Ok(())
    }

    /// The instance's marketplace API key (`GET /v1/agent/billing-token`);
    /// 404: the instance has no billing. A body that does not decode is
    /// reported without serde's excerpt of it: it may hold the key.
    pub async fn billing_token(&self) -> Result<BillingToken, ApiError> {
        let resp =
            Self::send(self.request(reqwest::Method::GET, "/v1/agent/billing-token")).await?;
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ApiError::Unreachable(e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::Decode(format!(
                "the billing token answer is not a BillingToken ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ))
        })
    }

    pub async fn health(&self, report: &HealthReport) -> Result<(), ApiError> {
        Self::send(
            self.request(reqwest::Method::POST, "/v1/agent/health")
                .json(report),
        )
        .await?;
        Ok(())
    }
}

fn encode_query(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
