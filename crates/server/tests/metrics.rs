//! `GET /metrics` over real HTTPS with SQLite on disk: the values follow
//! what the fake agents did, the text is valid Prometheus text format, no
//! label can grow with the fleet, and only the operator token or the
//! metrics token opens it (the metrics token opens nothing else).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use common::{Agent, Svc, config, finished, tmp};
use serde_json::{Value, json};

/// Names chosen so a leak into a label is easy to spot.
const GOOD: &str = "good-host-x1";
const BAD: &str = "bad-host-y2";
const SLOW: &str = "slow-host-z3";
const GROUP_OK: &str = "grp-alpha-q7";
const GROUP_FAIL: &str = "grp-beta-w8";

fn spec() -> Value {
    json!({
        "name": "metrics-inst-k4",
        "hosts": [{"name": GOOD}, {"name": BAD}, {"name": SLOW}],
        "groups": [
            {"name": GROUP_OK, "hosts": [GOOD], "steps": [
                {"index": 1, "content": "true"},
                {"index": 2, "content": "true"},
            ]},
            {"name": GROUP_FAIL, "hosts": [BAD, SLOW], "steps": [
                {"index": 1, "content": "exit 7"},
            ]},
        ],
    })
}

/// The raw answer of `GET /metrics` with `bearer`.
async fn get_metrics(svc: &Svc, bearer: Option<&str>) -> reqwest::Response {
    let mut rb = svc.client.get(format!("{}/metrics", svc.url));
    if let Some(b) = bearer {
        rb = rb.bearer_auth(b);
    }
    rb.send().await.expect("request")
}

/// One sample as the parser read it.
#[derive(Debug, serde::Deserialize)]
struct Sample {
    /// The family (`ibkit_x` for `ibkit_x_bucket`).
    family: String,
    /// `counter`, `gauge`, `histogram`.
    r#type: String,
    metric: String,
    labels: HashMap<String, String>,
    /// As Python prints it (`inf` for the +Inf bucket's bound).
    value: String,
}

/// The Prometheus client library's own text-format parser (Debian:
/// python3-prometheus-client): it refuses what Prometheus would not read,
/// and prints every sample as JSON.
const PARSER: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append({"family": fam.name, "type": fam.type, "metric": s.name,
                    "labels": s.labels, "value": repr(float(s.value))})
json.dump(out, sys.stdout)
"#;

