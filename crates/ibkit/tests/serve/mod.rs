//! Harness for end-to-end tests of `ibkit serve` with real `ibkit-agent`
//! processes on loopback: real TLS (the generated self-signed certificate,
//! pinned by the agents), real SQLite on disk, real scripts.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ibkit_api::operator::{CreateInstanceQuery, HostName, InstanceId};
use ibkit_client::{ClientError, OperatorClient, Secret, ServiceEndpoint};
use serde_json::{Value, json};

pub fn ibkit_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_ibkit"))
}

/// `ibkit SUBCOMMAND ARGS` on a test directory's state: deployments in
/// `DIR/deploy`, the service's in `DIR/serve` (the deploy harnesses add
/// their backend's flags).
pub fn ibkit_in(dir: &Path, subcommand: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(ibkit_bin());
    cmd.arg(subcommand)
        .args(args)
        .arg("--state")
        .arg(dir.join("deploy"))
        .arg("--serve-state")
        .arg(dir.join("serve"))
        .env("IBKIT_LOG", "warn");
    cmd
}

/// The agent binary: the portable release build when scripts/test.sh made
/// one (`IBKIT_AGENT_BINARY`), else the debug build next to `ibkit`.
pub fn agent_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("IBKIT_AGENT_BINARY") {
        return PathBuf::from(path);
    }
    let path = ibkit_bin().with_file_name("ibkit-agent");
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "ibkit-agent", "--bin", "ibkit-agent"])
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building ibkit-agent failed");
    }
    assert!(path.exists(), "{} missing", path.display());
    path
}

/// Waits until `f` returns Some, polling every 50 ms, or panics after
/// `timeout` with `what` and the last value seen.
pub fn wait_for<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    wait_every(what, timeout, Duration::from_millis(50), f)
}

/// [`wait_for`], polling every `every` (for checks that cost more).
pub fn wait_every<T>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(every);
    }
}

/// Runs `cmd` (stdout captured, stderr passed through) until it exits,
/// calling `meanwhile` every `every`; kills it and panics after `timeout`.
pub fn run_until(
    mut cmd: Command,
    what: &str,
    timeout: Duration,
    every: Duration,
    mut meanwhile: impl FnMut(),
) -> std::process::Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{what} does not start: {e}"));
    let start = Instant::now();
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            panic!("{what} did not finish within {timeout:?}");
        }
        meanwhile();
        std::thread::sleep(every);
    }
}

/// A running `ibkit serve`.
pub struct Service {
    pub state: PathBuf,
    pub url: String,
    pub cert_sha256: String,
    pub addr: SocketAddr,
    pub token: String,
    child: Option<Child>,
    args: Vec<String>,
    pub client: reqwest::blocking::Client,
    /// The typed operator client (`ibkit-client`), on its own runtime.
    pub operator: OperatorClient,
    runtime: std::sync::Arc<tokio::runtime::Runtime>,
}

impl Service {
    /// Starts a service on a free loopback port with short monitor timeouts.
    pub fn start(state: &Path, extra: &[&str]) -> Service {
        let mut args: Vec<String> = [
            "--heartbeat-interval",
            "500ms",
            "--agent-timeout",
            "3s",
            "--health-timeout",
            "3s",
            "--monitor-interval",
            "200ms",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(state, "127.0.0.1:0", args)
    }

    pub fn spawn(state: &Path, listen: &str, args: Vec<String>) -> Service {
        Self::spawn_with_env(state, listen, args, &[])
    }

    /// [`Service::spawn`] with extra environment variables (e.g. the
    /// clouds.yaml its recovery rounds use).
    pub fn spawn_with_env(
        state: &Path,
        listen: &str,
        args: Vec<String>,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Service {
        std::fs::create_dir_all(state).expect("state dir");
        let mut child = Command::new(ibkit_bin())
            .envs(env.iter().copied())
            .arg("serve")
            .args(["--listen", listen])
            .arg("--state-dir")
            .arg(state)
            .arg("--agent-binary")
            .arg(agent_bin())
            .args(&args)
            .env("IBKIT_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(state.join("serve.log"))
                    .expect("log file"),
            ))
            .spawn()
            .expect("ibkit serve starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("reads");
        let parts: Vec<&str> = line.split_whitespace().collect();
        assert!(
            parts.len() == 7 && parts[..4] == ["ibkit", "serve", "listening", "on"],
            "unexpected first line {line:?}; log:\n{}",
            std::fs::read_to_string(state.join("serve.log")).unwrap_or_default()
        );
        let url = parts[4].to_string();
        let cert_sha256 = parts[6].to_string();
        let addr: SocketAddr = url
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .parse()
            .expect("url has ip:port");
        let token = std::fs::read_to_string(state.join("operator-token"))
            .expect("operator token")
            .trim()
            .to_string();
        let cert = std::fs::read(state.join("tls/cert.pem")).expect("cert");
        let client = reqwest::blocking::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&cert).expect("pem"))
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        let operator = OperatorClient::new(&ServiceEndpoint {
            url: url.clone(),
            cert_sha256: Some(cert_sha256.clone()),
            operator_token: Secret::new(token.clone()),
        })
        .expect("operator client");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        Service {
            state: state.to_path_buf(),
            url,
            cert_sha256,
            addr,
            token,
            child: Some(child),
            args,
            client,
            operator,
            runtime: std::sync::Arc::new(runtime),
        }
    }

