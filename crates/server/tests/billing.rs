//! The marketplace billing emulator over real HTTPS on loopback with
//! SQLite on disk. The secure push is driven by independent
//! implementations: the example clients `examples/billing/push.py`
//! (Python `cryptography`) and `examples/billing/push.sh` (bash + the
//! openssl CLI), and bodies sealed here with the openssl CLI.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{Svc, config, tmp};
use ibkit_api::operator::{InstanceBilling, InstanceId, InstanceUsage, ParamUsage, PushScheme};
use ibkit_support::clock::{format_utc_ms, now_ms};
use serde_json::{Value, json};

const SIMPLE: &str = "/marketplace/api/infra-api/api/v1-public/usages";
const AUTH_KEY: &str = "/marketplace/api/infra-api/v1-public/auth/key";
const DECRYPT: &str = "/marketplace/api/infra-api/v1-public/metrics/decrypt";
const PUSH: &str = "/marketplace/api/infra-api/v1-public/metrics/push";

fn example(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/billing")
        .join(name)
}

/// Python 3 with `cryptography`; else the Python client's checks are
/// skipped, saying so.
fn python_cryptography() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import cryptography"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        eprintln!(
            "SKIPPED: the Python client checks need python3 with the cryptography module \
             (Debian: python3-cryptography)"
        );
    }
    ok
}

fn spec(name: &str, params: &[&str]) -> Value {
    let mut s = json!({"name": name, "hosts": [{"name": "h"}]});
    if !params.is_empty() {
        s["billing"] = json!({ "params": params });
    }
    s
}

/// An instance billing `params`, its credentials.
async fn billed(svc: &Svc, name: &str, params: &[&str]) -> (String, InstanceBilling) {
    let (id, _) = svc.create(&spec(name, params)).await;
    let creds = svc
        .operator()
        .instance_billing(&InstanceId::parse(&id).expect("id"))
        .await
        .expect("billing credentials");
    (id, creds)
}

async fn usage(svc: &Svc, id: &str) -> InstanceUsage {
    svc.operator()
        .instance_usage(&InstanceId::parse(id).expect("id"))
        .await
        .expect("usage")
}

fn param<'a>(u: &'a InstanceUsage, name: &str) -> &'a ParamUsage {
    u.params
        .iter()
        .find(|p| p.param == name)
        .unwrap_or_else(|| panic!("no param {name} in {u:?}"))
}

