//! A thin typed client for the four OpenStack APIs the backend uses:
//! Keystone v3 (a project-scoped token and its service catalog), Nova
//! (servers, flavors, console output; microversion [`NOVA_MICROVERSION`]),
//! Glance v2 (images: find, create, streamed upload) and Neutron v2.0
//! (networks, subnets, routers, ports, tags).
//!
//! Every failure names the service, the method and the path, and carries
//! the cloud's own message (`badRequest.message`, `NeutronError.message`,
//! Keystone's `error.message`, Glance's text); none carries a password,
//! an application credential secret or a token. Answers are read with a
//! size cap: the cloud is trusted with our VMs, not with our memory.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::config::{Auth, CloudConfig, NameOrId};
use crate::userdata::Secret;

/// Nova's microversion: 2.57 (Queens) has everything used here (`networks`
/// with ports, `config_drive`, `user_data`, metadata, console output) and
/// drops `personality`. Newer clouds accept it; older ones are refused by
/// Nova with a message naming the version.
pub const NOVA_MICROVERSION: &str = "2.57";
/// Tokens are renewed after this long even if the cloud did not refuse
/// them yet (Keystone's default lifetime is one hour).
const TOKEN_RENEW_AFTER: Duration = Duration::from_secs(45 * 60);
/// The most an answer may hold (a flavor or server list of a big project
/// fits easily).
const MAX_ANSWER_BYTES: usize = 32 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Compute,
    Image,
    Network,
}

impl Service {
    fn catalog_type(self) -> &'static str {
        match self {
            Service::Compute => "compute",
            Service::Image => "image",
            Service::Network => "network",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Service::Compute => "Nova",
            Service::Image => "Glance",
            Service::Network => "Neutron",
        }
    }

    /// The version prefix catalogs usually leave out of the URL.
    fn version_suffix(self) -> &'static str {
        match self {
            Service::Compute => "",
            Service::Image => "/v2",
            Service::Network => "/v2.0",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cloud {cloud}: {why}")]
    Setup { cloud: String, why: String },
    #[error("Keystone refused the credentials of cloud {cloud} at {url}: HTTP {status}: {message}")]
    Auth {
        cloud: String,
        url: String,
        status: u16,
        message: String,
    },
    #[error(
        "cloud {cloud}: the service catalog has no {service} endpoint for interface {interface}{region}"
    )]
    NoEndpoint {
        cloud: String,
        service: &'static str,
        interface: &'static str,
        region: String,
    },
    #[error("{service} {method} {path}: HTTP {status}: {message}")]
    Http {
        service: &'static str,
        method: String,
        path: String,
        status: u16,
        message: String,
    },
    #[error("{service} {method} {path}: {why}")]
    Transport {
        service: &'static str,
        method: String,
        path: String,
        why: String,
    },
    #[error("{service} {method} {path}: unexpected answer: {why}")]
    Decode {
        service: &'static str,
        method: String,
        path: String,
        why: String,
    },
}

impl ApiError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Http { status, .. } | ApiError::Auth { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// The cloud's own message, for mapping (quota, no valid host).
    pub fn message(&self) -> Option<&str> {
        match self {
            ApiError::Http { message, .. } | ApiError::Auth { message, .. } => Some(message),
            _ => None,
        }
    }
}

struct Session {
    token: Secret,
    project_id: String,
    /// Base URL per service (catalog URL + version prefix).
    endpoints: BTreeMap<&'static str, String>,
    obtained: Instant,
}

/// One cloud, authenticated lazily and again when Keystone refuses the
/// token.
pub struct CloudApi {
    http: reqwest::Client,
    cloud: CloudConfig,
    session: tokio::sync::Mutex<Option<std::sync::Arc<Session>>>,
}

impl std::fmt::Debug for CloudApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudApi")
            .field("cloud", &self.cloud.name)
            .finish()
    }
}