    /// kill -9, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same state directory and port.
    pub fn restart(&mut self) {
        self.kill9();
        let listen = self.addr.to_string();
        // The port may linger briefly; retry a few times.
        let state = self.state.clone();
        let args = self.args.clone();
        *self = Self::spawn(&state, &listen, args);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.state.join("serve.log")).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .expect("GET");
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    pub fn send(&self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let r = self
            .client
            .request(m, format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().unwrap_or(Value::Null))
    }

    /// One typed operator call; panics with the service's answer.
    fn call<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = Result<T, ClientError>>,
    ) -> T {
        self.runtime
            .block_on(f)
            .unwrap_or_else(|e| panic!("{what}: {e}\nserve log tail:\n{}", tail(&self.log(), 20)))
    }

    /// Creates an instance; returns (id, {host: pairing_key}).
    pub fn create(&self, spec: &Value) -> (String, Vec<(String, String)>) {
        let spec = serde_json::from_value(spec.clone()).expect("an instance spec");
        let created = self.call(
            "create",
            self.operator
                .create_instance(&spec, &CreateInstanceQuery::default()),
        );
        let keys = created
            .hosts
            .into_iter()
            .map(|h| (h.name.to_string(), h.pairing_key))
            .collect();
        (created.id.to_string(), keys)
    }

    pub fn instance(&self, id: &str) -> Value {
        let id = InstanceId::parse(id).expect("instance id");
        let detail = self.call("instance", self.operator.instance(&id));
        serde_json::to_value(detail).expect("json")
    }

    pub fn steps(&self, id: &str, host: &str) -> Vec<Value> {
        let id = InstanceId::parse(id).expect("instance id");
        let host = HostName::parse(host).expect("host name");
        let steps = self.call("steps", self.operator.steps(&id, &host));
        steps
            .into_iter()
            .map(|s| serde_json::to_value(s).expect("json"))
            .collect()
    }

    pub fn step(&self, id: &str, host: &str, group: &str, index: u64) -> Value {
        self.steps(id, host)
            .into_iter()
            .find(|s| s["group"] == group && s["index"] == index)
            .unwrap_or_else(|| panic!("no step {host}/{group}/{index}"))
    }

    /// Waits for the instance status to become `want`.
    pub fn wait_status(&self, id: &str, want: &str, timeout: Duration) -> Value {
        let start = Instant::now();
        loop {
            let last = self.instance(id);
            if last["status"] == want {
                return last;
            }
            if start.elapsed() > timeout {
                panic!(
                    "instance {id} did not become {want} in {timeout:?}; last: {last:#}\nserve log tail:\n{}",
                    tail(&self.log(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn wait_step(&self, id: &str, host: &str, group: &str, index: u64, want: &str) -> Value {
        wait_for(
            &format!("{host}/{group}/{index} to be {want}"),
            Duration::from_secs(60),
            || {
                let s = self.step(id, host, group, index);
                (s["status"] == want).then_some(s)
            },
        )
    }
}

impl Service {
    /// Open recovery requests of an instance.
    pub fn recovery_requests(&self, instance: &str) -> Vec<Value> {
        let id = InstanceId::parse(instance).expect("instance id");
        let open = self.call("recovery", self.operator.open_recovery_requests(&id));
        open.into_iter()
            .map(|r| serde_json::to_value(r).expect("json"))
            .collect()
    }
}

/// One agent per host, each in `dir/HOST`, paired with the instance's keys.
pub fn start_agents(
    svc: &Service,
    dir: &Path,
    instance: &str,
    keys: &[(String, String)],
    hosts: &[&str],
) -> Vec<Agent> {
    hosts
        .iter()
        .map(|h| {
            let key = &keys.iter().find(|(name, _)| name == h).expect("host key").1;
            Agent::start(svc, &dir.join(h), instance, h, key)
        })
        .collect()
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A running `ibkit-agent` with its own state directory.
pub struct Agent {
    pub dir: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
}

impl Agent {
    pub fn start(svc: &Service, dir: &Path, instance: &str, host: &str, key: &str) -> Agent {
        std::fs::create_dir_all(dir).expect("agent dir");
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "server_url = \"{}\"\nserver_cert_sha256 = \"{}\"\ninstance = \"{instance}\"\nhost = \"{host}\"\npairing_key = \"{key}\"\nstate_dir = \"{}\"\n",
                svc.url,
                svc.cert_sha256,
                dir.join("state").display()
            ),
        )
        .expect("config");
        let mut agent = Agent {
            dir: dir.to_path_buf(),
            config,
            child: None,
        };
        agent.spawn();
        agent
    }

    pub fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .expect("agent log");
        let child = Command::new(agent_bin())
            .args(["run", "--config"])
            .arg(&self.config)
            .env("IBKIT_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("dup")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("agent starts");
        self.child = Some(child);
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The agent's credential, once it paired (waits up to 30 s: the agent
    /// pairs in the background, and a test may get here first).
    pub fn credential(&self) -> String {
        let path = self.dir.join("state/credential");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            match std::fs::read_to_string(&path) {
                Ok(c) if !c.trim().is_empty() => return c.trim().to_string(),
                Ok(_) | Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => panic!(
                    "no credential in {} after 30 s: {other:?}\nagent log:\n{}",
                    path.display(),
                    self.log()
                ),
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub use ibkit_support::text::tail_lines as tail;

/// A one-step bash group.
pub fn group(name: &str, hosts: &[&str], steps: Value) -> Value {
    json!({"name": name, "hosts": hosts, "steps": steps})
}
