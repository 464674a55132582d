//! Load generator for `ibkit serve`: N simulated agents (default 2000).
//!
//! Creates an instance with N hosts (one group, one step on every host),
//! pairs every host, then each agent fetches its work, reports running and
//! finished, and sends a heartbeat every 5 s until the run ends. Prints
//! request latency percentiles and requests/s.
//!
//! ```text
//! ibkit serve --listen 127.0.0.1:8443 --state-dir /tmp/lg &
//! cargo run --release -p ibkit-server --example loadgen -- \
//!     --url https://127.0.0.1:8443 --state-dir /tmp/lg --agents 2000 --seconds 30
//! ```
//! (`--state-dir` is where the operator token and tls/cert.pem are read from;
//! or pass `--token` and `--cert`.)

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Args {
    url: String,
    token: String,
    cert: Option<Vec<u8>>,
    agents: usize,
    seconds: u64,
    heartbeat: u64,
}

fn args() -> Result<Args, String> {
    let mut url = "https://127.0.0.1:8443".to_string();
    let (mut token, mut cert, mut state) = (None, None, None);
    let (mut agents, mut seconds, mut heartbeat) = (2000, 30, 5);
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut v = || it.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--url" => url = v()?,
            "--token" => token = Some(v()?),
            "--cert" => cert = Some(v()?),
            "--state-dir" => state = Some(v()?),
            "--agents" => agents = v()?.parse().map_err(|e| format!("--agents: {e}"))?,
            "--seconds" => seconds = v()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--heartbeat" => heartbeat = v()?.parse().map_err(|e| format!("--heartbeat: {e}"))?,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let read = |p: String| std::fs::read(&p).map_err(|e| format!("{p}: {e}"));
    let token = match (token, &state) {
        (Some(t), _) => t,
        (None, Some(s)) => String::from_utf8_lossy(&read(format!("{s}/operator-token"))?)
            .trim()
            .to_string(),
        (None, None) => return Err("--token or --state-dir is required".into()),
    };
    let cert = match (cert, &state) {
        (Some(c), _) => Some(read(c)?),
        (None, Some(s)) if url.starts_with("https") => Some(read(format!("{s}/tls/cert.pem"))?),
        _ => None,
    };
    Ok(Args {
        url: url.trim_end_matches('/').to_string(),
        token,
        cert,
        agents,
        seconds,
        heartbeat,
    })
}

#[derive(Default)]
struct Stats {
    latencies_us: Vec<u64>,
    by_kind: std::collections::BTreeMap<&'static str, Vec<u64>>,
    errors: u64,
}

async fn call(
    kind: &'static str,
    stats: &Mutex<Stats>,
    rb: reqwest::RequestBuilder,
) -> Option<Value> {
    let t = Instant::now();
    let r = rb.send().await;
    let ok = match r {
        Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
        Ok(r) => {
            eprintln!(
                "HTTP {}: {}",
                r.status(),
                r.text().await.unwrap_or_default()
            );
            None
        }
        Err(e) => {
            eprintln!("request failed: {e}");
            None
        }
    };
    let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
    let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
    s.latencies_us.push(us);
    s.by_kind.entry(kind).or_default().push(us);
    if ok.is_none() {
        s.errors += 1;
    }
    ok
}

