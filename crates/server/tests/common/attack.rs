//! The memory attacks of issue 12 (item 7) on a running `ibkit serve`, and
//! the service's resident memory while they run (`/proc/PID/status`).
//! Shared by `tests/memory.rs` (asserts a bound) and
//! `examples/serve_memory.rs` (the benchmark, against the release binary).
//!
//! 1. Slow clients: `slow_downloads` connections each start downloading the
//!    agent binary (the service is given a big one) and read it at about
//!    1 MB/s, the whole time the reports below are sent.
//! 2. Report flood: `hosts` paired hosts each send `reports_per_host`
//!    final reports of ~15 MiB whose structured result is ~14 MiB of
//!    `[0,0,0,…]`, all hosts at once.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The service under attack.
pub struct Target {
    pub url: String,
    pub pid: u32,
    pub token: String,
    /// The generated certificate (`STATE/tls/cert.pem`).
    pub cert_pem: Vec<u8>,
    /// The file the service serves as the agent binary.
    pub agent_binary: PathBuf,
}

impl Target {
    /// Reads the token and certificate from the service's state directory.
    pub fn from_state(url: &str, pid: u32, state: &Path, agent_binary: &Path) -> Target {
        Target {
            url: url.trim_end_matches('/').to_string(),
            pid,
            token: std::fs::read_to_string(state.join("operator-token"))
                .expect("operator token")
                .trim()
                .to_string(),
            cert_pem: std::fs::read(state.join("tls/cert.pem")).expect("certificate"),
            agent_binary: agent_binary.to_path_buf(),
        }
    }

    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&self.cert_pem).expect("pem"))
            // One connection per client, as separate machines would have.
            .http1_only()
            .timeout(Duration::from_secs(300))
            .build()
            .expect("client")
    }
}

pub struct Plan {
    pub slow_downloads: usize,
    pub hosts: usize,
    pub reports_per_host: usize,
    /// Bytes of the structured result's text in each report.
    pub structured_bytes: usize,
    /// Bytes of log in each report (the rest of its ~15 MiB).
    pub log_bytes: usize,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            slow_downloads: 8,
            hosts: 6,
            reports_per_host: 2,
            structured_bytes: 14 << 20,
            log_bytes: 1 << 20,
        }
    }
}

#[derive(Debug, Default)]
pub struct Figures {
    /// KiB resident before the attacks.
    pub rss_before_kib: u64,
    /// Highest KiB resident seen while sampling every 20 ms.
    pub rss_peak_sampled_kib: u64,
    /// The kernel's high-water mark (VmHWM) after the attacks.
    pub hwm_kib: u64,
    pub rss_after_kib: u64,
    /// Slow downloads served (200) and told to retry (503 + Retry-After).
    pub downloads_served: usize,
    pub downloads_refused: usize,
    /// Bytes the slow clients read in all.
    pub slow_bytes_read: u64,
    pub reports_sent: usize,
    pub report_body_bytes: usize,
    /// A full download after the attacks had the file's length and bytes.
    pub full_download_ok: bool,
    pub seconds: f64,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |k: u64| k as f64 / 1024.0;
        write!(
            f,
            "service RSS before {:.1} MiB, peak sampled {:.1} MiB, VmHWM {:.1} MiB, after {:.1} MiB; \
             slow downloads served {} refused {} ({:.1} MiB read slowly); \
             {} reports of {:.1} MiB; full download intact: {}; {:.1} s",
            mib(self.rss_before_kib),
            mib(self.rss_peak_sampled_kib),
            mib(self.hwm_kib),
            mib(self.rss_after_kib),
            self.downloads_served,
            self.downloads_refused,
            self.slow_bytes_read as f64 / (1 << 20) as f64,
            self.reports_sent,
            self.report_body_bytes as f64 / (1 << 20) as f64,
            self.full_download_ok,
            self.seconds,
        )
    }
}

/// (VmRSS, VmHWM) of `pid` in KiB.
pub fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A final report for `exec` as an agent would send it, serialized.
fn report_body(report_id: &str, exec: &str, plan: &Plan) -> Vec<u8> {
    let zeros = format!(
        "{{\"a\":[0{}]}}",
        ",0".repeat(plan.structured_bytes.saturating_sub(9) / 2)
    );
    let outcome = ibkit_api::wire::StepOutcome {
        status: ibkit_api::wire::FinalStatus::Ok,
        attempts: 1,
        exit_code: Some(0),
        signal: None,
        timed_out: false,
        halted: false,
        started_at_ms: 1,
        finished_at_ms: 2,
        log: "l".repeat(plan.log_bytes),
        log_truncated_bytes: 0,
        result: String::new(),
        result_truncated_bytes: 0,
        structured_result: Some(ibkit_api::StructuredJson::from_stored(zeros)),
        error: None,
    };
    serde_json::to_vec(&ibkit_api::wire::Report {
        report_id: report_id.to_string(),
        exec_id: exec.to_string(),
        event: ibkit_api::wire::ReportEvent::Finished(Box::new(outcome)),
    })
    .expect("serialises")
}

async fn json_call(rb: reqwest::RequestBuilder, what: &str) -> Value {
    let r = rb.send().await.unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{what}: {status} {body}");
    body
}

