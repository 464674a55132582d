//! An in-process `ibkit serve` on loopback with real TLS and SQLite, and a
//! raw-HTTP fake agent.

#![allow(dead_code)]

pub mod attack;

use std::path::Path;
use std::time::Duration;

use ibkit_api::operator::{CreateInstanceQuery, HostName, InstanceId};
use ibkit_client::{OperatorClient, ServiceEndpoint};
use ibkit_server::{ServeConfig, Server};
use serde_json::{Value, json};

pub struct Svc {
    pub server: Option<Server>,
    pub url: String,
    pub token: String,
    pub client: reqwest::Client,
    pub cfg: ServeConfig,
}

pub fn config(state: &Path) -> ServeConfig {
    let mut cfg = ServeConfig::new(state);
    cfg.listen = "127.0.0.1:0".parse().expect("addr");
    cfg.heartbeat_interval = Duration::from_millis(500);
    cfg.agent_timeout = Duration::from_secs(60);
    cfg.health_timeout = Duration::from_secs(60);
    cfg.monitor_interval = Duration::from_millis(100);
    cfg.agent_binary = Some(state.join("no-agent-binary"));
    cfg
}

impl Svc {
    pub async fn start(cfg: ServeConfig) -> Svc {
        let server = Server::start(cfg.clone()).await.expect("server starts");
        let cert = std::fs::read(cfg.state_dir.join("tls/cert.pem")).expect("cert");
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&cert).expect("pem"))
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        let token = std::fs::read_to_string(cfg.state_dir.join("operator-token"))
            .expect("token")
            .trim()
            .to_string();
        Svc {
            url: server.url.clone(),
            server: Some(server),
            token,
            client,
            cfg,
        }
    }

    /// Stops and starts again on the same state dir (a new port).
    pub async fn restart(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
        let fresh = Svc::start(self.cfg.clone()).await;
        *self = fresh;
    }

    pub async fn req(
        &self,
        method: &str,
        path: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut rb = self.client.request(m, format!("{}{path}", self.url));
        if let Some(b) = bearer {
            rb = rb.bearer_auth(b);
        }
        if let Some(body) = body {
            rb = rb.json(body);
        }
        let r = rb.send().await.expect("request");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn op(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        self.req(method, path, Some(&self.token), body).await
    }

    /// The typed operator client `ibkit deploy` uses (`ibkit-client`),
    /// pinned like it, at `self.url` (the public URL in endpoint.json may
    /// point elsewhere).
    pub fn operator(&self) -> OperatorClient {
        let mut endpoint =
            ServiceEndpoint::from_serve_state(&self.cfg.state_dir).expect("endpoint.json");
        endpoint.url = self.url.clone();
        OperatorClient::new(&endpoint).expect("operator client")
    }

    /// Creates an instance through the typed client; (id, [(host, key)]).
    pub async fn create(&self, spec: &Value) -> (String, Vec<(String, String)>) {
        let spec = serde_json::from_value(spec.clone()).expect("an instance spec");
        let created = self
            .operator()
            .create_instance(&spec, &CreateInstanceQuery::default())
            .await
            .expect("create");
        let keys = created
            .hosts
            .into_iter()
            .map(|h| (h.name.to_string(), h.pairing_key))
            .collect();
        (created.id.to_string(), keys)
    }

    /// The instance as the typed client decodes it, as JSON for the asserts.
    pub async fn instance(&self, id: &str) -> Value {
        let id = InstanceId::parse(id).expect("instance id");
        let detail = self.operator().instance(&id).await.expect("instance");
        serde_json::to_value(detail).expect("json")
    }

    pub async fn step(&self, id: &str, host: &str, group: &str, index: u64) -> Value {
        let id = InstanceId::parse(id).expect("instance id");
        let host = HostName::parse(host).expect("host name");
        let steps = self.operator().steps(&id, &host).await.expect("steps");
        steps
            .into_iter()
            .map(|s| serde_json::to_value(s).expect("json"))
            .find(|s| s["group"] == group && s["index"] == index)
            .unwrap_or_else(|| panic!("no step {host}/{group}/{index}"))
    }

    /// Open recovery requests of an instance.
    pub async fn recovery(&self, id: &str) -> Vec<Value> {
        let id = InstanceId::parse(id).expect("instance id");
        let open = self
            .operator()
            .open_recovery_requests(&id)
            .await
            .expect("recovery requests");
        open.into_iter()
            .map(|r| serde_json::to_value(r).expect("json"))
            .collect()
    }

    pub async fn pair(&self, id: &str, keys: &[(String, String)], host: &str) -> Agent {
        let key = &keys.iter().find(|(h, _)| h == host).expect("host").1;
        let (status, body) = self
            .req(
                "POST",
                "/v1/agent/pair",
                None,
                Some(&json!({"instance": id, "host": host, "pairing_key": key, "agent_version": "test", "protocol": ibkit_api::PROTOCOL_VERSION})),
            )
            .await;
        assert_eq!(status, 200, "pair: {body}");
        Agent {
            credential: body["credential"].as_str().expect("credential").to_string(),
            host: host.to_string(),
            n: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

/// A fake agent speaking raw HTTP.
pub struct Agent {
    pub credential: String,
    pub host: String,
    n: std::sync::atomic::AtomicU64,
}

impl Agent {
    /// An agent whose credential is already known (e.g. written into a
    /// database by hand).
    pub fn with_credential(credential: &str, host: &str) -> Agent {
        Agent {
            credential: credential.to_string(),
            host: host.to_string(),
            n: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub async fn work(&self, svc: &Svc, wait_ms: u64, rev: Option<&str>) -> (u16, Value) {
        let q = match rev {
            Some(r) => format!("/v1/agent/work?wait_ms={wait_ms}&config_rev={r}"),
            None => format!("/v1/agent/work?wait_ms={wait_ms}"),
        };
        svc.req("GET", &q, Some(&self.credential), None).await
    }

    /// The work now (must be some).
    pub async fn take(&self, svc: &Svc) -> Value {
        let (status, body) = self.work(svc, 0, None).await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body["work"].is_object(),
            "{} expected work: {body}",
            self.host
        );
        body["work"].clone()
    }

    pub fn report_id(&self) -> String {
        let n = self.n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        format!("{}-{}-{n}", self.host, uuid_like())
    }

    pub async fn report(&self, svc: &Svc, body: Value) -> (u16, Value) {
        svc.req(
            "POST",
            "/v1/agent/reports",
            Some(&self.credential),
            Some(&body),
        )
        .await
    }

    /// running + finished reports for an exec.
    pub async fn run(
        &self,
        svc: &Svc,
        exec: &str,
        ok: bool,
        result: &str,
        structured: Option<Value>,
    ) {
        let (s, b) = self
            .report(svc, json!({"report_id": self.report_id(), "exec_id": exec, "status": "running", "attempt": 1, "started_at_ms": 1}))
            .await;
        assert_eq!(s, 200, "{b}");
        let (s, b) = self
            .report(
                svc,
                finished(&self.report_id(), exec, ok, result, structured),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        assert_eq!(b["applied"], true, "{b}");
    }
}

pub fn finished(
    report_id: &str,
    exec: &str,
    ok: bool,
    result: &str,
    structured: Option<Value>,
) -> Value {
    let outcome = ibkit_api::wire::StepOutcome {
        status: if ok {
            ibkit_api::wire::FinalStatus::Ok
        } else {
            ibkit_api::wire::FinalStatus::Failed
        },
        attempts: 1,
        exit_code: Some(if ok { 0 } else { 7 }),
        signal: None,
        timed_out: false,
        halted: false,
        started_at_ms: 1,
        finished_at_ms: 2,
        log: format!("log of {exec}\n{result}"),
        log_truncated_bytes: 0,
        result: result.to_string(),
        result_truncated_bytes: 0,
        structured_result: structured
            .as_ref()
            .map(ibkit_api::StructuredJson::from_value),
        error: (!ok).then(|| "exit code 7".to_string()),
    };
    serde_json::to_value(ibkit_api::wire::Report {
        report_id: report_id.to_string(),
        exec_id: exec.to_string(),
        event: ibkit_api::wire::ReportEvent::Finished(Box::new(outcome)),
    })
    .expect("serialises")
}

fn uuid_like() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    )
}

pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}