impl CloudApi {
    pub fn new(cloud: CloudConfig) -> Result<Self, ApiError> {
        let setup = |why: String| ApiError::Setup {
            cloud: cloud.name.clone(),
            why,
        };
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(120))
            .user_agent(concat!("ibkit/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &cloud.cacert {
            let pem = std::fs::read(ca)
                .map_err(|e| setup(format!("cannot read cacert {}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| setup(format!("cacert {}: {e}", ca.display())))?;
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        if !cloud.verify {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        let http = builder
            .build()
            .map_err(|e| setup(format!("cannot build the HTTP client: {e}")))?;
        Ok(CloudApi {
            http,
            cloud,
            session: tokio::sync::Mutex::new(None),
        })
    }

    pub fn cloud(&self) -> &CloudConfig {
        &self.cloud
    }

    /// The project the token is scoped to.
    pub async fn project_id(&self) -> Result<String, ApiError> {
        Ok(self.session(false).await?.project_id.clone())
    }

    async fn session(&self, renew: bool) -> Result<std::sync::Arc<Session>, ApiError> {
        let mut guard = self.session.lock().await;
        if let Some(s) = guard.as_ref()
            && !renew
            && s.obtained.elapsed() < TOKEN_RENEW_AFTER
        {
            return Ok(s.clone());
        }
        let s = std::sync::Arc::new(self.authenticate().await?);
        *guard = Some(s.clone());
        Ok(s)
    }

    fn tokens_url(&self) -> String {
        let base = self.cloud.auth_url().trim_end_matches('/');
        if base.ends_with("/v3") {
            format!("{base}/auth/tokens")
        } else {
            format!("{base}/v3/auth/tokens")
        }
    }

    async fn authenticate(&self) -> Result<Session, ApiError> {
        let url = self.tokens_url();
        let cloud = &self.cloud.name;
        let body = auth_body(&self.cloud.auth);
        let fail = |why: String| ApiError::Setup {
            cloud: cloud.clone(),
            why: format!("Keystone at {url}: {why}"),
        };
        let resp = self
            .http
            .post(&url)
            .json(&body)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(|e| fail(transport_why(&e)))?;
        let status = resp.status();
        let token = resp
            .headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .map(Secret::new);
        let bytes = read_capped(resp).await.map_err(fail)?;
        if !status.is_success() {
            return Err(ApiError::Auth {
                cloud: cloud.clone(),
                url,
                status: status.as_u16(),
                message: error_message(&bytes),
            });
        }
        let token = token.ok_or_else(|| fail("no X-Subject-Token in the answer".into()))?;
        #[derive(Deserialize)]
        struct Answer {
            token: TokenBody,
        }
        #[derive(Deserialize)]
        struct TokenBody {
            project: Option<IdOnly>,
            #[serde(default)]
            catalog: Vec<CatalogEntry>,
        }
        #[derive(Deserialize)]
        struct IdOnly {
            id: String,
        }
        #[derive(Deserialize)]
        struct CatalogEntry {
            #[serde(rename = "type")]
            kind: String,
            #[serde(default)]
            endpoints: Vec<Endpoint>,
        }
        #[derive(Deserialize)]
        struct Endpoint {
            interface: String,
            url: String,
            region: Option<String>,
            region_id: Option<String>,
        }
        let answer: Answer = serde_json::from_slice(&bytes)
            .map_err(|e| fail(format!("the token answer is not what Keystone sends: {e}")))?;
        let project_id = answer.token.project.map(|p| p.id).ok_or_else(|| {
            fail(
                "the token is not scoped to a project (set auth.project_name or project_id)".into(),
            )
        })?;
        let interface = self.cloud.interface.as_str();
        let region = self.cloud.region.as_deref();
        let mut endpoints = BTreeMap::new();
        for service in [Service::Compute, Service::Image, Service::Network] {
            let found = answer
                .token
                .catalog
                .iter()
                .filter(|c| c.kind == service.catalog_type())
                .flat_map(|c| c.endpoints.iter())
                .find(|e| {
                    e.interface == interface
                        && region.is_none_or(|r| {
                            e.region.as_deref() == Some(r) || e.region_id.as_deref() == Some(r)
                        })
                });
            if let Some(e) = found {
                let base = e.url.trim_end_matches('/');
                let suffix = service.version_suffix();
                let url = if suffix.is_empty() || base.ends_with(suffix) {
                    base.to_string()
                } else {
                    format!("{base}{suffix}")
                };
                endpoints.insert(service.catalog_type(), url);
            }
        }
        tracing::debug!(cloud = %cloud, project = %project_id, "authenticated");
        Ok(Session {
            token,
            project_id,
            endpoints,
            obtained: Instant::now(),
        })
    }

    fn endpoint(&self, session: &Session, service: Service) -> Result<String, ApiError> {
        session
            .endpoints
            .get(service.catalog_type())
            .cloned()
            .ok_or_else(|| ApiError::NoEndpoint {
                cloud: self.cloud.name.clone(),
                service: service.name(),
                interface: self.cloud.interface.as_str(),
                region: self
                    .cloud
                    .region
                    .as_deref()
                    .map(|r| format!(" in region {r}"))
                    .unwrap_or_default(),
            })
    }

    /// One JSON call; `Ok(None)` for an empty answer (204). A refused token
    /// is renewed once.
    pub async fn call(
        &self,
        service: Service,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Option<Value>, ApiError> {
        let mut renewed = false;
        loop {
            let session = self.session(renewed).await?;
            let url = format!("{}{path}", self.endpoint(&session, service)?);
            let mut req = self
                .http
                .request(method.clone(), &url)
                .header("X-Auth-Token", session.token.expose())
                .header("Accept", "application/json")
                .timeout(Duration::from_secs(120));
            if service == Service::Compute {
                req = req.header(
                    "OpenStack-API-Version",
                    format!("compute {NOVA_MICROVERSION}"),
                );
                req = req.header("X-OpenStack-Nova-API-Version", NOVA_MICROVERSION);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let ctx = |why: String| ApiError::Transport {
                service: service.name(),
                method: method.to_string(),
                path: path.to_string(),
                why,
            };
            let resp = req.send().await.map_err(|e| ctx(transport_why(&e)))?;
            let status = resp.status();
            let bytes = read_capped(resp).await.map_err(ctx)?;
            if status.as_u16() == 401 && !renewed {
                renewed = true;
                continue;
            }
            if !status.is_success() {
                return Err(ApiError::Http {
                    service: service.name(),
                    method: method.to_string(),
                    path: path.to_string(),
                    status: status.as_u16(),
                    message: error_message(&bytes),
                });
            }
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Ok(None);
            }
            return serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ApiError::Decode {
                    service: service.name(),
                    method: method.to_string(),
                    path: path.to_string(),
                    why: format!("not JSON: {e}"),
                });
        }
    }

    /// A call whose answer holds `key`, decoded as `T`.
    pub async fn get_as<T: DeserializeOwned>(
        &self,
        service: Service,
        path: &str,
        key: &str,
    ) -> Result<T, ApiError> {
        let v = self.call(service, Method::GET, path, None).await?;
        decode(service, "GET", path, v, key)
    }

    /// POST with a JSON body; the answer's `key`, decoded as `T`.
    pub async fn post_as<T: DeserializeOwned>(
        &self,
        service: Service,
        path: &str,
        body: &Value,
        key: &str,
    ) -> Result<T, ApiError> {
        let v = self.call(service, Method::POST, path, Some(body)).await?;
        decode(service, "POST", path, v, key)
    }

    /// DELETE; a resource that is already gone is not an error.
    pub async fn delete(&self, service: Service, path: &str) -> Result<(), ApiError> {
        match self.call(service, Method::DELETE, path, None).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Streams a file into a Glance image (`PUT /v2/images/{id}/file`).
    pub async fn upload_image_file(&self, image_id: &str, file: &Path) -> Result<(), ApiError> {
        let path = format!("/images/{image_id}/file");
        let ctx = |why: String| ApiError::Transport {
            service: "Glance",
            method: "PUT".into(),
            path: path.clone(),
            why,
        };
        let f = tokio::fs::File::open(file)
            .await
            .map_err(|e| ctx(format!("cannot open {}: {e}", file.display())))?;
        let len = f
            .metadata()
            .await
            .map_err(|e| ctx(format!("{}: {e}", file.display())))?
            .len();
        let session = self.session(false).await?;
        let url = format!("{}{path}", self.endpoint(&session, Service::Image)?);
        let resp = self
            .http
            .put(&url)
            .header("X-Auth-Token", session.token.expose())
            .header("Content-Type", "application/octet-stream")
            .header("Content-Length", len)
            .body(reqwest::Body::from(f))
            // An upload of a few GiB over a slow link: no overall timeout,
            // the read timeout still catches a stalled cloud.
            .timeout(Duration::from_secs(24 * 3600))
            .send()
            .await
            .map_err(|e| ctx(transport_why(&e)))?;
        let status = resp.status();
        let bytes = read_capped(resp).await.map_err(ctx)?;
        if !status.is_success() {
            return Err(ApiError::Http {
                service: "Glance",
                method: "PUT".into(),
                path,
                status: status.as_u16(),
                message: error_message(&bytes),
            });
        }
        Ok(())
    }

    /// Follows Nova's and Neutron's `*_links` pagination: every item of a
    /// list (`key`), `path` already holding its query.
    pub async fn list_all<T: DeserializeOwned>(
        &self,
        service: Service,
        path: &str,
        key: &str,
    ) -> Result<Vec<T>, ApiError> {
        let mut out: Vec<T> = Vec::new();
        let mut next = Some(path.to_string());
        let mut pages = 0;
        while let Some(p) = next.take() {
            pages += 1;
            let v = self
                .call(service, Method::GET, &p, None)
                .await?
                .unwrap_or(Value::Null);
            let items: Vec<T> = decode(service, "GET", &p, Some(v.clone()), key)?;
            let empty = items.is_empty();
            out.extend(items);
            // Glance: {"next": "/v2/images?marker=…"}.
            if let Some(next_href) = v.get("next").and_then(Value::as_str)
                && !empty
                && pages < 1000
            {
                let rest = next_href.strip_prefix("/v2").unwrap_or(next_href);
                next = Some(rest.to_string());
                continue;
            }
            let links = v.get(format!("{key}_links")).and_then(Value::as_array);
            let marker = links
                .into_iter()
                .flatten()
                .filter(|l| l.get("rel").and_then(Value::as_str) == Some("next"))
                .find_map(|l| l.get("href").and_then(Value::as_str))
                .and_then(|href| href.split_once('?').map(|(_, q)| q.to_string()));
            if let Some(query) = marker
                && !empty
                && pages < 1000
            {
                let base = path.split_once('?').map_or(path, |(b, _)| b);
                next = Some(format!("{base}?{query}"));
            }
        }
        Ok(out)
    }
}

fn decode<T: DeserializeOwned>(
    service: Service,
    method: &str,
    path: &str,
    v: Option<Value>,
    key: &str,
) -> Result<T, ApiError> {
    let err = |why: String| ApiError::Decode {
        service: service.name(),
        method: method.to_string(),
        path: path.to_string(),
        why,
    };
    let mut v = v.ok_or_else(|| err("empty answer".into()))?;
    let inner = if key.is_empty() {
        v
    } else {
        v.get_mut(key)
            .map(Value::take)
            .ok_or_else(|| err(format!("no {key:?} in the answer")))?
    };
    serde_json::from_value(inner).map_err(|e| err(format!("{key}: {e}")))
}

fn transport_why(e: &reqwest::Error) -> String {
    // reqwest's Display stops at the outermost cause; the inner one says
    // "connection refused" or which certificate failed.
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

async fn read_capped(mut resp: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| transport_why(&e))? {
        if out.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(format!("the answer is over {MAX_ANSWER_BYTES} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// The cloud's message from an error answer: Nova's `{"badRequest":
/// {"message": …}}`, Neutron's `{"NeutronError": {"message": …}}`,
/// Keystone's `{"error": {"message": …}}`, or Glance's text/HTML.
pub fn error_message(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let direct = v.get("message").and_then(Value::as_str);
        let nested = v.as_object().and_then(|o| {
            o.values()
                .find_map(|inner| inner.get("message").and_then(Value::as_str))
        });
        if let Some(m) = direct.or(nested) {
            return clip(m);
        }
        if let Some(m) = v.get("title").and_then(Value::as_str) {
            return clip(m);
        }
    }
    let text = String::from_utf8_lossy(body);
    // Strip tags (Glance and proxies answer with HTML).
    let mut plain = String::with_capacity(text.len());
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                plain.push(' ');
            }
            c if !in_tag => plain.push(c),
            _ => {}
        }
    }
    let words: Vec<&str> = plain.split_whitespace().collect();
    if words.is_empty() {
        return "(no message)".into();
    }
    clip(&words.join(" "))
}

fn clip(s: &str) -> String {
    const MAX: usize = 500;
    let clean: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if clean.chars().count() <= MAX {
        return clean;
    }
    let mut out: String = clean.chars().take(MAX).collect();
    out.push('…');
    out
}

fn name_or_id(v: &NameOrId) -> Value {
    match v {
        NameOrId::Name(n) => json!({ "name": n }),
        NameOrId::Id(i) => json!({ "id": i }),
    }
}

/// A user or project by name needs its domain; without one, Keystone's
/// `default` domain (as most clouds.yaml files leave it out).
fn with_domain(v: &NameOrId, domain: Option<&NameOrId>) -> Value {
    let mut obj = name_or_id(v);
    if let NameOrId::Name(_) = v {
        let d = domain.map_or_else(|| json!({ "id": "default" }), name_or_id);
        obj["domain"] = d;
    }
    obj
}

/// Keystone v3's `POST /auth/tokens` body.
fn auth_body(auth: &Auth) -> Value {
    match auth {
        Auth::Password {
            user,
            user_domain,
            password,
            project,
            project_domain,
            ..
        } => {
            let mut user_obj = with_domain(user, user_domain.as_ref());
            user_obj["password"] = json!(password.expose());
            let mut body = json!({ "auth": { "identity": {
                "methods": ["password"], "password": { "user": user_obj } } } });
            if let Some(p) = project {
                body["auth"]["scope"] = json!({
                    "project": with_domain(p, project_domain.as_ref().or(user_domain.as_ref()))
                });
            }
            body
        }
        Auth::ApplicationCredential {
            id,
            name,
            user,
            user_domain,
            secret,
            ..
        } => {
            let mut cred = json!({ "secret": secret.expose() });
            if let Some(id) = id {
                cred["id"] = json!(id);
            } else {
                if let Some(n) = name {
                    cred["name"] = json!(n);
                }
                if let Some(u) = user {
                    cred["user"] = with_domain(u, user_domain.as_ref());
                }
            }
            json!({ "auth": { "identity": {
                "methods": ["application_credential"], "application_credential": cred } } })
        }
    }
}

// ---------------------------------------------------------------------------
// Answer types: only the fields the backend reads; unknown ones are ignored.

#[derive(Debug, Clone, Deserialize)]
pub struct Server {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub addresses: BTreeMap<String, Vec<ServerAddress>>,
    pub fault: Option<Fault>,
    #[serde(rename = "OS-EXT-STS:task_state", default)]
    pub task_state: Option<String>,
    #[serde(default)]
    pub created: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerAddress {
    pub addr: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Fault {
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub code: Option<u16>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Flavor {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub vcpus: u32,
    /// MiB.
    pub ram: u64,
    /// GiB; 0 means "the image's size".
    pub disk: u64,
    #[serde(rename = "OS-FLV-DISABLED:disabled", default)]
    pub disabled: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Image {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    /// Custom properties are top-level keys in Glance v2.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Port {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub network_id: String,
    #[serde(default)]
    pub device_id: String,
    #[serde(default)]
    pub device_owner: String,
    #[serde(default)]
    pub fixed_ips: Vec<FixedIp>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub created_at: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FixedIp {
    #[serde(default)]
    pub subnet_id: String,
    pub ip_address: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Network {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(rename = "router:external", default)]
    pub external: bool,
    #[serde(default)]
    pub subnets: Vec<String>,
    #[serde(default)]
    pub created_at: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Subnet {
    pub id: String,
    #[serde(default)]
    pub network_id: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Router {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub created_at: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SecurityGroup {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub security_group_rules: Vec<SecurityGroupRule>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SecurityGroupRule {
    #[serde(default)]
    pub direction: String,
    #[serde(default)]
    pub ethertype: String,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub port_range_min: Option<u32>,
    #[serde(default)]
    pub remote_ip_prefix: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FloatingIp {
    pub id: String,
    #[serde(default)]
    pub floating_ip_address: String,
    #[serde(default)]
    pub port_id: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub created_at: Option<String>,
}

/// A Neutron resource ibkit tags: where it is listed and deleted, and what
/// `gc` reads of it. One listing and one deletion serve every kind.
pub trait Tagged: DeserializeOwned {
    /// The path below `/v2.0` (`security-groups`).
    const PATH: &'static str;
    /// The list answer's key (`security_groups`).
    const KEY: &'static str;
    fn id(&self) -> &str;
    fn tags(&self) -> &[String];
    fn created_at(&self) -> Option<&str>;
    /// How `gc` names it.
    fn label(&self) -> String;
}

macro_rules! tagged {
    ($t:ty, $path:literal, $key:literal, |$s:ident| $label:expr) => {
        impl Tagged for $t {
            const PATH: &'static str = $path;
            const KEY: &'static str = $key;
            fn id(&self) -> &str {
                &self.id
            }
            fn tags(&self) -> &[String] {
                &self.tags
            }
            fn created_at(&self) -> Option<&str> {
                self.created_at.as_deref()
            }
            fn label(&self) -> String {
                let $s = self;
                $label
            }
        }
    };
}

tagged!(FloatingIp, "floatingips", "floatingips", |f| format!(
    "{} ({})",
    f.floating_ip_address, f.id
));
tagged!(Port, "ports", "ports", |p| format!("{} ({})", p.name, p.id));
tagged!(SecurityGroup, "security-groups", "security_groups", |g| {
    format!("{} ({})", g.name, g.id)
});
tagged!(Router, "routers", "routers", |r| format!(
    "{} ({})",
    r.name, r.id
));
tagged!(Network, "networks", "networks", |n| format!(
    "{} ({})",
    n.name, n.id
));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_from_each_service() {
        assert_eq!(
            error_message(br#"{"badRequest": {"message": "Invalid flavorRef", "code": 400}}"#),
            "Invalid flavorRef"
        );
        assert_eq!(
            error_message(
                br#"{"NeutronError": {"type": "OverQuota", "message": "Quota exceeded for resources: ['port'].", "detail": ""}}"#
            ),
            "Quota exceeded for resources: ['port']."
        );
        assert_eq!(
            error_message(
                br#"{"error": {"code": 401, "message": "The request you have made requires authentication.", "title": "Unauthorized"}}"#
            ),
            "The request you have made requires authentication."
        );
        assert_eq!(
            error_message(
                b"<html>\n <head>\n  <title>409 Conflict</title>\n </head>\n <body>\n  <h1>409 Conflict</h1>\n  Image is busy\n </body>\n</html>"
            ),
            "409 Conflict 409 Conflict Image is busy"
        );
        assert_eq!(error_message(b""), "(no message)");
        let long = "x".repeat(2000);
        assert!(error_message(long.as_bytes()).chars().count() <= 501);
        assert!(!error_message(b"a\x1b[31mb").contains('\x1b'));
    }

    #[test]
    fn auth_bodies() {
        let pw = Auth::Password {
            auth_url: "http://k:5000".into(),
            user: NameOrId::Name("demo".into()),
            user_domain: None,
            password: Secret::new("pw"),
            project: Some(NameOrId::Id("p1".into())),
            project_domain: None,
        };
        let b = auth_body(&pw);
        assert_eq!(
            b["auth"]["identity"]["password"]["user"]["domain"]["id"],
            "default"
        );
        assert_eq!(b["auth"]["identity"]["password"]["user"]["password"], "pw");
        assert_eq!(b["auth"]["scope"]["project"], json!({"id": "p1"}));
        let ac = Auth::ApplicationCredential {
            auth_url: "http://k:5000".into(),
            id: None,
            name: Some("ci".into()),
            user: Some(NameOrId::Id("u1".into())),
            user_domain: None,
            secret: Secret::new("s"),
        };
        let b = auth_body(&ac);
        let cred = &b["auth"]["identity"]["application_credential"];
        assert_eq!(cred["name"], "ci");
        assert_eq!(cred["user"], json!({"id": "u1"}));
        assert!(b["auth"].get("scope").is_none());
    }
}