/// Runs the attacks; returns the figures (asserts only that the service
/// answered as designed).
pub async fn run(t: &Target, plan: &Plan) -> Figures {
    let started = Instant::now();
    let mut fig = Figures {
        rss_before_kib: memory_kib(t.pid).0,
        ..Figures::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(fig.rss_before_kib));
    let sampler = {
        let (stop, peak, pid) = (stop.clone(), peak.clone(), t.pid);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(memory_kib(pid).0, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // 1. Slow downloads, held open during the report flood.
    let read = Arc::new(AtomicU64::new(0));
    let mut slow = Vec::new();
    for _ in 0..plan.slow_downloads {
        let (client, url, stop, read) = (
            t.client(),
            format!("{}/v1/agent/binary", t.url),
            stop.clone(),
            read.clone(),
        );
        slow.push(tokio::spawn(async move {
            let mut r = client.get(url).send().await.expect("download request");
            match r.status().as_u16() {
                200 => {
                    while !stop.load(Ordering::Relaxed) {
                        match r.chunk().await {
                            Ok(Some(c)) => {
                                read.fetch_add(c.len() as u64, Ordering::Relaxed);
                                // About 1 MB/s: the service must not buffer
                                // what the client has not taken yet.
                                let len = u64::try_from(c.len()).unwrap_or(u64::MAX);
                                tokio::time::sleep(Duration::from_micros(len)).await;
                            }
                            _ => break,
                        }
                    }
                    true
                }
                503 => {
                    assert!(
                        r.headers().get("retry-after").is_some(),
                        "a refused download says when to retry"
                    );
                    false
                }
                s => panic!("download: HTTP {s}"),
            }
        }));
    }
    // Let them all connect and fill their buffers.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // 2. The report flood.
    let op = t.client();
    let hosts: Vec<String> = (0..plan.hosts).map(|i| format!("h{i}")).collect();
    let spec = json!({
        "name": "memory-attack",
        "hosts": hosts.iter().map(|h| json!({"name": h})).collect::<Vec<_>>(),
        "groups": [{"name": "g", "hosts": hosts, "steps": [{"index": 1, "content": "true"}]}],
    });
    let created = json_call(
        op.post(format!("{}/v1/instances", t.url))
            .bearer_auth(&t.token)
            .json(&spec),
        "create",
    )
    .await;
    let id = created["id"].as_str().expect("id").to_string();
    let mut agents = Vec::new();
    for h in created["hosts"].as_array().expect("hosts") {
        let paired = json_call(
            op.post(format!("{}/v1/agent/pair", t.url)).json(&json!({
                "instance": id, "host": h["name"], "pairing_key": h["pairing_key"],
                "agent_version": "attack", "protocol": ibkit_api::PROTOCOL_VERSION})),
            "pair",
        )
        .await;
        let cred = paired["credential"]
            .as_str()
            .expect("credential")
            .to_string();
        let work = json_call(
            op.get(format!("{}/v1/agent/work?wait_ms=0", t.url))
                .bearer_auth(&cred),
            "work",
        )
        .await;
        let exec = work["work"]["exec_id"].as_str().expect("exec").to_string();
        agents.push((cred, exec));
    }
    let mut flood = Vec::new();
    for (n, (cred, exec)) in agents.into_iter().enumerate() {
        let (client, url) = (t.client(), t.url.clone());
        let bodies: Vec<Vec<u8>> = (0..plan.reports_per_host)
            .map(|r| report_body(&format!("attack-{n}-{r}"), &exec, plan))
            .collect();
        flood.push(tokio::spawn(async move {
            let mut bytes = 0;
            for body in bodies {
                bytes += body.len();
                json_call(
                    client
                        .post(format!("{url}/v1/agent/reports"))
                        .bearer_auth(&cred)
                        .header("content-type", "application/json")
                        .body(body),
                    "report",
                )
                .await;
            }
            bytes
        }));
    }
    for f in flood {
        fig.report_body_bytes += f.await.expect("report task");
        fig.reports_sent += plan.reports_per_host;
    }
    // Every step ended, failed with the reason (nothing left running).
    for h in 0..plan.hosts {
        let steps = json_call(
            op.get(format!("{}/v1/instances/{id}/hosts/h{h}/steps", t.url))
                .bearer_auth(&t.token),
            "steps",
        )
        .await;
        let s = &steps[0];
        assert_eq!(s["status"], "failed", "{}", s["error"]);
        assert!(
            s["error"]
                .as_str()
                .is_some_and(|e| e.contains("over the 1048576-byte limit")),
            "{}",
            s["error"]
        );
    }

    stop.store(true, Ordering::Relaxed);
    for s in slow {
        if s.await.expect("download task") {
            fig.downloads_served += 1;
        } else {
            fig.downloads_refused += 1;
        }
    }
    fig.slow_bytes_read = read.load(Ordering::Relaxed);
    let _ = sampler.await;

    // A whole download afterwards is the file, byte for byte.
    let expected = std::fs::read(&t.agent_binary).expect("agent binary");
    let got = t
        .client()
        .get(format!("{}/v1/agent/binary", t.url))
        .send()
        .await
        .expect("download")
        .bytes()
        .await
        .expect("body");
    fig.full_download_ok = got.len() == expected.len() && got[..] == expected[..];

    let (rss, hwm) = memory_kib(t.pid);
    fig.rss_peak_sampled_kib = peak.load(Ordering::Relaxed).max(rss);
    fig.rss_after_kib = rss;
    fig.hwm_kib = hwm;
    fig.seconds = started.elapsed().as_secs_f64();
    fig
}

/// Writes a `size`-byte file of varied bytes (a stand-in agent binary).
pub fn write_big_file(path: &Path, size: usize) {
    let mut data = Vec::with_capacity(size);
    let mut x: u32 = 0x1234_5678;
    while data.len() < size {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(size);
    std::fs::write(path, data).expect("big file");
}