/// The first Python that has `prometheus_client`: Debian's own
/// (/usr/bin/python3) when `python3` on the PATH is another one.
fn python_with_prometheus_client() -> &'static str {
    ["python3", "/usr/bin/python3"]
        .into_iter()
        .find(|py| {
            std::process::Command::new(py)
                .args(["-c", "import prometheus_client.parser"])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .expect("python3 with prometheus_client (Debian: python3-prometheus-client)")
}

fn parse(text: &str) -> Vec<Sample> {
    use std::io::Write as _;
    let mut child = std::process::Command::new(python_with_prometheus_client())
        .args(["-c", PARSER])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write the scrape");
    let out = child.wait_with_output().expect("parser output");
    assert!(
        out.status.success(),
        "the Prometheus parser refused the scrape: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("parser JSON")
}

/// A scrape: its text and the parsed samples.
struct Scraped {
    text: String,
    samples: Vec<Sample>,
}

async fn scrape(svc: &Svc, bearer: &str) -> Scraped {
    let r = get_metrics(svc, Some(bearer)).await;
    assert_eq!(r.status(), 200);
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert_eq!(ct, "text/plain; version=0.0.4", "content type");
    let text = r.text().await.expect("body");
    let samples = parse(&text);
    Scraped { text, samples }
}

impl Scraped {
    /// The value of the sample `name` with exactly these labels.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let want: HashMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let found: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.metric == name && s.labels == want)
            .map(|s| s.value.parse().expect("a number"))
            .collect();
        assert_eq!(
            found.len(),
            1,
            "one sample {name}{labels:?} expected:\n{}",
            self.text
        );
        found[0]
    }

    /// Observations of a histogram with these labels (its `_count`, which
    /// must equal its `+Inf` bucket).
    fn observations(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let count = self.value(&format!("{name}_count"), labels);
        let mut with_le = labels.to_vec();
        with_le.push(("le", "+Inf"));
        let inf = self.value(&format!("{name}_bucket"), &with_le);
        assert_eq!(inf, count, "{name}: +Inf bucket = _count");
        assert!(
            self.samples
                .iter()
                .any(|s| s.metric == format!("{name}_bucket")
                    && s.family == name
                    && s.r#type == "histogram"),
            "{name} is a histogram"
        );
        count
    }
}

/// The text is what Prometheus accepts: every family has one HELP and one
/// TYPE line before its samples, names are valid and unique, histograms
/// have increasing cumulative buckets.
fn assert_valid_exposition(text: &str) {
    let valid_name = |n: &str| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut help = BTreeSet::new();
    let mut types: BTreeMap<String, String> = BTreeMap::new();
    let mut last_bucket: HashMap<String, f64> = HashMap::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            assert!(valid_name(name), "bad name {name:?}");
            assert!(help.insert(name.to_string()), "HELP {name} twice");
            assert!(!types.contains_key(name), "HELP {name} after its TYPE");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut it = rest.split(' ');
            let (name, ty) = (it.next().unwrap_or_default(), it.next().unwrap_or_default());
            assert!(help.contains(name), "TYPE {name} without HELP");
            assert!(
                ["counter", "gauge", "histogram"].contains(&ty),
                "{name}: type {ty}"
            );
            assert!(
                types.insert(name.to_string(), ty.to_string()).is_none(),
                "TYPE {name} twice"
            );
            continue;
        }
        assert!(!line.starts_with('#'), "stray comment {line:?}");
        let name = line
            .split(['{', ' '])
            .next()
            .expect("a sample line has a name");
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| {
                name.strip_suffix(suffix)
                    .filter(|base| types.get(*base).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        assert!(
            types.contains_key(family),
            "sample {name} before its TYPE: {line}"
        );
        let value = line.rsplit(' ').next().expect("value");
        let v: f64 = value.parse().unwrap_or_else(|_| panic!("value {line:?}"));
        if name.ends_with("_bucket") {
            let series = line.split(",le=").next().unwrap_or(line).to_string();
            if line.contains("le=\"+Inf\"") {
                last_bucket.remove(&series);
            } else {
                let prev = last_bucket.insert(series, v).unwrap_or(0.0);
                assert!(v >= prev, "buckets not cumulative: {line}");
            }
        }
        // Conventions: the project's prefix (or the standard process_
        // metric), base units, counters end in _total.
        assert!(
            family.starts_with("ibkit_") || family == "process_start_time_seconds",
            "{family} lacks the ibkit_ prefix"
        );
        if types[family] == "counter" {
            assert!(family.ends_with("_total"), "counter {family}");
        }
        assert!(
            !family.contains("_milliseconds") && !family.contains("_ms"),
            "{family}: not a base unit"
        );
    }
    assert!(!types.is_empty(), "no metric families:\n{text}");
}

/// No label can grow with the fleet: keys from a closed set, and no value
/// names an instance, host, group or route parameter.
fn assert_bounded_labels(s: &Scraped, forbidden: &[&str]) {
    let keys = [
        "status", "health", "kind", "outcome", "work", "route", "method", "version", "le",
    ];
    for sample in &s.samples {
        for (k, v) in sample.labels.iter() {
            assert!(keys.contains(&k.as_str()), "label {k} on {}", sample.metric);
            for f in forbidden {
                assert!(!v.contains(f), "{}{{{k}={v:?}}} names {f:?}", sample.metric);
            }
        }
    }
}

async fn report_timed_out(svc: &Svc, agent: &Agent, exec: &str) {
    let (s, b) = agent
        .report(svc, json!({"report_id": agent.report_id(), "exec_id": exec, "status": "running", "attempt": 1, "started_at_ms": 1}))
        .await;
    assert_eq!(s, 200, "{b}");
    let mut body = finished(&agent.report_id(), exec, false, "", None);
    assert!(
        body.get("timed_out").is_some(),
        "outcome on the report: {body}"
    );
    body["timed_out"] = json!(true);
    let (s, b) = agent.report(svc, body).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["applied"], true, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_what_happened() {
    let dir = tmp();
    let mut cfg = config(dir.path());
    let metrics_token = "mt_only-for-prometheus";
    let token_file = dir.path().join("metrics-token");
    std::fs::write(&token_file, format!("{metrics_token}\n")).expect("token file");
    cfg.metrics_token_file = Some(token_file);
    let svc = Svc::start(cfg).await;

    let (id, keys) = svc.create(&spec()).await;
    let good = svc.pair(&id, &keys, GOOD).await;
    let bad = svc.pair(&id, &keys, BAD).await;
    let slow = svc.pair(&id, &keys, SLOW).await;
    // Each run is two reports (running, finished).
    let mut reports = 0;
    let mut steps_handed_out = 0;
    for _ in 0..2 {
        let w = good.take(&svc).await;
        steps_handed_out += 1;
        good.run(&svc, w["exec_id"].as_str().expect("exec"), true, "ok", None)
            .await;
        reports += 2;
    }
    let w = bad.take(&svc).await;
    steps_handed_out += 1;
    bad.run(&svc, w["exec_id"].as_str().expect("exec"), false, "", None)
        .await;
    reports += 2;
    let w = slow.take(&svc).await;
    steps_handed_out += 1;
    report_timed_out(&svc, &slow, w["exec_id"].as_str().expect("exec")).await;
    reports += 2;
    // A poll that hands out nothing: the good host is done.
    let (st, body) = good.work(&svc, 0, None).await;
    assert_eq!(st, 200);
    assert!(body["work"].is_null(), "{body}");
    let empty_polls = 1;
    // An unknown path, counted without its path.
    let (st, _) = svc.op("GET", &format!("/v1/nope/{id}"), None).await;
    assert_eq!(st, 404);

    // The monitor opens a request for each host with a failed step.
    let t = Instant::now();
    let mut open = Vec::new();
    while t.elapsed() < Duration::from_secs(10) {
        open = svc.recovery(&id).await;
        if open.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let instance = svc.instance(&id).await;
    // The monitor counts a request just after committing it: a scrape
    // right then may be a moment early.
    let mut s = scrape(&svc, metrics_token).await;
    let opened = |s: &Scraped| {
        s.value(
            "ibkit_recovery_requests_opened_total",
            &[("kind", "agent_failed")],
        )
    };
    while opened(&s) < 2.0 && t.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        s = scrape(&svc, metrics_token).await;
    }
    assert_valid_exposition(&s.text);
    assert_bounded_labels(
        &s,
        &[&id, GOOD, BAD, SLOW, GROUP_OK, GROUP_FAIL, "metrics-inst"],
    );

    // Steps by outcome, durations of each.
    let outcome = |o| s.value("ibkit_steps_finished_total", &[("outcome", o)]);
    assert_eq!(outcome("ok"), 2.0);
    assert_eq!(outcome("failed"), 1.0);
    assert_eq!(outcome("timeout"), 1.0);
    assert_eq!(outcome("refused"), 0.0);
    assert_eq!(s.observations("ibkit_step_duration_seconds", &[]), 4.0);

    // Instances by status, as the operator API tells it.
    let status = instance["status"].as_str().expect("status");
    for st in ["applying", "running", "failed", "deleted"] {
        let want = if st == status { 1.0 } else { 0.0 };
        assert_eq!(s.value("ibkit_instances", &[("status", st)]), want, "{st}");
    }
    // Hosts by health, as the operator API tells it.
    let hosts = instance["hosts"].as_array().expect("hosts");
    for h in ["healthy", "unhealthy", "unknown"] {
        let n = hosts.iter().filter(|x| x["health"] == h).count() as f64;
        assert_eq!(s.value("ibkit_hosts", &[("health", h)]), n, "{h}");
    }
    assert_eq!(s.value("ibkit_hosts", &[("health", "unhealthy")]), 2.0);
    assert_eq!(s.value("ibkit_agents_paired", &[]), 3.0);
    assert_eq!(
        s.observations("ibkit_agent_heartbeat_age_seconds", &[]),
        3.0
    );

    // Recovery requests, opened and open, by kind.
    let failed_kind = open.iter().filter(|r| r["kind"] == "agent_failed").count();
    assert_eq!(failed_kind, 2, "{open:#?}");
    assert_eq!(opened(&s), 2.0);
    assert_eq!(
        s.value("ibkit_recovery_requests_open", &[("kind", "agent_failed")]),
        2.0
    );
    assert_eq!(
        s.value("ibkit_recovery_requests_open", &[("kind", "agent_silent")]),
        0.0
    );

    // Agent hot path: every report timed, polls split by outcome.
    assert_eq!(
        s.observations("ibkit_agent_report_duration_seconds", &[]),
        f64::from(reports)
    );
    assert_eq!(
        s.observations(
            "ibkit_agent_work_poll_duration_seconds",
            &[("work", "step")]
        ),
        f64::from(steps_handed_out)
    );
    assert_eq!(
        s.observations(
            "ibkit_agent_work_poll_duration_seconds",
            &[("work", "none")]
        ),
        f64::from(empty_polls)
    );
    assert!(s.observations("ibkit_agent_work_answer_duration_seconds", &[]) >= 5.0);
    // Pairing, steps, reports, the monitor: all through the one writer.
    assert!(s.observations("ibkit_db_write_duration_seconds", &[]) >= f64::from(reports));

    // HTTP requests by route template, never by path.
    let http = |route, method, class| {
        s.value(
            "ibkit_http_requests_total",
            &[("route", route), ("method", method), ("status", class)],
        )
    };
    assert_eq!(http("/v1/agent/reports", "POST", "2xx"), f64::from(reports));
    assert_eq!(http("/v1/agent/pair", "POST", "2xx"), 3.0);
    assert!(http("/v1/instances/{id}", "GET", "2xx") >= 1.0);
    assert_eq!(http("unmatched", "GET", "4xx"), 1.0);

    assert_eq!(
        s.value(
            "ibkit_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    let started = s.value("process_start_time_seconds", &[]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    assert!(
        started <= now && now - started < 120.0,
        "started {started}, now {now}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_operator_or_metrics_token_opens_metrics() {
    let dir = tmp();
    let mut cfg = config(dir.path());
    let metrics_token = "mt_scraper";
    let token_file = dir.path().join("metrics-token");
    std::fs::write(&token_file, metrics_token).expect("token file");
    cfg.metrics_token_file = Some(token_file);
    let svc = Svc::start(cfg).await;

    assert_eq!(get_metrics(&svc, None).await.status(), 401);
    assert_eq!(get_metrics(&svc, Some("mt_wrong")).await.status(), 401);
    let r = get_metrics(&svc, Some(&svc.token)).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.expect("body").contains("ibkit_instances"));
    assert_eq!(get_metrics(&svc, Some(metrics_token)).await.status(), 200);
    // The metrics token opens nothing else: not the operator API.
    let (st, body) = svc
        .req("GET", "/v1/instances", Some(metrics_token), None)
        .await;
    assert_eq!(st, 401, "{body}");
    let (st, body) = svc
        .req(
            "POST",
            "/v1/instances",
            Some(metrics_token),
            Some(&json!({"name": "x"})),
        )
        .await;
    assert_eq!(st, 401, "{body}");
    // Nor the agent API.
    let (st, _) = svc
        .req("GET", "/v1/agent/work", Some(metrics_token), None)
        .await;
    assert_eq!(st, 401);
    // Refused scrapes are counted too, under the route.
    let s = scrape(&svc, metrics_token).await;
    assert_eq!(
        s.value(
            "ibkit_http_requests_total",
            &[("route", "/metrics"), ("method", "GET"), ("status", "4xx")]
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_metrics_token_file_is_refused() {
    let dir = tmp();
    let mut cfg = config(dir.path());
    let token_file = dir.path().join("metrics-token");
    std::fs::write(&token_file, "\n").expect("token file");
    cfg.metrics_token_file = Some(token_file);
    let err = ibkit_server::Server::start(cfg)
        .await
        .err()
        .expect("an empty token is refused");
    assert!(err.to_string().contains("is empty"), "{err:#}");
}

/// Two services in one process keep their own counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_has_its_own_registry() {
    let (d1, d2) = (tmp(), tmp());
    let one = Svc::start(config(d1.path())).await;
    let two = Svc::start(config(d2.path())).await;
    let spec = json!({"name": "one", "hosts": [{"name": "h"}], "groups": [
        {"name": "g", "hosts": ["h"], "steps": [{"index": 1, "content": "true"}]}]});
    let (id, keys) = one.create(&spec).await;
    let agent = one.pair(&id, &keys, "h").await;
    let w = agent.take(&one).await;
    agent
        .run(&one, w["exec_id"].as_str().expect("exec"), true, "", None)
        .await;
    let s1 = scrape(&one, &one.token).await;
    let s2 = scrape(&two, &two.token).await;
    let ok = [("outcome", "ok")];
    assert_eq!(s1.value("ibkit_steps_finished_total", &ok), 1.0);
    assert_eq!(s2.value("ibkit_steps_finished_total", &ok), 0.0);
    assert_eq!(s1.value("ibkit_agents_paired", &[]), 1.0);
    assert_eq!(s2.value("ibkit_agents_paired", &[]), 0.0);
    let reports_on_two = s2.samples.iter().any(|x| {
        x.metric == "ibkit_http_requests_total"
            && x.labels.get("route").map(String::as_str) == Some("/v1/agent/reports")
    });
    assert!(!reports_on_two, "{}", s2.text);
}
