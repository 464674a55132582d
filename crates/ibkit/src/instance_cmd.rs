//! `ibkit instance create|status`: the operator's view of `ibkit serve`'s
//! instances, for agents that run outside `ibkit deploy` (hosts the operator
//! manages, tests, the demo). Exit codes of `status`: 0 running, 1 any other
//! status (or still applying after `--wait`), 2 the service could not be asked.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use clap::{Subcommand, ValueEnum};
use ibkit_api::InstanceSpec;
use ibkit_api::operator::{
    CreateInstanceQuery, GroupName, HostHealth, HostName, InstanceCreated, InstanceDetail,
    InstanceId, StepView,
};
use ibkit_api::wire::{InstanceStatus, StepStatus};
use ibkit_client::OperatorClient;
use serde::Serialize;

use crate::service_args::ServiceArgs;

#[derive(clap::Args)]
pub struct InstanceArgs {
    #[command(subcommand)]
    command: InstanceCommand,
    #[command(flatten)]
    service: ServiceArgs,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

#[derive(Subcommand)]
enum InstanceCommand {
    /// Create an instance from its spec (JSON, as `POST /v1/instances`
    /// takes it); prints its id.
    Create {
        /// The instance spec (see examples/cluster/instance.json).
        spec: PathBuf,
        /// Write each host's agent configuration here as `HOST.toml` (mode
        /// 0600: it holds the pairing key), for agents started by hand;
        /// each agent keeps its state in `HOST-state/` next to it.
        #[arg(long)]
        agent_configs: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// An instance's status and, per host, pairing, health and steps with
    /// their attempts, exit codes and results.
    Status {
        id: InstanceId,
        /// Wait until the instance is no longer `applying`, at most this
        /// long (e.g. 90s, 5m).
        #[arg(long)]
        wait: Option<ibkit_api::Duration>,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
}

pub fn instance(a: InstanceArgs) -> Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run(a))
}

async fn run(a: InstanceArgs) -> Result<ExitCode> {
    let endpoint = a.service.endpoint()?;
    let client = OperatorClient::new(&endpoint)?;
    match a.command {
        InstanceCommand::Create {
            spec,
            agent_configs,
            format,
        } => {
            let text = std::fs::read_to_string(&spec)
                .with_context(|| format!("cannot read {}", spec.display()))?;
            let parsed: InstanceSpec = serde_json::from_str(&text)
                .with_context(|| format!("{} is not an instance spec", spec.display()))?;
            let created = client
                .create_instance(&parsed, &CreateInstanceQuery::default())
                .await?;
            if let Some(dir) = &agent_configs {
                write_agent_configs(dir, &endpoint, &created)?;
            }
            match format {
                Format::Text => println!("{}", created.id),
                Format::Json => println!(
                    "{}",
                    serde_json::json!({
                        "id": created.id,
                        "hosts": created.hosts.iter().map(|h| &h.name).collect::<Vec<_>>(),
                    })
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        InstanceCommand::Status { id, wait, format } => {
            let start = Instant::now();
            let mut detail = client.instance(&id).await?;
            if let Some(limit) = wait {
                while detail.status == InstanceStatus::Applying && start.elapsed() < limit.to_std()
                {
                    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                    detail = client.instance(&id).await?;
                }
            }
            let report = gather(&client, detail).await?;
            match format {
                Format::Text => print!("{}", render_text(&report)),
                Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
            }
            if report.status == InstanceStatus::Applying && wait.is_some() {
                eprintln!(
                    "ibkit instance: {id} is still applying after {}",
                    wait.map(|w| w.to_string()).unwrap_or_default()
                );
            }
            Ok(if report.status == InstanceStatus::Running {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}

/// One `agent.toml` per host, readable by its owner only.
fn write_agent_configs(
    dir: &Path,
    endpoint: &ibkit_client::ServiceEndpoint,
    created: &InstanceCreated,
) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let write_private = |path: &Path, text: &str| -> Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        std::io::Write::write_all(&mut f, text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))
    };
    for h in &created.hosts {
        // The key goes to a file of its own, which the agent deletes once
        // paired: the config keeps no secret that outlives its use.
        let key_path = dir.join(format!("{}.pairing-key", h.name));
        write_private(&key_path, &format!("{}\n", h.pairing_key))?;
        let cfg = ibkit_agent::config::Config {
            server_url: endpoint.url.clone(),
            server_cert_sha256: endpoint.cert_sha256.clone(),
            instance: created.id.to_string(),
            host: h.name.to_string(),
            pairing_key: String::new(),
            pairing_key_file: Some(key_path),
            state_dir: dir.join(format!("{}-state", h.name)),
            max_output_bytes: ibkit_agent::config::DEFAULT_MAX_OUTPUT_BYTES,
            max_structured_result_bytes: ibkit_agent::config::DEFAULT_MAX_STRUCTURED_RESULT_BYTES,
            heartbeat_interval: None,
            billing_token: None,
        };
        let path = dir.join(format!("{}.toml", h.name));
        let text = cfg
            .to_toml()
            .with_context(|| format!("cannot write the agent configuration of {}", h.name))?;
        write_private(&path, &text)?;
    }
    Ok(())
}

#[derive(Serialize)]
struct StatusReport {
    id: InstanceId,
    status: InstanceStatus,
    status_reason: Option<String>,
    generation: i64,
    hosts: Vec<HostReport>,
}

#[derive(Serialize)]
struct HostReport {
    name: HostName,
    paired: bool,
    health: HostHealth,
    unhealthy_reason: Option<String>,
    steps: Vec<StepReport>,
}

#[derive(Serialize)]
struct StepReport {
    group: GroupName,
    index: u32,
    status: StepStatus,
    attempts: i64,
    exit_code: Option<i64>,
    error: Option<String>,
    /// The raw result's last line (what the step printed last).
    result_tail: Option<String>,
    /// The structured result's top-level keys (values stay in the service:
    /// they may be secrets such as join tokens).
    structured_keys: Vec<String>,
}

async fn gather(client: &OperatorClient, detail: InstanceDetail) -> Result<StatusReport> {
    let mut hosts = Vec::new();
    for h in detail.hosts {
        let mut steps = Vec::new();
        for s in client.steps(&detail.id, &h.name).await? {
            steps.push(step_report(client, &detail.id, &h.name, s).await?);
        }
        hosts.push(HostReport {
            name: h.name,
            paired: h.paired,
            health: h.health,
            unhealthy_reason: h.unhealthy_reason,
            steps,
        });
    }
    Ok(StatusReport {
        id: detail.id,
        status: detail.status,
        status_reason: detail.status_reason,
        generation: detail.generation,
        hosts,
    })
}

async fn step_report(
    client: &OperatorClient,
    id: &InstanceId,
    host: &HostName,
    s: StepView,
) -> Result<StepReport> {
    let (result_tail, structured_keys) = if s.status.is_done() {
        match client.result(id, host, &s.group, s.index).await {
            Ok(r) => (
                r.raw.as_deref().and_then(last_line),
                match r.structured {
                    Some(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
                    _ => Vec::new(),
                },
            ),
            Err(e) if e.is_not_found() => (None, Vec::new()),
            Err(e) => bail!("result of {host}/{}/{}: {e}", s.group, s.index),
        }
    } else {
        (None, Vec::new())
    };
    Ok(StepReport {
        group: s.group,
        index: s.index,
        status: s.status,
        attempts: s.attempts,
        exit_code: s.exit_code,
        error: s.error,
        result_tail,
        structured_keys,
    })
}

fn last_line(text: &str) -> Option<String> {
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?.trim();
    const MAX: usize = 120;
    Some(if line.chars().count() > MAX {
        format!("{}…", line.chars().take(MAX).collect::<String>())
    } else {
        line.to_string()
    })
}

fn render_text(r: &StatusReport) -> String {
    let mut out = format!(
        "instance {}: {} (generation {})\n",
        r.id,
        r.status.as_str(),
        r.generation
    );
    if let Some(why) = &r.status_reason {
        out.push_str(&format!("  reason: {why}\n"));
    }
    for h in &r.hosts {
        out.push_str(&format!(
            "  host {}: {}, health {}{}\n",
            h.name,
            if h.paired { "paired" } else { "not paired" },
            h.health.as_str(),
            h.unhealthy_reason
                .as_deref()
                .map(|w| format!(" ({w})"))
                .unwrap_or_default()
        ));
        for s in &h.steps {
            let mut line = format!(
                "    {}/{}: {} (attempts {}",
                s.group,
                s.index,
                s.status.as_str(),
                s.attempts
            );
            if let Some(code) = s.exit_code {
                line.push_str(&format!(", exit {code}"));
            }
            line.push(')');
            if let Some(t) = &s.result_tail {
                line.push_str(&format!(" result: {t:?}"));
            }
            if !s.structured_keys.is_empty() {
                line.push_str(&format!(
                    " structured: {{{}}}",
                    s.structured_keys.join(", ")
                ));
            }
            if let Some(e) = &s.error {
                line.push_str(&format!(" error: {e}"));
            }
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::last_line;

    #[test]
    fn last_line_skips_blank_lines_and_caps_length() {
        assert_eq!(last_line("a\nb\n\n").as_deref(), Some("b"));
        assert_eq!(last_line("\n  \n"), None);
        let long = "x".repeat(300);
        assert_eq!(last_line(&long).map(|l| l.chars().count()), Some(121));
    }
}
