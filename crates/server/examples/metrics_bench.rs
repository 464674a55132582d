//! The cost of `/metrics` (scripts/bench-metrics.sh): an in-process
//! `ibkit serve` (plain HTTP on loopback, SQLite in a temporary directory)
//! with `--instances` instances of `--hosts` hosts each, every host paired;
//! prints the scrape time and size, a report's round trip, and what the
//! metrics hooks of one report cost.
//!
//! ```text
//! cargo run --release -p ibkit-server --example metrics_bench -- --instances 500 --hosts 4
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use ibkit_server::metrics::{FinishedStep, Metrics};
use ibkit_server::{ServeConfig, Server, TlsMode};
use serde_json::{Value, json};

fn args() -> Result<(usize, usize, usize), String> {
    let (mut instances, mut hosts, mut scrapes) = (500, 4, 20);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let v = it
            .next()
            .ok_or(format!("{a} needs a value"))?
            .parse::<usize>()
            .map_err(|e| format!("{a}: {e}"))?;
        match a.as_str() {
            "--instances" => instances = v,
            "--hosts" => hosts = v,
            "--scrapes" => scrapes = v.max(1),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok((instances, hosts, scrapes))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

struct Client {
    http: reqwest::Client,
    url: String,
}

impl Client {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: &str,
        body: Option<&Value>,
    ) -> Value {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(bearer);
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let r = rb.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    }
}

#[tokio::main]
async fn main() {
    let (instances, hosts, scrapes) = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("metrics_bench: {e}");
            std::process::exit(2);
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = ServeConfig::new(dir.path());
    cfg.listen = "127.0.0.1:0".parse().expect("addr");
    cfg.tls = TlsMode::InsecureHttp;
    // The monitor's rounds would compete with the measurement.
    cfg.monitor_interval = Duration::from_secs(3600);
    let server = Server::start(cfg).await.expect("server starts");
    let token = std::fs::read_to_string(server.operator_token_file())
        .expect("operator token")
        .trim()
        .to_string();
    let c = Arc::new(Client {
        http: reqwest::Client::new(),
        url: server.local_url(),
    });

    // The fleet: every host paired (a credential and a heartbeat).
    let t = Instant::now();
    let mut creds: Vec<String> = Vec::new();
    for i in 0..instances {
        let names: Vec<String> = (0..hosts).map(|h| format!("h{h}")).collect();
        let spec = json!({"name": format!("bench-{i}"),
            "hosts": names.iter().map(|n| json!({"name": n})).collect::<Vec<_>>(),
            "groups": [{"name": "g", "hosts": names, "steps": [{"index": 1, "content": "true"}]}]});
        let created = c
            .call(reqwest::Method::POST, "/v1/instances", &token, Some(&spec))
            .await;
        let id = created["id"].as_str().expect("id").to_string();
        let mut pairs = tokio::task::JoinSet::new();
        for h in created["hosts"].as_array().expect("hosts") {
            let body = json!({"instance": id, "host": h["name"], "pairing_key": h["pairing_key"],
                "agent_version": "bench", "protocol": ibkit_api::PROTOCOL_VERSION});
            let c = c.clone();
            pairs.spawn(async move {
                let r = c
                    .call(reqwest::Method::POST, "/v1/agent/pair", "", Some(&body))
                    .await;
                r["credential"].as_str().expect("credential").to_string()
            });
        }
        while let Some(cred) = pairs.join_next().await {
            creds.push(cred.expect("pairing task"));
        }
    }
    println!(
        "bench: {instances} instances, {} hosts paired in {:.1} s",
        creds.len(),
        t.elapsed().as_secs_f64()
    );

    // The agent hot path: take the step, report running and finished.
    let reports = creds.len().min(400);
    let mut report_rtt = Vec::new();
    for cred in creds.iter().take(reports) {
        let work = c
            .call(reqwest::Method::GET, "/v1/agent/work?wait_ms=0", cred, None)
            .await;
        let exec = work["work"]["exec_id"]
            .as_str()
            .expect("a step")
            .to_string();
        let running = json!({"report_id": format!("{exec}-r"), "exec_id": exec, "status": "running",
            "attempt": 1, "started_at_ms": 1});
        let t = Instant::now();
        c.call(
            reqwest::Method::POST,
            "/v1/agent/reports",
            cred,
            Some(&running),
        )
        .await;
        report_rtt.push(t.elapsed());
    }
    report_rtt.sort();
    let report_p50 = percentile(&report_rtt, 0.5);

    // Scrapes of that state.
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..scrapes {
        let t = Instant::now();
        let r = c
            .http
            .get(format!("{}/metrics", c.url))
            .bearer_auth(&token)
            .send()
            .await
            .expect("scrape");
        assert!(r.status().is_success(), "scrape: {}", r.status());
        let body = r.bytes().await.expect("scrape body");
        times.push(t.elapsed());
        size = body.len();
    }
    times.sort();
    println!(
        "bench: scrape of {} instances / {} hosts: p50 {}, max {}, {} bytes ({} scrapes)",
        instances,
        creds.len(),
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 1.0)),
        size,
        scrapes
    );

    // What the metrics add to one report: its timer, a finished step, two
    // timed database writes, the request counter, on a registry of its own.
    let m = Metrics::new();
    let event = ibkit_api::wire::ReportEvent::Finished(Box::new(ibkit_api::wire::StepOutcome {
        status: ibkit_api::wire::FinalStatus::Ok,
        attempts: 1,
        exit_code: Some(0),
        signal: None,
        timed_out: false,
        halted: false,
        started_at_ms: 1,
        finished_at_ms: 2,
        log: String::new(),
        log_truncated_bytes: 0,
        result: String::new(),
        result_truncated_bytes: 0,
        structured_result: None,
        error: None,
    }));
    let db = m.db_write_seconds();
    let n = 1_000_000u32;
    let t = Instant::now();
    for _ in 0..n {
        let _report = m.time_report();
        if let Some(step) = FinishedStep::of(std::hint::black_box(&event), false) {
            m.step_finished(step);
        }
        drop(db.start_timer());
        drop(db.start_timer());
        m.http_request("/v1/agent/reports", &axum::http::Method::POST, 200);
    }
    let per_report = t.elapsed() / n;
    println!(
        "bench: metrics hooks per report: {} ns; a report's round trip p50 {} ({} reports): {:.3}% of it",
        per_report.as_nanos(),
        ms(report_p50),
        reports,
        per_report.as_secs_f64() / report_p50.as_secs_f64() * 100.0
    );
    server.shutdown().await;
}
