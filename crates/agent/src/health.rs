//! Health checks: one timer per check, results posted at each period.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ibkit_api::wire::HealthReport;
use ibkit_api::{HealthCheck, HealthKind};
use ibkit_support::clock::now_ms;

use crate::client::Api;
use crate::executor::{AttemptInput, describe_exit, prepare_attempt, spawn_runner, wait_attempt};
use crate::journal::StateDir;

/// Longest wait of a port or HTTP probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs one check once: (ok, detail).
pub async fn run_check(
    check: &HealthCheck,
    state: &StateDir,
    runner_exe: &std::path::Path,
) -> (bool, String) {
    let timeout = check.period.to_std().min(PROBE_TIMEOUT);
    match &check.kind {
        HealthKind::PortHealth { host, port } => {
            let addr = format!("{host}:{port}");
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&addr)).await {
                Ok(Ok(_)) => (true, format!("connected to {addr}")),
                Ok(Err(e)) => (false, format!("cannot connect to {addr}: {e}")),
                Err(_) => (false, format!("no connection to {addr} within {timeout:?}")),
            }
        }
        HealthKind::HttpHealth {
            method, http_codes, ..
        } => {
            let url = check.http_url().unwrap_or_default();
            let client = match reqwest::Client::builder()
                .tls_danger_accept_invalid_certs(true)
                .timeout(timeout)
                .build()
            {
                Ok(c) => c,
                Err(e) => return (false, format!("cannot build an HTTP client: {e}")),
            };
            let method = match reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes()) {
                Ok(m) => m,
                Err(_) => return (false, format!("invalid HTTP method {method:?}")),
            };
            match client.request(method.clone(), &url).send().await {
                Ok(resp) => {
                    let code = resp.status().as_u16();
                    let ok = http_codes.contains(&code);
                    (
                        ok,
                        format!(
                            "{method} {url}: {code}{}",
                            if ok { "" } else { " (not an accepted code)" }
                        ),
                    )
                }
                Err(e) => (false, format!("{method} {url}: {e}")),
            }
        }
        HealthKind::ScriptHealth {
            script_type,
            script,
            options,
        } => {
            let adir: PathBuf = state.health_dir(&check.name);
            let env = vec![("IBKIT_HEALTH_CHECK".to_string(), check.name.clone())];
            let run = async {
                prepare_attempt(
                    &adir,
                    AttemptInput {
                        kind: *script_type,
                        content: script,
                        options,
                        env,
                        max_output_bytes: 64 * 1024,
                        max_structured_bytes: crate::config::DEFAULT_MAX_STRUCTURED_RESULT_BYTES,
                        references: Vec::new(),
                        results_dir: None,
                    },
                )?;
                let child = spawn_runner(runner_exe, &adir)?;
                wait_attempt(&adir, Some(child)).await
            };
            match run.await {
                Ok(exit) => {
                    let ok = !exit.timed_out
                        && exit.error.is_none()
                        && exit
                            .exit_code
                            .is_some_and(|c| options.exit_codes.contains(&c));
                    let log = std::fs::read_to_string(adir.join("log")).unwrap_or_default();
                    let tail: String = log
                        .chars()
                        .rev()
                        .take(2000)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect();
                    (ok, format!("{}\n{tail}", describe_exit(&exit, options)))
                }
                Err(e) => (false, format!("cannot run the script: {e}")),
            }
        }
    }
}

/// One task per check, each posting its result at its period.
pub fn start(
    checks: Vec<HealthCheck>,
    api: Api,
    state: StateDir,
    runner_exe: PathBuf,
) -> Vec<tokio::task::JoinHandle<()>> {
    checks
        .into_iter()
        .map(|check| {
            let api = api.clone();
            let state = state.clone();
            let runner_exe = runner_exe.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(check.period.to_std());
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let start = Instant::now();
                    let at_ms = now_ms();
                    let (ok, detail) = run_check(&check, &state, &runner_exe).await;
                    let report = HealthReport {
                        check: check.name.clone(),
                        ok,
                        detail,
                        at_ms,
                        duration_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
                    };
                    if let Err(e) = api.health(&report).await {
                        tracing::warn!(check = %check.name, "cannot post the health result: {e}");
                    }
                }
            })
        })
        .collect()
}