#[tokio::main]
async fn main() {
    let a = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::exit(2);
        }
    };
    let mut b = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(a.agents);
    if let Some(pem) = &a.cert {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(pem).expect("cert PEM"));
    }
    let client = b.build().expect("client");
    let hosts: Vec<String> = (0..a.agents).map(|i| format!("h{i}")).collect();
    let spec = json!({
        "name": "loadgen",
        "hosts": hosts.iter().map(|h| json!({"name": h})).collect::<Vec<_>>(),
        "groups": [{"name": "g", "hosts": hosts, "steps": [{"index": 1, "content": "true"}]}],
    });
    let t = Instant::now();
    let created: Value = client
        .post(format!("{}/v1/instances", a.url))
        .bearer_auth(&a.token)
        .json(&spec)
        .send()
        .await
        .expect("create")
        .json()
        .await
        .expect("create json");
    let id = created["id"]
        .as_str()
        .expect("instance id (is the token right?)")
        .to_string();
    eprintln!(
        "created instance {id} with {} hosts in {:?}",
        a.agents,
        t.elapsed()
    );

    let stats = Arc::new(Mutex::new(Stats::default()));
    let start = Instant::now();
    let end = start + Duration::from_secs(a.seconds);
    let sem = Arc::new(tokio::sync::Semaphore::new(200));
    let mut tasks = Vec::new();
    for h in created["hosts"].as_array().expect("hosts").clone() {
        let (client, stats, sem, url, id) = (
            client.clone(),
            stats.clone(),
            sem.clone(),
            a.url.clone(),
            id.clone(),
        );
        let heartbeat = a.heartbeat;
        tasks.push(tokio::spawn(async move {
            let name = h["name"].as_str().unwrap_or_default().to_string();
            let pair = {
                let _p = sem.acquire().await;
                call("pair", &stats, client.post(format!("{url}/v1/agent/pair")).json(&json!({
                    "instance": id, "host": name, "pairing_key": h["pairing_key"], "agent_version": "loadgen", "protocol": ibkit_api::PROTOCOL_VERSION})))
                .await
            };
            let Some(pair) = pair else { return };
            let cred = pair["credential"].as_str().unwrap_or_default().to_string();
            let work = call("work", &stats, client.get(format!("{url}/v1/agent/work?wait_ms=0")).bearer_auth(&cred)).await;
            if let Some(exec) = work.as_ref().and_then(|w| w["work"]["exec_id"].as_str()) {
                let now = 1;
                call("report", &stats, client.post(format!("{url}/v1/agent/reports")).bearer_auth(&cred).json(&json!({
                    "report_id": format!("{exec}-r"), "exec_id": exec, "status": "running", "attempt": 1, "started_at_ms": now}))).await;
                call("report", &stats, client.post(format!("{url}/v1/agent/reports")).bearer_auth(&cred).json(&json!({
                    "report_id": format!("{exec}-f"), "exec_id": exec, "status": "finished", "final_status": "ok",
                    "attempts": 1, "exit_code": 0, "signal": null, "timed_out": false, "halted": false,
                    "started_at_ms": now, "finished_at_ms": now + 1, "log": "ok\n", "log_truncated_bytes": 0,
                    "result": "ok\n", "result_truncated_bytes": 0, "structured_result": null, "error": null}))).await;
            }
            // Spread heartbeats over the interval.
            let offset = rand_offset(&name, heartbeat * 1000);
            tokio::time::sleep(Duration::from_millis(offset)).await;
            while Instant::now() < end {
                call("heartbeat", &stats, client.post(format!("{url}/v1/agent/heartbeat")).bearer_auth(&cred).json(&json!({
                    "agent_version": "loadgen", "uptime_s": 1, "running_exec": null, "queued_reports": 0}))).await;
                tokio::time::sleep(Duration::from_secs(heartbeat)).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed();
    let inst: Value = client
        .get(format!("{}/v1/instances/{id}", a.url))
        .bearer_auth(&a.token)
        .send()
        .await
        .expect("instance")
        .json()
        .await
        .expect("json");
    let mut s = stats.lock().unwrap_or_else(|e| e.into_inner());
    s.latencies_us.sort_unstable();
    let n = s.latencies_us.len();
    let pct = |p: f64| {
        let i = ((n as f64 * p).ceil() as usize).clamp(1, n.max(1)) - 1;
        s.latencies_us.get(i).copied().unwrap_or(0) as f64 / 1000.0
    };
    println!(
        "agents {} requests {n} errors {} in {:.1}s: {:.0} req/s; latency ms p50 {:.2} p95 {:.2} p99 {:.2} max {:.2}; instance {} steps {}",
        a.agents,
        s.errors,
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.95),
        pct(0.99),
        s.latencies_us.last().copied().unwrap_or(0) as f64 / 1000.0,
        inst["status"],
        inst["steps"],
    );
    for (kind, v) in s.by_kind.iter_mut() {
        println!("  {kind:<10} {}", percentiles(v));
    }
}

fn percentiles(v: &mut [u64]) -> String {
    v.sort_unstable();
    let n = v.len();
    let at = |p: f64| {
        let i = ((n as f64 * p).ceil() as usize).clamp(1, n.max(1)) - 1;
        v.get(i).copied().unwrap_or(0) as f64 / 1000.0
    };
    format!(
        "n {n} p50 {:.2} p95 {:.2} p99 {:.2} max {:.2} ms",
        at(0.5),
        at(0.95),
        at(0.99),
        v.last().copied().unwrap_or(0) as f64 / 1000.0
    )
}

fn rand_offset(name: &str, range_ms: u64) -> u64 {
    let h = name.bytes().fold(1469598103934665603u64, |a, b| {
        (a ^ u64::from(b)).wrapping_mul(1099511628211)
    });
    h % range_ms.max(1)
}