/// A request with raw body bytes and the given headers.
async fn raw(
    svc: &Svc,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> (u16, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut rb = svc.client.request(m, format!("{}{path}", svc.url));
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    if let Some(b) = body {
        rb = rb.header("content-type", "application/json").body(b);
    }
    let r = rb.send().await.expect("the service answers");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn simple(svc: &Svc, token: Option<&str>, body: &Value) -> (u16, Value) {
    let headers: Vec<(&str, &str)> = token.map(|t| ("x-service-token", t)).into_iter().collect();
    raw(
        svc,
        "POST",
        SIMPLE,
        &headers,
        Some(body.to_string().into_bytes()),
    )
    .await
}

async fn secure(svc: &Svc, path: &str, key: &str, body: &Value) -> (u16, Value) {
    let auth = format!("Bearer {key}");
    raw(
        svc,
        "POST",
        path,
        &[("authorization", &auth)],
        Some(body.to_string().into_bytes()),
    )
    .await
}

fn error_of(body: &Value) -> String {
    body["error"].as_str().unwrap_or_default().to_string()
}

/// Files the example clients read: the public key, the token file, the
/// service's certificate.
struct ClientFiles {
    _dir: tempfile::TempDir,
    public_pem: PathBuf,
    token: PathBuf,
    cert: PathBuf,
}

async fn client_files(svc: &Svc, key: &str) -> ClientFiles {
    let dir = tmp();
    let pk = svc
        .operator()
        .billing_public_key()
        .await
        .expect("public key");
    let public_pem = dir.path().join("marketplace.pem");
    std::fs::write(&public_pem, pk.public_key_pem).expect("write key");
    let token = dir.path().join("xaas-secret-auth-token.key");
    std::fs::write(&token, format!("{key}\n")).expect("write token");
    ClientFiles {
        public_pem,
        token,
        cert: svc.cfg.state_dir.join("tls/cert.pem"),
        _dir: dir,
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn run(mut cmd: tokio::process::Command) -> Run {
    let out = cmd.output().await.expect("the client runs");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `push.py URL TOKEN_FILE PUBLIC_KEY PARAM VALUE [extra…]`.
async fn push_py(svc: &Svc, f: &ClientFiles, param: &str, value: &str, extra: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(example("push.py"))
        .arg(&svc.url)
        .arg(&f.token)
        .arg(&f.public_pem)
        .args([param, value, "--cafile"])
        .arg(&f.cert)
        .args(extra);
    run(cmd).await
}

/// `push.sh URL TOKEN_FILE PUBLIC_KEY PARAM VALUE` with `env`.
async fn push_sh(
    svc: &Svc,
    f: &ClientFiles,
    param: &str,
    value: &str,
    env: &[(&str, &str)],
) -> Run {
    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(example("push.sh"))
        .arg(&svc.url)
        .arg(&f.token)
        .arg(&f.public_pem)
        .args([param, value])
        .env("CURL_CA_BUNDLE", &f.cert)
        .envs(env.iter().copied());
    run(cmd).await
}

fn answer_ids(r: &Run) -> Value {
    let v: Value = serde_json::from_str(r.stdout.trim())
        .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {}{}", r.stdout, r.stderr));
    v["payload"]["metrics_ids"].clone()
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE.encode(bytes)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// RSA-OAEP (SHA-256, MGF1 SHA-256) with the openssl CLI.
fn openssl_oaep(public_pem: &Path, plain: &[u8]) -> Vec<u8> {
    let dir = tmp();
    let (i, o) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::write(&i, plain).expect("write");
    let st = std::process::Command::new("openssl")
        .args(["pkeyutl", "-encrypt", "-pubin", "-inkey"])
        .arg(public_pem)
        .args([
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            "rsa_oaep_md:sha256",
            "-pkeyopt",
            "rsa_mgf1_md:sha256",
            "-in",
        ])
        .arg(&i)
        .arg("-out")
        .arg(&o)
        .status()
        .expect("openssl runs");
    assert!(st.success(), "openssl pkeyutl failed");
    std::fs::read(&o).expect("read")
}

/// AES-256-CBC with the openssl CLI; `pad: false` leaves the plaintext
/// unpadded (it must be whole blocks).
fn openssl_cbc(key: &[u8; 32], iv: &[u8; 16], plain: &[u8], pad: bool) -> Vec<u8> {
    let dir = tmp();
    let (i, o) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::write(&i, plain).expect("write");
    let mut cmd = std::process::Command::new("openssl");
    cmd.args([
        "enc",
        "-aes-256-cbc",
        "-K",
        &hex(key),
        "-iv",
        &hex(iv),
        "-in",
    ])
    .arg(&i)
    .arg("-out")
    .arg(&o);
    if !pad {
        cmd.arg("-nopad");
    }
    assert!(
        cmd.status().expect("openssl runs").success(),
        "openssl enc failed"
    );
    std::fs::read(&o).expect("read")
}

/// A secure push body sealed with the openssl CLI: `plain` encrypted as
/// VK's documentation says, to `public_pem`.
fn seal(public_pem: &Path, plain: &[u8], pad: bool) -> Value {
    let (key, iv) = ([0x42u8; 32], [0x17u8; 16]);
    json!({
        "encryptedPayload": b64url(&openssl_cbc(&key, &iv, plain, pad)),
        "encryptedKey": b64url(&openssl_oaep(public_pem, &key)),
        "encryptedIV": b64url(&openssl_oaep(public_pem, &iv)),
    })
}

fn plaintext(metrics: Value, timestamp_ms: i64) -> Vec<u8> {
    json!({"payload": {"metrics": metrics}, "timestamp": format_utc_ms(timestamp_ms)})
        .to_string()
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_push_counts_per_day_and_refuses_what_it_must() {
    let dir = tmp();
    let svc = Svc::start(config(dir.path())).await;
    let (a, ca) = billed(&svc, "a", &["cpu", "ram"]).await;
    let (b, cb) = billed(&svc, "b", &["cpu"]).await;
    assert_eq!(ca.params, ["cpu", "ram"]);
    assert_ne!(ca.service_token, cb.service_token);
    assert_eq!(ca.secondary_key, None);

    // VK's example body; base_date in another zone counts on its UTC day.
    let (st, body) = simple(
        &svc,
        Some(&ca.service_token),
        &json!({"broker_id": "7", "base_date": "2024-03-20T23:30:00-01:00", "usages": [
            {"instance_uuid": a, "param": "cpu", "value": 2.5},
            {"instance_uuid": a, "param": "cpu", "value": 1.25},
            {"instance_uuid": a.to_uppercase(), "param": "ram", "value": 10},
        ]}),
    )
    .await;
    assert_eq!((st, &body), (200, &json!({"accepted": 3})));
    let (st, _) = simple(
        &svc,
        Some(&ca.service_token),
        &json!({"base_date": "2024-03-22T00:00:00Z", "usages": [
            {"instance_uuid": a, "param": "cpu", "value": 4}]}),
    )
    .await;
    assert_eq!(st, 200);
    let before = now_ms();
    let (st, _) = simple(
        &svc,
        Some(&ca.service_token),
        &json!({"usages": [{"instance_uuid": a, "param": "ram", "value": 0}]}),
    )
    .await;
    assert_eq!(st, 200);
    let u = usage(&svc, &a).await;
    let cpu = param(&u, "cpu");
    assert_eq!((cpu.total, cpu.count), (7.75, 3));
    let days: Vec<(&str, f64, i64)> = cpu
        .days
        .iter()
        .map(|d| (d.day.as_str(), d.total, d.count))
        .collect();
    assert_eq!(days, [("2024-03-21", 3.75, 2), ("2024-03-22", 4.0, 1)]);
    let ram = param(&u, "ram");
    assert_eq!((ram.total, ram.count), (10.0, 2));
    assert_eq!(
        ram.days.last().map(|d| d.day.clone()),
        Some(format_utc_ms(before)[..10].to_string())
    );
    assert!(ram.last_push_at.is_some_and(|t| t >= before), "{ram:?}");

    // Refusals, each naming its problem; nothing of a refused push counts.
    let one = |inst: &str, p: &str, v: Value| json!({"usages": [{"instance_uuid": inst, "param": p, "value": v}]});
    let cases: Vec<(Option<&str>, Value, u16, &str)> = vec![
        (
            None,
            one(&a, "cpu", json!(1)),
            401,
            "service token required",
        ),
        (
            Some("mst_wrong"),
            one(&a, "cpu", json!(1)),
            401,
            "unknown service token",
        ),
        // Another instance's usage with this token: the other's token is
        // needed, whatever else the push holds.
        (
            Some(&ca.service_token),
            one(&b, "cpu", json!(1)),
            401,
            "not this service token's instance",
        ),
        (
            Some(&cb.service_token),
            one(&a, "cpu", json!(1)),
            401,
            "not this service token's instance",
        ),
        (
            Some(&ca.service_token),
            one(&a, "gpu", json!(1)),
            400,
            "unknown param \"gpu\"",
        ),
        (
            Some(&cb.service_token),
            one(&b, "ram", json!(1)),
            400,
            "unknown param \"ram\"",
        ),
        (
            Some(&ca.service_token),
            one(&a, "cpu", json!(-0.5)),
            400,
            "finite number >= 0",
        ),
        (
            Some(&ca.service_token),
            one(&a, "cpu", json!("1")),
            400,
            "invalid JSON body",
        ),
        (
            Some(&ca.service_token),
            json!({"usages": []}),
            400,
            "usages is empty",
        ),
        (
            Some(&ca.service_token),
            json!({"usage": []}),
            400,
            "unknown field `usage`",
        ),
        (
            Some(&ca.service_token),
            json!({"base_date": "2024-03-20", "usages": [{"instance_uuid": a, "param": "cpu", "value": 1}]}),
            400,
            "base_date \"2024-03-20\" is not an RFC 3339",
        ),
        (
            Some(&ca.service_token),
            json!({"usages": [{"instance_uuid": a, "param": "cpu", "value": 1},
                              {"instance_uuid": a, "param": "disk", "value": 1}]}),
            400,
            "usages[1]: unknown param \"disk\"",
        ),
    ];
    for (token, body, want, msg) in cases {
        let (st, answer) = simple(&svc, token, &body).await;
        assert_eq!(st, want, "{body}: {answer}");
        assert!(error_of(&answer).contains(msg), "{body}: {answer}");
    }
    // Over 64 KiB: 413, whatever the content.
    let big = format!(
        "{{\"usages\": [], \"broker_id\": \"{}\"}}",
        "x".repeat(65 << 10)
    );
    let (st, answer) = raw(
        &svc,
        "POST",
        SIMPLE,
        &[("x-service-token", &ca.service_token)],
        Some(big.into_bytes()),
    )
    .await;
    assert_eq!(st, 413, "{answer}");
    assert!(error_of(&answer).contains("over 64 KiB"), "{answer}");
    let u2 = usage(&svc, &a).await;
    assert_eq!(u2.params, u.params, "a refused push changed the usage");
    // The log: the three accepted pushes, then every refusal whose token
    // named instance a (the 413 is refused before the token is read).
    let accepted: Vec<(u16, u32, u32)> = u
        .pushes
        .iter()
        .map(|p| (p.status, p.metrics, p.counted))
        .collect();
    assert_eq!(accepted, [(200, 3, 3), (200, 1, 1), (200, 1, 1)]);
    let refused: Vec<(u16, &str)> = u2.pushes[3..]
        .iter()
        .map(|p| (p.status, p.error.as_deref().unwrap_or("")))
        .collect();
    assert_eq!(refused.len(), 8, "{refused:?}");
    assert!(
        refused.contains(&(
            400,
            "usages[0]: unknown param \"gpu\"; this instance bills [\"cpu\", \"ram\"]"
        )),
        "{refused:?}"
    );
    assert!(
        refused.iter().all(|(st, e)| *st >= 400 && !e.is_empty()),
        "{refused:?}"
    );
    assert!(
        u2.pushes
            .iter()
            .all(|p| p.scheme == PushScheme::Simple && p.key_created_at.is_none())
    );
    assert_eq!(param(&usage(&svc, &b).await, "cpu").count, 0);

    // An instance without billing has no credentials (404) and no agent
    // token; a deleted one's token no longer pushes.
    let (plain, keys) = svc.create(&spec("plain", &[])).await;
    let e = svc
        .operator()
        .instance_billing(&InstanceId::parse(&plain).expect("id"))
        .await
        .expect_err("no billing");
    assert!(e.is_not_found(), "{e}");
    let agent = svc.pair(&plain, &keys, "h").await;
    let (st, body) = svc
        .req(
            "GET",
            "/v1/agent/billing-token",
            Some(&agent.credential),
            None,
        )
        .await;
    assert_eq!(st, 404, "{body}");
    let (st, _) = svc.op("DELETE", &format!("/v1/instances/{a}"), None).await;
    assert_eq!(st, 200);
    let (st, answer) = simple(&svc, Some(&ca.service_token), &one(&a, "cpu", json!(1))).await;
    assert_eq!(st, 401, "{answer}");
    assert!(error_of(&answer).contains("has no billing"), "{answer}");
    let (st, _) = secure(&svc, DECRYPT, &ca.key, &json!({})).await;
    assert_eq!(st, 401);

    // The credentials survive a restart (SQLite), and so does the key pair.
    let key_before = svc.operator().billing_public_key().await.expect("key");
    let mut svc = svc;
    svc.restart().await;
    let (st, _) = simple(&svc, Some(&cb.service_token), &one(&b, "cpu", json!(2))).await;
    assert_eq!(st, 200);
    assert_eq!(param(&usage(&svc, &b).await, "cpu").total, 2.0);
    assert_eq!(
        svc.operator().billing_public_key().await.expect("key"),
        key_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_push_with_the_python_client() {
    if !python_cryptography() {
        return;
    }
    let dir = tmp();
    let svc = Svc::start(config(dir.path())).await;
    let (id, creds) = billed(&svc, "py", &["cpu_usage", "ram_usage"]).await;
    let f = client_files(&svc, &creds.key).await;

    // The test endpoint answers, signed, and counts nothing; the PKCS#1
    // form of the key (VK's Go example) works as well.
    let r = push_py(&svc, &f, "cpu_usage", "85.5", &["--test", "--id", "5001"]).await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(answer_ids(&r), json!([5001]));
    let pkcs1 = ClientFiles {
        _dir: tmp(),
        public_pem: f.public_pem.with_extension("pkcs1.pem"),
        token: f.token.clone(),
        cert: f.cert.clone(),
    };
    let pk = svc.operator().billing_public_key().await.expect("key");
    assert!(
        pk.rsa_public_key_pem
            .starts_with("-----BEGIN RSA PUBLIC KEY-----\n")
    );
    std::fs::write(&pkcs1.public_pem, &pk.rsa_public_key_pem).expect("write");
    let r = push_py(&svc, &pkcs1, "cpu_usage", "1", &["--test", "--id", "x"]).await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(answer_ids(&r), json!(["x"]));
    assert_eq!(param(&usage(&svc, &id).await, "cpu_usage").count, 0);

    // Pushed: counted once; the same id again is acknowledged, not counted.
    for _ in 0..2 {
        let r = push_py(&svc, &f, "cpu_usage", "85.5", &["--id", "5001"]).await;
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
        assert_eq!(answer_ids(&r), json!([5001]));
    }
    let u = usage(&svc, &id).await;
    assert_eq!(
        (param(&u, "cpu_usage").total, param(&u, "cpu_usage").count),
        (85.5, 1)
    );

    // VK's Go example's shape (payload as base64url JSON), string ids,
    // base_date's day, and 50 metrics at once.
    let r = push_py(
        &svc,
        &f,
        "ram_usage",
        "16384",
        &[
            "--go-payload",
            "--id",
            "unique-id",
            "--base-date",
            "2024-10-24T10:00:00Z",
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(answer_ids(&r), json!(["unique-id"]));
    let r = push_py(
        &svc,
        &f,
        "cpu_usage",
        "1",
        &["--count", "50", "--id", "100"],
    )
    .await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(answer_ids(&r).as_array().map(Vec::len), Some(50));
    let u = usage(&svc, &id).await;
    assert_eq!(
        (param(&u, "cpu_usage").total, param(&u, "cpu_usage").count),
        (135.5, 51)
    );
    let ram = param(&u, "ram_usage");
    assert_eq!(
        (ram.total, ram.days[0].day.as_str()),
        (16384.0, "2024-10-24")
    );

    // Refusals the client reports (exit 1, the service's error).
    let other_dir = tmp();
    let other_key = other_dir.path().join("other.pem");
    let other_pub = other_dir.path().join("other.pub.pem");
    assert!(
        std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out"
            ])
            .arg(&other_key)
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl")
            .success()
    );
    assert!(
        std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&other_key)
            .arg("-out")
            .arg(&other_pub)
            .status()
            .expect("openssl")
            .success()
    );
    let other = ClientFiles {
        _dir: tmp(),
        public_pem: other_pub,
        token: f.token.clone(),
        cert: f.cert.clone(),
    };
    let stale = format_utc_ms(now_ms() - 3_700_000);
    let ahead = format_utc_ms(now_ms() + 600_000);
    for (files, param_name, extra, want) in [
        (
            &f,
            "cpu_usage",
            vec!["--count", "51"],
            "has 51 metrics; at most 50",
        ),
        (
            &f,
            "cpu_usage",
            vec!["--timestamp", stale.as_str()],
            "stale timestamp",
        ),
        (
            &f,
            "cpu_usage",
            vec!["--timestamp", ahead.as_str()],
            "stale timestamp",
        ),
        // The client prints the error body as JSON (quotes escaped).
        (&f, "gpu_usage", vec![], r#"unknown param \"gpu_usage\""#),
        (
            &other,
            "cpu_usage",
            vec![],
            "encryptedKey cannot be decrypted with the marketplace's key",
        ),
    ] {
        let r = push_py(&svc, files, param_name, "1", &extra).await;
        assert_eq!(r.code, 1, "{extra:?}: {}{}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains("HTTP 400") && r.stderr.contains(want),
            "{extra:?}: {}",
            r.stderr
        );
    }

    // Bodies the client prepares (--dry-run), altered here.
    let body = |r: &Run| -> Value { serde_json::from_str(r.stdout.trim()).expect("request JSON") };
    let r = push_py(&svc, &f, "cpu_usage", "2", &["--dry-run", "--id", "7"]).await;
    let good = body(&r);
    let ct = base64::engine::general_purpose::URL_SAFE
        .decode(good["encryptedPayload"].as_str().expect("payload"))
        .expect("base64url");
    // Flipping bit 5 of the last byte of the second-to-last block flips it
    // in the padding byte: 1..=16 becomes 33..=48, never valid PKCS#7.
    let mut bad_pad = ct.clone();
    let at = bad_pad.len() - 17;
    bad_pad[at] ^= 0x20;
    let mut tampered = good.clone();
    tampered["encryptedPayload"] = json!(b64url(&bad_pad));
    let (st, answer) = secure(&svc, PUSH, &creds.key, &tampered).await;
    assert_eq!(st, 400, "{answer}");
    assert!(error_of(&answer).contains("bad PKCS#7 padding"), "{answer}");
    let mut short = good.clone();
    short["encryptedPayload"] = json!(b64url(&ct[..ct.len() - 5]));
    let (st, answer) = secure(&svc, PUSH, &creds.key, &short).await;
    assert_eq!(st, 400, "{answer}");
    assert!(error_of(&answer).contains("multiple of 16"), "{answer}");
    let mut swapped = good.clone();
    swapped["encryptedKey"] = good["encryptedIV"].clone();
    let (st, answer) = secure(&svc, PUSH, &creds.key, &swapped).await;
    assert_eq!(st, 400, "{answer}");
    assert!(error_of(&answer).contains("AES-256 key is 32"), "{answer}");
    // Standard base64 without padding is accepted too.
    let standard = |s: &Value| {
        json!(
            s.as_str()
                .expect("text")
                .replace('-', "+")
                .replace('_', "/")
                .trim_end_matches('=')
        )
    };
    let std_body = json!({
        "encryptedPayload": standard(&good["encryptedPayload"]),
        "encryptedKey": standard(&good["encryptedKey"]),
        "encryptedIV": standard(&good["encryptedIV"]),
    });
    let (st, answer) = secure(&svc, PUSH, &creds.key, &std_body).await;
    assert_eq!(st, 200, "{answer}");
    assert_eq!(answer["payload"]["metrics_ids"], json!([7]));
    // No key, an unknown key: 401.
    let (st, _) = raw(&svc, "POST", PUSH, &[], Some(good.to_string().into_bytes())).await;
    assert_eq!(st, 401);
    let (st, answer) = secure(&svc, PUSH, "mpk_unknown", &good).await;
    assert_eq!(st, 401);
    assert!(error_of(&answer).contains("unknown access key"), "{answer}");
    let u = usage(&svc, &id).await;
    assert_eq!(
        param(&u, "cpu_usage").total,
        137.5,
        "only the good push counted"
    );

    // Time per secure push decryption, seen from the client (one HTTP
    // round trip on loopback with RSA-OAEP ×2, AES and a signature).
    let n = 40;
    let started = Instant::now();
    for _ in 0..n {
        let (st, _) = secure(&svc, DECRYPT, &creds.key, &good).await;
        assert_eq!(st, 200);
    }
    eprintln!(
        "secure push decrypt round trip: {:.2} ms on average over {n}",
        started.elapsed().as_secs_f64() * 1000.0 / f64::from(n)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_push_with_the_openssl_client() {
    let dir = tmp();
    let svc = Svc::start(config(dir.path())).await;
    let (id, creds) = billed(&svc, "sh", &["storage"]).await;
    let f = client_files(&svc, &creds.key).await;

    let r = push_sh(
        &svc,
        &f,
        "storage",
        "2.55786",
        &[("ENDPOINT", "decrypt"), ("METRIC_ID", "9")],
    )
    .await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(answer_ids(&r), json!([9]));
    assert_eq!(param(&usage(&svc, &id).await, "storage").count, 0);
    for (metric, value) in [("9", "2.5"), ("sh-1", "1.5"), ("9", "2.5")] {
        let r = push_sh(
            &svc,
            &f,
            "storage",
            value,
            &[
                ("METRIC_ID", metric),
                ("BASE_DATE", "2024-03-20T14:00:00+03:00"),
            ],
        )
        .await;
        assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    }
    let u = usage(&svc, &id).await;
    let storage = param(&u, "storage");
    assert_eq!((storage.total, storage.count), (4.0, 2), "{u:?}");
    assert_eq!(storage.days[0].day, "2024-03-20");
    // Refused: an unknown param (400), a wrong key (401).
    let r = push_sh(&svc, &f, "cpu", "1", &[]).await;
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("HTTP 400") && r.stderr.contains(r#"unknown param \"cpu\""#),
        "{}",
        r.stderr
    );
    std::fs::write(&f.token, "mpk_not-a-key\n").expect("write");
    let r = push_sh(&svc, &f, "storage", "1", &[]).await;
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("HTTP 401"), "{}", r.stderr);
}

/// Keys rotate every half lifetime (3 s here) while both clients keep
/// pushing; the Python client follows auth/key and rewrites the token
/// file, the bash client reads it. No push is refused and the totals are
/// exact; the first key expires on its own (401).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_in_the_middle_loses_no_usage() {
    if !python_cryptography() {
        return;
    }
    let dir = tmp();
    let mut cfg = config(dir.path());
    cfg.billing_key_ttl = Duration::from_secs(6);
    let svc = Svc::start(cfg).await;
    let (id, creds) = billed(&svc, "rot", &["requests"]).await;
    let f = client_files(&svc, &creds.key).await;
    let first_key = creds.key.clone();
    let started = Instant::now();
    let mut keys = vec![first_key.clone()];
    let mut pushed = 0u32;
    let mut n = 0u32;
    while started.elapsed() < Duration::from_secs(14) {
        n += 1;
        let metric = n.to_string();
        let r = push_py(&svc, &f, "requests", "1", &["--rotate", "--id", &metric]).await;
        assert_eq!(r.code, 0, "push {n}: {}{}", r.stdout, r.stderr);
        pushed += 1;
        n += 1;
        let metric = n.to_string();
        let r = push_sh(&svc, &f, "requests", "2", &[("METRIC_ID", &metric)]).await;
        assert_eq!(r.code, 0, "push {n}: {}{}", r.stdout, r.stderr);
        pushed += 2;
        let key = std::fs::read_to_string(&f.token)
            .expect("token")
            .trim()
            .to_string();
        if keys.last() != Some(&key) {
            keys.push(key);
        }
    }
    let u = usage(&svc, &id).await;
    let p = param(&u, "requests");
    assert_eq!(
        (p.total, p.count),
        (f64::from(pushed), i64::from(n)),
        "{u:?}"
    );
    assert!(
        keys.len() >= 3,
        "the key rotated only {} times",
        keys.len() - 1
    );
    eprintln!("{n} pushes, {} keys", keys.len());
    // The first key is long expired.
    let (st, answer) = raw(
        &svc,
        "GET",
        AUTH_KEY,
        &[("authorization", &format!("Bearer {first_key}"))],
        None,
    )
    .await;
    assert_eq!(st, 401, "{answer}");
    assert!(error_of(&answer).contains("expired at"), "{answer}");
    // A push with it is refused and logged for the instance, naming the
    // key by its issue time; the accepted pushes used every key in turn.
    let (st, answer) = secure(&svc, PUSH, &first_key, &json!({})).await;
    assert_eq!(st, 401, "{answer}");
    let u = usage(&svc, &id).await;
    let last = u.pushes.last().expect("logged");
    assert_eq!(
        (last.scheme, last.status, last.key_created_at),
        (
            PushScheme::Secure,
            401,
            u.keys.first().map(|k| k.created_at)
        )
    );
    assert!(
        last.error
            .as_deref()
            .is_some_and(|e| e.contains("expired at"))
    );
    let used = u.keys_used();
    assert!(
        used.len() >= 3 && u.keys.len() >= used.len(),
        "{used:?} {:?}",
        u.keys
    );
}

/// The agent's route and auth/key share the rotation: a new key after half
/// the lifetime with the old one as `secondary_key`, the old one valid
/// until its own expiry, then 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_token_rotates_with_overlap() {
    let dir = tmp();
    let mut cfg = config(dir.path());
    cfg.billing_key_ttl = Duration::from_secs(4);
    let svc = Svc::start(cfg).await;
    let (id, keys) = svc.create(&spec("agent", &["cpu"])).await;
    let agent = svc.pair(&id, &keys, "h").await;
    async fn token(svc: &Svc, credential: &str) -> ibkit_api::wire::BillingToken {
        let (st, body) = svc
            .req("GET", "/v1/agent/billing-token", Some(credential), None)
            .await;
        assert_eq!(st, 200, "{body}");
        serde_json::from_value(body).expect("BillingToken")
    }
    let t1 = token(&svc, &agent.credential).await;
    assert_eq!(t1.instance_uuid, id);
    assert_eq!(t1.secondary_key, None);
    // The key issued at creation is due at half its 4 s lifetime.
    assert!(
        (1000..=2000).contains(&t1.refresh_after_ms),
        "{}",
        t1.refresh_after_ms
    );
    let (st, _) = svc.req("GET", "/v1/agent/billing-token", None, None).await;
    assert_eq!(st, 401);
    tokio::time::sleep(Duration::from_millis(t1.refresh_after_ms + 100)).await;
    let t2 = token(&svc, &agent.credential).await;
    assert_ne!(t2.key, t1.key);
    assert_eq!(t2.secondary_key.as_deref(), Some(t1.key.as_str()));
    // auth/key with the old key still works and says the same.
    let auth = format!("Bearer {}", t1.key);
    let (st, answer) = raw(&svc, "GET", AUTH_KEY, &[("authorization", &auth)], None).await;
    assert_eq!(st, 200, "{answer}");
    assert_eq!(
        answer,
        json!({"instance_uuid": id, "key": t2.key, "secondary_key": t1.key})
    );
    // The operator sees the same keys.
    let creds = svc
        .operator()
        .instance_billing(&InstanceId::parse(&id).expect("id"))
        .await
        .expect("billing");
    assert_eq!(
        (creds.key.as_str(), creds.secondary_key.as_deref()),
        (t2.key.as_str(), Some(t1.key.as_str()))
    );
    assert!(
        (1000..=2000).contains(&t2.refresh_after_ms),
        "{}",
        t2.refresh_after_ms
    );
    // Past its own expiry (created ~2 s before t2) the old key is refused.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (st, answer) = raw(&svc, "GET", AUTH_KEY, &[("authorization", &auth)], None).await;
    assert_eq!(st, 401, "{answer}");
    assert!(error_of(&answer).contains("expired at"), "{answer}");
    let t3 = token(&svc, &agent.credential).await;
    assert_ne!(t3.key, t2.key);
    assert_ne!(t3.secondary_key.as_deref(), Some(t1.key.as_str()));
}

/// Whatever arrives on the billing routes, the answer is a JSON error
/// (400/401/413), never a 500 or a dropped connection, and nothing counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_never_panics_nor_500s() {
    let dir = tmp();
    let svc = Svc::start(config(dir.path())).await;
    let (id, creds) = billed(&svc, "garbage", &["cpu"]).await;
    let f = client_files(&svc, &creds.key).await;
    let bearer = format!("Bearer {}", creds.key);
    let now = now_ms();

    // Valid wrapping (openssl) around plaintexts of every wrong shape.
    let mut bodies: Vec<Vec<u8>> = Vec::new();
    let sealed = |plain: &[u8], pad: bool| seal(&f.public_pem, plain, pad).to_string().into_bytes();
    for plain in [
        b"".to_vec(),
        b"null".to_vec(),
        b"\xff\xfe not utf-8".to_vec(),
        b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[".to_vec(),
        "[".repeat(20_000).into_bytes(),
        json!({"payload": {"metrics": [{"id": 1, "param": "cpu", "value": 1}]}}).to_string().into_bytes(),
        json!({"payload": [], "timestamp": format_utc_ms(now)}).to_string().into_bytes(),
        json!({"payload": "%%%", "timestamp": format_utc_ms(now)}).to_string().into_bytes(),
        json!({"payload": b64url(b"{\"metrics\": 5}"), "timestamp": format_utc_ms(now)}).to_string().into_bytes(),
        json!({"payload": {"metrics": [{"id": null, "param": "cpu", "value": 1}]}, "timestamp": format_utc_ms(now)}).to_string().into_bytes(),
        json!({"payload": {"metrics": [{"id": 1, "param": "cpu", "value": 1}]}, "timestamp": "9999-99-99T99:99:99Z"}).to_string().into_bytes(),
        plaintext(json!([{"id": 1, "param": "cpu", "value": 1, "extra": true}]), now),
        plaintext(json!([{"id": [1], "param": "cpu", "value": 1}]), now),
        plaintext(json!([{"id": 1, "param": "cpu", "value": 1}]), i64::MIN / 2),
        b"{\"payload\":{\"metrics\":[{\"id\":1,\"param\":\"cpu\",\"value\":1e999}]},\"timestamp\":\"2024-03-20T14:00:00Z\"}".to_vec(),
    ] {
        bodies.push(sealed(&plain, true));
    }
    // Whole blocks without padding: the last byte is not valid PKCS#7.
    bodies.push(sealed(&[b'{'; 32], false));
    bodies.push(sealed(&[0u8; 16], false));
    // Broken wrappings.
    let good = seal(
        &f.public_pem,
        &plaintext(json!([{"id": 1, "param": "cpu", "value": 1}]), now),
        true,
    );
    let mut pseudo = 0x2545_f491_4f6c_dd1du64;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                pseudo ^= pseudo << 13;
                pseudo ^= pseudo >> 7;
                pseudo ^= pseudo << 17;
                pseudo.to_le_bytes()[0]
            })
            .collect()
    };
    for (field, value) in [
        ("encryptedKey", json!(b64url(&random(256)))),
        ("encryptedKey", json!(b64url(&random(255)))),
        ("encryptedKey", json!(b64url(&random(4096)))),
        ("encryptedKey", json!("")),
        ("encryptedKey", json!("====")),
        ("encryptedKey", json!("a-b+c")),
        ("encryptedKey", json!(5)),
        ("encryptedIV", json!(b64url(&random(256)))),
        ("encryptedIV", good["encryptedKey"].clone()),
        ("encryptedPayload", json!(b64url(&random(64)))),
        ("encryptedPayload", json!(b64url(&random(0)))),
        ("encryptedPayload", json!("not base64!")),
        ("encryptedPayload", Value::Null),
        ("extra", json!(1)),
    ] {
        let mut b = good.clone();
        b[field] = value;
        bodies.push(b.to_string().into_bytes());
    }
    for junk in [
        b"".to_vec(),
        b"{".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"\"x\"".to_vec(),
        b"{\"encryptedPayload\": 1e999}".to_vec(),
        "[".repeat(60_000).into_bytes(),
        random(1000),
        random(60_000),
    ] {
        bodies.push(junk);
    }
    let mut statuses = std::collections::BTreeMap::new();
    for body in &bodies {
        for path in [DECRYPT, PUSH] {
            let (st, answer) = raw(
                &svc,
                "POST",
                path,
                &[("authorization", &bearer)],
                Some(body.clone()),
            )
            .await;
            assert!(
                st == 400 && !error_of(&answer).is_empty(),
                "{path} {:?}: {st} {answer}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            );
            *statuses
                .entry(error_of(&answer).chars().take(40).collect::<String>())
                .or_insert(0) += 1;
        }
        let (st, answer) = raw(
            &svc,
            "POST",
            SIMPLE,
            &[("x-service-token", &creds.service_token)],
            Some(body.clone()),
        )
        .await;
        assert!(
            st == 400 && !error_of(&answer).is_empty(),
            "simple: {st} {answer}"
        );
    }
    // Over the limit: 413 before any parsing (the body is read before the
    // credentials are checked); a bad credential: 401 before parsing.
    for path in [DECRYPT, PUSH] {
        let (st, _) = raw(
            &svc,
            "POST",
            path,
            &[("authorization", &bearer)],
            Some(random(70_000)),
        )
        .await;
        assert_eq!(st, 413);
        let (st, _) = raw(
            &svc,
            "POST",
            path,
            &[("authorization", "Bearer ключ")],
            Some(random(10)),
        )
        .await;
        assert_eq!(st, 401);
        let (st, _) = raw(
            &svc,
            "POST",
            path,
            &[("authorization", "Basic eDp5")],
            Some(random(10)),
        )
        .await;
        assert_eq!(st, 401);
    }
    for header in ["", " ", "x".repeat(8000).as_str()] {
        let (st, _) = raw(
            &svc,
            "POST",
            SIMPLE,
            &[("x-service-token", header)],
            Some(random(10)),
        )
        .await;
        assert_eq!(st, 401, "{header:?}");
    }
    // The sealed good body still works, and is the only thing counted.
    let (st, answer) = secure(&svc, PUSH, &creds.key, &good).await;
    assert_eq!(st, 200, "{answer}");
    let u = usage(&svc, &id).await;
    assert_eq!((param(&u, "cpu").total, param(&u, "cpu").count), (1.0, 1));
    let (st, _) = raw(&svc, "GET", "/healthz", &[], None).await;
    assert_eq!(st, 200);
    eprintln!("{} bodies; errors: {statuses:#?}", bodies.len());
}

/// The example image's own client (`ibkit-example-billing`, which its
/// timer runs) against the real service: both schemes accepted from one
/// configuration, and a wrong option refused and logged for the instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_images_client_pushes_both_schemes() {
    let dir = tmp();
    let svc = Svc::start(config(dir.path())).await;
    let (id, creds) = billed(&svc, "img", &["requests", "cpu_hours"]).await;
    let f = client_files(&svc, &creds.key).await;
    let service_token = dir.path().join("service-token");
    std::fs::write(&service_token, &creds.service_token).expect("write");
    let client = example("../../scripts/debian-image/rootfs/usr/local/bin/ibkit-example-billing");
    let conf = dir.path().join("billing.env");
    let run_with = |params: &str| {
        std::fs::write(
            &conf,
            format!(
                "# as the boot-test manifest's setup writes it\nURL={}\nCA_FILE={}\nSCHEME=secure simple\n\
                 TOKEN_FILE={}\nPUBLIC_KEY={}\nSERVICE_TOKEN_FILE={}\nINSTANCE_UUID={id}\nPARAMS={params}\n",
                svc.url,
                f.cert.display(),
                f.token.display(),
                f.public_pem.display(),
                service_token.display()
            ),
        )
        .expect("write conf");
        let mut cmd = tokio::process::Command::new(&client);
        cmd.env("IBKIT_EXAMPLE_BILLING_CONF", &conf);
        run(cmd)
    };
    let r = run_with("requests=1 cpu_hours=0.5").await;
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let u = usage(&svc, &id).await;
    assert_eq!(param(&u, "requests").total, 2.0, "{u:?}");
    assert_eq!(param(&u, "cpu_hours").total, 1.0, "{u:?}");
    let schemes: Vec<(PushScheme, u16)> = u.pushes.iter().map(|p| (p.scheme, p.status)).collect();
    assert_eq!(
        schemes,
        [
            (PushScheme::Secure, 200),
            (PushScheme::Secure, 200),
            (PushScheme::Simple, 200)
        ]
    );
    // A broken client: an option the plan does not have.
    let r = run_with("requests=1 cpu=1").await;
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("unknown param"), "{}", r.stderr);
    let u = usage(&svc, &id).await;
    let refused: Vec<(PushScheme, u16)> = u
        .pushes
        .iter()
        .filter(|p| p.status != 200)
        .map(|p| (p.scheme, p.status))
        .collect();
    assert_eq!(
        refused,
        [(PushScheme::Secure, 400), (PushScheme::Simple, 400)]
    );
    // Without its configuration the client does nothing (the image's default).
    std::fs::remove_file(&conf).expect("rm");
    let mut cmd = tokio::process::Command::new(&client);
    cmd.env("IBKIT_EXAMPLE_BILLING_CONF", &conf);
    let r = run(cmd).await;
    assert_eq!((r.code, r.stderr.as_str()), (0, ""));
}
