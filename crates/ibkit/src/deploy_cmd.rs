//! `ibkit deploy up|status|outputs|down|watch|list|gc`: the command line of
//! `ibkit-deploy`'s controller, on the local QEMU backend or an OpenStack
//! cloud (`--backend openstack`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};
use clap::{Subcommand, ValueEnum};
use ibkit_client::{OperatorClient, ServiceEndpoint};
use ibkit_deploy::controller::Progress;
use ibkit_deploy::fleet::watch_fleet;
use ibkit_deploy::openstack::{
    CloudApi, ConfigSources, OpenStackBackend, OpenStackSettings, load_cloud,
};
use ibkit_deploy::outputs::format_outputs;
use ibkit_deploy::qemu_backend::{NetworkConfig, QemuBackend};
use ibkit_deploy::{
    AnyBackend, BackendSpec, Controller, DeployManifest, DeployStatus, StatusView, Store,
};
use ibkit_vm::Accel;

use crate::service_args::ServiceArgs;

#[derive(clap::Args)]
pub struct DeployArgs {
    #[command(subcommand)]
    command: DeployCommand,
    #[command(flatten)]
    common: Common,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum Format {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum DeployAccel {
    Tcg,
    Kvm,
}

#[derive(Subcommand)]
enum DeployCommand {
    /// Deploy a manifest, or update a deployed one (only what changed is
    /// redone); waits until the instance is running or failed.
    Up {
        /// The deployment manifest (TOML, see docs/deploy.md).
        manifest: PathBuf,
        /// Stay and recover dead VMs until interrupted.
        #[arg(long)]
        watch: bool,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// The deployment: status, attempts with their failure reasons,
    /// recoveries, VMs, per host steps and health.
    Status {
        /// Deployment name, or its manifest.
        target: String,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// The outputs; sensitive ones are masked unless --show-sensitive.
    Outputs {
        /// Deployment name, or its manifest.
        target: String,
        #[arg(long)]
        show_sensitive: bool,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Usage the app pushed to the marketplace emulator: totals per option
    /// and day, pushes refused with their reason, keys used.
    Usage {
        /// Deployment name, or its manifest.
        target: String,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Delete the VMs and the instance.
    Down {
        /// Deployment name, or its manifest.
        target: String,
        /// Do not keep the VMs' serial logs and disks (default: the
        /// manifest's `keep_evidence`).
        #[arg(long)]
        no_evidence: bool,
    },
    /// Recover dead VMs of running deployments (all, or the named ones)
    /// until interrupted.
    Watch { names: Vec<String> },
    /// Every deployment with its status.
    List {
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// OpenStack: delete the servers, ports, routers and networks ibkit
    /// created (by tag and metadata) whose deployment is not in --state
    /// any more: what an interrupted `up` or a lost state directory left.
    Gc {
        /// Only resources at least this old (e.g. 30m, 2h, 1d).
        #[arg(long, default_value = "1h")]
        older_than: ibkit_api::Duration,
        /// List what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
pub(crate) enum BackendKind {
    /// VMs on this machine (QEMU, a private bridge).
    Qemu,
    /// Nova servers on the cloud from clouds.yaml (--os-cloud).
    Openstack,
}

/// The OpenStack backend's cloud and network.
#[derive(clap::Args, Clone)]
struct OpenStackArgs {
    /// The cloud in clouds.yaml (default: $OS_CLOUD, else the only cloud in
    /// the file, else the OS_* variables).
    #[arg(long, global = true)]
    os_cloud: Option<String>,
    /// Put every server on this existing network (name or id) instead of
    /// a network, subnet and router per deployment.
    #[arg(long, global = true)]
    os_network: Option<String>,
    /// The external network of the per-deployment router (default: the
    /// only one; none: no router).
    #[arg(long, global = true)]
    os_external_network: Option<String>,
    /// The per-deployment subnet.
    #[arg(long, global = true, default_value = "192.168.77.0/24")]
    os_subnet_cidr: String,
    /// How long a server may take to become ACTIVE.
    #[arg(long, global = true, default_value = "15m")]
    os_active_timeout: ibkit_api::Duration,
    /// How long a server may take to be deleted.
    #[arg(long, global = true, default_value = "5m")]
    os_delete_timeout: ibkit_api::Duration,
    /// How long an uploaded image may take to become active in Glance.
    #[arg(long, global = true, default_value = "30m")]
    os_upload_timeout: ibkit_api::Duration,
    /// Give every server a floating IP on the external network (released
    /// with the server).
    #[arg(long, global = true)]
    os_floating_ip: bool,
    /// Keep the images uploaded for a deployment when it goes `down` (by
    /// default an uploaded image no other deployment uses is deleted).
    #[arg(long, global = true)]
    os_keep_images: bool,
}

/// The local QEMU backend's network and accelerator (`ibkit deploy`, and
/// `ibkit serve --recover-deployments`).
#[derive(clap::Args, Clone)]
pub struct QemuArgs {
    /// The private network's Linux bridge.
    #[arg(long, global = true, default_value = "ibkbr0")]
    bridge: String,
    /// The host's address and prefix on the bridge; VMs get addresses from
    /// the same subnet.
    #[arg(long, global = true, default_value = "10.77.0.1/24")]
    network: String,
    /// QEMU accelerator (`ibkit boot-test` finds out whether KVM works here).
    #[arg(long, global = true, value_enum, default_value = "tcg")]
    accel: DeployAccel,
}

#[derive(clap::Args)]
pub(crate) struct Common {
    /// Where deployments and the QEMU backend keep their state.
    #[arg(
        long,
        global = true,
        env = "IBKIT_DEPLOY_STATE",
        default_value = "/var/lib/ibkit/deploy"
    )]
    pub(crate) state: PathBuf,
    #[command(flatten)]
    service: ServiceArgs,
    /// The service as VMs reach it (default: the service's port on the
    /// bridge address).
    #[arg(long, global = true)]
    guest_service_url: Option<String>,
    /// Where new deployments run (default: qemu); commands on an existing
    /// deployment use the backend it was deployed on.
    #[arg(long, global = true, value_enum, env = "IBKIT_DEPLOY_BACKEND")]
    pub(crate) backend: Option<BackendKind>,
    #[command(flatten)]
    qemu: QemuArgs,
    #[command(flatten)]
    openstack: OpenStackArgs,
    /// No progress lines on stderr.
    #[arg(long, short, global = true)]
    quiet: bool,
}

fn parse_network(s: &str, bridge: &str) -> Result<NetworkConfig> {
    let (addr, prefix) = s
        .split_once('/')
        .with_context(|| format!("--network {s:?}: write ADDRESS/PREFIX, e.g. 10.77.0.1/24"))?;
    Ok(NetworkConfig {
        bridge: bridge.to_string(),
        host_addr: addr
            .parse()
            .with_context(|| format!("--network {s:?}: {addr:?} is not an IPv4 address"))?,
        prefix_len: prefix
            .parse()
            .with_context(|| format!("--network {s:?}: {prefix:?} is not a prefix length"))?,
        ..NetworkConfig::default()
    })
}

fn progress(quiet: bool) -> Progress {
    let start = Instant::now();
    Box::new(move |line: &str| {
        if !quiet {
            eprintln!(
                "ibkit deploy [{:>6.1}s] {line}",
                start.elapsed().as_secs_f64()
            );
        }
    })
}

/// A deployment name, or the name inside a manifest file.
fn resolve_name(target: &str) -> Result<String> {
    let p = Path::new(target);
    if p.is_file() {
        let m = DeployManifest::load(p)?;
        return Ok(m.instance.name);
    }
    if !ibkit_api::is_valid_name(target) {
        bail!("{target:?} is neither a manifest file nor a deployment name");
    }
    Ok(target.to_string())
}

/// The backend new deployments go to, from the flags.
fn spec_from_flags(c: &Common) -> BackendSpec {
    match c.backend.unwrap_or(BackendKind::Qemu) {
        BackendKind::Qemu => BackendSpec::Qemu,
        BackendKind::Openstack => BackendSpec::Openstack {
            // Resolved (from $OS_CLOUD or the only cloud) when the backend
            // is made; records keep the resolved name.
            cloud: c.openstack.os_cloud.clone().unwrap_or_default(),
            network: c.openstack.os_network.clone(),
            floating_ips: c.openstack.os_floating_ip,
        },
    }
}

/// The backend a deployment runs on: its record's (an explicit `--backend`
/// or `--os-cloud` contradicting it is refused), else the flags'.
fn spec_for(c: &Common, name: Option<&str>) -> Result<BackendSpec> {
    if let Some(name) = name {
        let store = Store::open(&c.state)?;
        if let Ok(record) = store.load(name)
            && record.status != DeployStatus::Deleted
        {
            let contradicts = match (&record.backend, c.backend) {
                (BackendSpec::Qemu, Some(BackendKind::Openstack)) => true,
                (BackendSpec::Openstack { .. }, Some(BackendKind::Qemu)) => true,
                (BackendSpec::Openstack { cloud, .. }, _) => c
                    .openstack
                    .os_cloud
                    .as_ref()
                    .is_some_and(|wanted| wanted != cloud),
                _ => false,
            };
            if contradicts {
                bail!(
                    "{name} runs on {}; the --backend/--os-cloud given contradict it (leave them out: a deployment always uses its own backend)",
                    record.backend
                );
            }
            return Ok(record.backend);
        }
    }
    Ok(spec_from_flags(c))
}

fn qemu_backend(state: &Path, qemu: &QemuArgs) -> Result<(QemuBackend, NetworkConfig)> {
    let network = parse_network(&qemu.network, &qemu.bridge)?;
    let accel = match qemu.accel {
        DeployAccel::Tcg => Accel::Tcg,
        DeployAccel::Kvm => Accel::Kvm,
    };
    let backend = QemuBackend::new(state.join("qemu"), network.clone())?.with_accel(accel);
    Ok((backend, network))
}

/// The OpenStack backend for `cloud` ("": `$OS_CLOUD`, the only cloud, or
/// the `OS_*` variables); `os`: the command line's settings, `None` for the
/// defaults (recovery inside `ibkit serve`, where the network exists).
fn openstack_backend(
    state: &Path,
    os: Option<&OpenStackArgs>,
    cloud: &str,
    network: Option<String>,
    floating_ips: bool,
) -> Result<OpenStackBackend> {
    let wanted = (!cloud.is_empty()).then_some(cloud);
    let config = load_cloud(wanted, &ConfigSources::from_env())?;
    let api = CloudApi::new(config)?;
    let mut settings = OpenStackSettings::new(state.join("openstack").join("evidence"));
    settings.network = network;
    settings.floating_ips = floating_ips;
    if let Some(os) = os {
        settings.external_network = os.os_external_network.clone();
        settings.subnet_cidr = os.os_subnet_cidr.clone();
        settings.active_timeout = os.os_active_timeout.to_std();
        settings.delete_timeout = os.os_delete_timeout.to_std();
        settings.upload_timeout = os.os_upload_timeout.to_std();
        settings.keep_images = os.os_keep_images;
    }
    Ok(OpenStackBackend::new(api, settings))
}

/// A controller for deployments on `spec`.
async fn controller_for_spec(
    c: &Common,
    endpoint: &ServiceEndpoint,
    spec: BackendSpec,
) -> Result<Controller<AnyBackend>> {
    let (backend, guest_url) = match spec {
        BackendSpec::Qemu => {
            let (backend, network) = qemu_backend(&c.state, &c.qemu)?;
            let guest_url = match &c.guest_service_url {
                Some(u) => u.clone(),
                None => ibkit_deploy::service_url::with_host(
                    &endpoint.url,
                    &network.host_addr.to_string(),
                )?,
            };
            (AnyBackend::Qemu(backend), guest_url)
        }
        BackendSpec::Openstack {
            cloud,
            network,
            floating_ips,
        } => {
            let backend =
                openstack_backend(&c.state, Some(&c.openstack), &cloud, network, floating_ips)?;
            // Only `up` and recoveries hand the URL to VMs; they check it.
            let guest_url = c
                .guest_service_url
                .clone()
                .unwrap_or_else(|| endpoint.url.clone());
            (AnyBackend::OpenStack(Box::new(backend)), guest_url)
        }
    };
    let store = Store::open(&c.state)?;
    let client = OperatorClient::new(endpoint)?;
    Ok(Controller::new(backend, client, store, guest_url, progress(c.quiet)).await?)
}

/// A controller for the deployment `name` (on its own backend), or for new
/// deployments (`None`: the flags' backend).
async fn controller(c: &Common, name: Option<&str>) -> Result<Controller<AnyBackend>> {
    let endpoint = c.service.endpoint()?;
    let spec = spec_for(c, name)?;
    controller_for_spec(c, &endpoint, spec).await
}

/// Servers on a cloud cannot reach the service at a loopback address.
fn require_guest_url(c: &Common, spec: &BackendSpec) -> Result<()> {
    if spec != &BackendSpec::Qemu && c.guest_service_url.is_none() {
        bail!(
            "--backend openstack needs --guest-service-url: the address at which servers on the cloud reach `ibkit serve` (e.g. its floating IP)"
        );
    }
    Ok(())
}

/// `ibkit serve --recover-deployments DIR`: the recovery rounds of every
/// deployment in `DIR`, inside the service (as `ibkit deploy watch`),
/// talking to the service over loopback with its own token and pin. QEMU
/// VMs reach the service on the bridge address; servers on a cloud at the
/// service's public URL, with the cloud's credentials from the service's
/// environment (clouds.yaml, `OS_*`).
pub async fn recover_in_service(
    server: &ibkit_server::Server,
    deploy_state: PathBuf,
    qemu: QemuArgs,
) -> Result<tokio::task::JoinHandle<()>> {
    let token_file = server.operator_token_file();
    let token = std::fs::read_to_string(&token_file)
        .with_context(|| format!("cannot read {}", token_file.display()))?;
    let endpoint = ServiceEndpoint {
        url: server.local_url(),
        cert_sha256: server.cert_sha256.clone(),
        operator_token: ibkit_deploy::Secret::new(token.trim()),
    };
    let public_url = server.url.clone();
    let store = Store::open(&deploy_state)?;
    eprintln!(
        "ibkit serve: recovering dead VMs of the deployments in {}",
        deploy_state.display()
    );
    Ok(tokio::spawn(async move {
        let make = |spec: BackendSpec| {
            let endpoint = endpoint.clone();
            let qemu = qemu.clone();
            let state = deploy_state.clone();
            let public_url = public_url.clone();
            async move {
                let build = async {
                    let (backend, guest_url) = match spec {
                        BackendSpec::Qemu => {
                            let (backend, network) = qemu_backend(&state, &qemu)?;
                            let url = ibkit_deploy::service_url::with_host(
                                &endpoint.url,
                                &network.host_addr.to_string(),
                            )?;
                            (AnyBackend::Qemu(backend), url)
                        }
                        BackendSpec::Openstack {
                            cloud,
                            network,
                            floating_ips,
                        } => {
                            let backend =
                                openstack_backend(&state, None, &cloud, network, floating_ips)?;
                            (AnyBackend::OpenStack(Box::new(backend)), public_url)
                        }
                    };
                    let client = OperatorClient::new(&endpoint)?;
                    anyhow::Ok(
                        Controller::new(
                            backend,
                            client,
                            Store::open(&state)?,
                            guest_url,
                            Box::new(|line: &str| eprintln!("ibkit serve: recovery: {line}")),
                        )
                        .await?,
                    )
                };
                build.await.map_err(|e| format!("{e:#}"))
            }
        };
        let say = |line: &str| eprintln!("ibkit serve: recovery: {line}");
        watch_fleet(&store, &[], make, &say, std::future::pending()).await;
    }))
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    crate::write_stdout(&format!("{}\n", serde_json::to_string_pretty(v)?))
}

fn fmt_ms(ms: u64) -> String {
    ibkit_support::clock::format_utc(ms / 1000)
}

/// APP-BILLING judged on the deployment's life so far: boot-test's
/// judgement over the emulator's record (the watch began with the first
/// access key).
fn billing_verdict(u: &ibkit_api::operator::InstanceUsage) -> ibkit_rules::Outcome {
    let now = ibkit_support::clock::now_ms();
    let since = u.keys.first().map_or(now, |k| k.created_at);
    let params: Vec<String> = u.params.iter().map(|p| p.param.clone()).collect();
    ibkit_boottest::checks::app_billing::judge(&ibkit_boottest::checks::app_billing::Watch {
        params: &params,
        token_file: None,
        usage: u,
        watched_s: (now.saturating_sub(since)) as f64 / 1000.0,
        ended_at: now,
        place: "ibkit serve's billing emulator",
    })
}

/// `ibkit deploy usage`: totals per option and day, then the pushes
/// refused (newest last), the keys and APP-BILLING's verdict.
fn usage_text(u: &ibkit_api::operator::InstanceUsage, verdict: &ibkit_rules::Outcome) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    if u.params.is_empty() {
        out.push_str("no postpaid option: the manifest has no [billing] params\n");
    }
    for p in &u.params {
        let _ = writeln!(out, "{}: {} ({} values)", p.param, p.total, p.count);
        for d in &p.days {
            let _ = writeln!(out, "  {}  {} ({} values)", d.day, d.total, d.count);
        }
    }
    let accepted = u.pushes.iter().filter(|p| p.status == 200).count();
    let refused: Vec<_> = u.pushes.iter().filter(|p| p.status != 200).collect();
    let _ = writeln!(
        out,
        "pushes: {accepted} accepted, {} refused (the newest {} are kept)",
        refused.len(),
        ibkit_api::operator::MAX_PUSH_LOG
    );
    for p in refused.iter().rev().take(10).rev() {
        let _ = writeln!(
            out,
            "  refused {} {} HTTP {}: {}",
            ibkit_support::clock::format_utc_ms(p.at),
            p.scheme.as_str(),
            p.status,
            p.error.as_deref().unwrap_or("")
        );
    }
    if !u.keys.is_empty() {
        let used = u.keys_used();
        let _ = writeln!(
            out,
            "access keys: {} issued, {} used by accepted secure pushes",
            u.keys.len(),
            used.len()
        );
    }
    let _ = writeln!(out, "APP-BILLING: {}", verdict.status().as_str());
    for f in &verdict.findings {
        let _ = writeln!(out, "  {}", f.message);
    }
    for e in &verdict.evidence {
        let _ = writeln!(out, "  {}", e.detail);
    }
    for why in &verdict.unverified {
        let _ = writeln!(out, "  {why}");
    }
    out
}

fn status_text(s: &StatusView) -> String {
    let mut out = format!(
        "{}  {}  (instance {})\n",
        s.name,
        s.status.as_str(),
        s.instance_id
    );
    if let Some(r) = &s.status_reason {
        out.push_str(&format!("  reason: {}\n", r.replace('\n', "\n    ")));
    }
    out.push_str(&format!("  manifest: {}\n", s.manifest.display()));
    for vm in &s.vms {
        out.push_str(&format!(
            "  vm {:<24} host {:<12} {:<8} {}\n",
            vm.id,
            vm.host,
            vm.state,
            vm.addresses.join(",")
        ));
    }
    if let Some(svc) = &s.service {
        out.push_str(&format!(
            "  service: {}{}\n",
            svc.status,
            svc.status_reason
                .as_deref()
                .map(|r| format!(" ({})", r.lines().next().unwrap_or("")))
                .unwrap_or_default()
        ));
        for h in &svc.hosts {
            let steps: Vec<String> = h.steps.iter().map(|(k, v)| format!("{v} {k}")).collect();
            out.push_str(&format!(
                "    host {:<12} {:<8} {}  steps: {}{}\n",
                h.name,
                if h.paired { "paired" } else { "unpaired" },
                h.health,
                steps.join(", "),
                h.unhealthy_reason
                    .as_deref()
                    .map(|r| format!("  ({r})"))
                    .unwrap_or_default()
            ));
        }
    }
    for a in &s.attempts {
        let took = a
            .ended_ms
            .map(|e| {
                format!(
                    " in {:.1} s",
                    e.saturating_sub(a.started_ms) as f64 / 1000.0
                )
            })
            .unwrap_or_default();
        out.push_str(&format!(
            "  attempt {} ({:?}) started {}: {}{took}\n",
            a.number,
            a.kind,
            fmt_ms(a.started_ms),
            a.outcome.map_or("in progress", DeployStatus::as_str)
        ));
        if let Some(f) = &a.failure {
            out.push_str(&format!("    failure: {}\n", f.replace('\n', "\n      ")));
        }
    }
    for r in &s.recoveries {
        out.push_str(&format!(
            "  recovery of {} ({}) detected {}: {}\n",
            r.host,
            r.kind,
            fmt_ms(r.detected_ms),
            match (r.recovered_ms, &r.failure) {
                (Some(t), _) => format!(
                    "running again after {:.1} s",
                    t.saturating_sub(r.detected_ms) as f64 / 1000.0
                ),
                (None, Some(f)) => format!("failed: {f}"),
                (None, None) => "in progress".into(),
            }
        ));
        out.push_str(&format!("    reason: {}\n", r.reason));
        if let (Some(o), Some(n)) = (&r.old_vm, &r.new_vm) {
            out.push_str(&format!("    {o} -> {n}\n"));
        }
        if let Some(p) = r.evidence.first().and_then(|p| p.parent()) {
            out.push_str(&format!("    evidence: {}\n", p.display()));
        }
    }
    out
}

async fn until_interrupted() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn run_async(a: DeployArgs) -> Result<ExitCode> {
    let c = &a.common;
    match a.command {
        DeployCommand::Up {
            manifest,
            watch,
            format,
        } => {
            // Refuse a broken manifest, or a missing image, before touching
            // anything.
            let m = DeployManifest::load_validated(&manifest)?;
            let spec = spec_for(c, Some(&m.instance.name))?;
            if spec == BackendSpec::Qemu {
                for h in &m.hosts {
                    let image = m.image_path(h);
                    if !image.is_file() {
                        bail!(
                            "host {}: image {} is not a file (hosts[].image is relative to the manifest's directory)",
                            h.name,
                            image.display()
                        );
                    }
                }
            } else {
                require_guest_url(c, &spec)?;
            }
            let ctl = controller(c, Some(&m.instance.name)).await?;
            let record = tokio::select! {
                r = ctl.up(&manifest) => r?,
                _ = until_interrupted() => {
                    eprintln!("ibkit deploy: interrupted; the VMs started so far are kept (`ibkit deploy down` removes them)");
                    return Ok(ExitCode::from(130));
                }
            };
            let status = ctl.status(&record.name).await?;
            if format == Format::Json {
                print_json(&status)?;
            } else {
                crate::write_stdout(&status_text(&status))?;
                if record.status == DeployStatus::Running {
                    let outputs = ctl.outputs(&record.name).await?;
                    if !outputs.is_empty() {
                        crate::write_stdout(&format!(
                            "outputs:\n{}",
                            format_outputs(&outputs, false)
                        ))?;
                    }
                }
            }
            let code = if record.status == DeployStatus::Running {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            };
            if watch && record.status == DeployStatus::Running {
                eprintln!("ibkit deploy: watching {} (Ctrl-C stops)", record.name);
                ctl.watch(std::slice::from_ref(&record.name), until_interrupted())
                    .await;
            }
            Ok(code)
        }
        DeployCommand::Status { target, format } => {
            let name = resolve_name(&target)?;
            let ctl = controller(c, Some(&name)).await?;
            let status = ctl.status(&name).await?;
            if format == Format::Json {
                print_json(&status)?;
            } else {
                crate::write_stdout(&status_text(&status))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        DeployCommand::Outputs {
            target,
            show_sensitive,
            format,
        } => {
            let name = resolve_name(&target)?;
            let ctl = controller(c, Some(&name)).await?;
            let outputs = ctl.outputs(&name).await?;
            if format == Format::Json {
                let v: serde_json::Map<String, serde_json::Value> = outputs
                    .iter()
                    .map(|o| (o.name.clone(), o.to_json(show_sensitive)))
                    .collect();
                print_json(&v)?;
            } else {
                crate::write_stdout(&format_outputs(&outputs, show_sensitive))?;
            }
            Ok(if outputs.iter().any(|o| o.error.is_some()) {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        DeployCommand::Usage { target, format } => {
            let name = resolve_name(&target)?;
            let ctl = controller(c, Some(&name)).await?;
            let usage = ctl.usage(&name).await?;
            let verdict = billing_verdict(&usage);
            if format == Format::Json {
                let mut v = serde_json::to_value(&usage)?;
                v["app_billing"] = serde_json::json!({
                    "status": verdict.status(),
                    "findings": verdict.findings,
                    "evidence": verdict.evidence,
                    "unverified": verdict.unverified,
                });
                print_json(&v)?;
            } else {
                crate::write_stdout(&usage_text(&usage, &verdict))?;
            }
            Ok(if verdict.status() == ibkit_rules::Status::Fail {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        DeployCommand::Down {
            target,
            no_evidence,
        } => {
            let name = resolve_name(&target)?;
            let ctl = controller(c, Some(&name)).await?;
            ctl.down(&name, no_evidence.then_some(false)).await?;
            Ok(ExitCode::SUCCESS)
        }
        DeployCommand::Watch { names } => {
            // Named deployments on their backend; all: the flags' backend.
            // Each deployment on its own backend.
            let store = Store::open(&c.state)?;
            for n in &names {
                spec_for(c, Some(n))?;
            }
            let endpoint = c.service.endpoint()?;
            eprintln!(
                "ibkit deploy: watching {} (Ctrl-C stops)",
                if names.is_empty() {
                    "every deployment".to_string()
                } else {
                    names.join(", ")
                }
            );
            let make = |spec: BackendSpec| {
                let endpoint = &endpoint;
                async move {
                    controller_for_spec(c, endpoint, spec)
                        .await
                        .map_err(|e| format!("{e:#}"))
                }
            };
            let quiet = c.quiet;
            let say = move |line: &str| {
                if !quiet {
                    eprintln!("ibkit deploy: {line}");
                }
            };
            watch_fleet(&store, &names, make, &say, until_interrupted()).await;
            Ok(ExitCode::SUCCESS)
        }
        DeployCommand::List { format } => {
            let store = Store::open(&c.state)?;
            let mut rows = Vec::new();
            for name in store.names()? {
                let r = store.load(&name)?;
                rows.push(serde_json::json!({
                    "name": r.name, "status": r.status, "instance_id": r.instance_id,
                    "status_reason": r.status_reason, "updated_ms": r.updated_ms,
                }));
            }
            if format == Format::Json {
                print_json(&rows)?;
            } else {
                let mut s = String::new();
                for r in &rows {
                    s.push_str(&format!(
                        "{:<24} {:<9} {}\n",
                        r["name"].as_str().unwrap_or(""),
                        r["status"].as_str().unwrap_or(""),
                        r["instance_id"].as_str().unwrap_or("")
                    ));
                }
                crate::write_stdout(&s)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        DeployCommand::Gc {
            older_than,
            dry_run,
            format,
        } => {
            let BackendSpec::Openstack {
                cloud,
                network,
                floating_ips,
            } = spec_from_flags(c)
            else {
                bail!(
                    "gc sweeps an OpenStack cloud: pass --backend openstack (QEMU VMs live in --state and go with `down`)"
                );
            };
            let backend =
                openstack_backend(&c.state, Some(&c.openstack), &cloud, network, floating_ips)?;
            let store = Store::open(&c.state)?;
            let mut live = std::collections::BTreeSet::new();
            for name in store.names()? {
                let r = store.load(&name)?;
                if r.status != DeployStatus::Deleted {
                    live.insert(r.instance_id.to_uuid());
                }
            }
            let report = backend.sweep(&live, older_than.to_std(), dry_run).await?;
            if format == Format::Json {
                print_json(&serde_json::json!({
                    "dry_run": dry_run, "deleted": report, "total": report.total(),
                }))?;
            } else {
                let verb = if dry_run { "would delete" } else { "deleted" };
                let mut out = String::new();
                for (kind, items) in [
                    ("server", &report.servers),
                    ("port", &report.ports),
                    ("router", &report.routers),
                    ("network", &report.networks),
                ] {
                    for i in items {
                        out.push_str(&format!("{verb} {kind} {i}\n"));
                    }
                }
                out.push_str(&format!(
                    "{} {verb}, {} kept (live deployments or younger than {older_than})\n",
                    report.total(),
                    report.kept
                ));
                crate::write_stdout(&out)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `ibkit package deploy|status|outputs|usage|down`: the same commands, on the
/// manifest mapped from a package (one implementation, one set of records).
pub(crate) enum Forward {
    Up {
        manifest: PathBuf,
        watch: bool,
        format: Format,
    },
    Status {
        name: String,
        format: Format,
    },
    Outputs {
        name: String,
        show_sensitive: bool,
        format: Format,
    },
    Usage {
        name: String,
        format: Format,
    },
    Down {
        name: String,
        no_evidence: bool,
    },
}

pub(crate) fn forward(common: Common, f: Forward) -> Result<ExitCode> {
    let command = match f {
        Forward::Up {
            manifest,
            watch,
            format,
        } => DeployCommand::Up {
            manifest,
            watch,
            format,
        },
        Forward::Status { name, format } => DeployCommand::Status {
            target: name,
            format,
        },
        Forward::Outputs {
            name,
            show_sensitive,
            format,
        } => DeployCommand::Outputs {
            target: name,
            show_sensitive,
            format,
        },
        Forward::Usage { name, format } => DeployCommand::Usage {
            target: name,
            format,
        },
        Forward::Down { name, no_evidence } => DeployCommand::Down {
            target: name,
            no_evidence,
        },
    };
    deploy(DeployArgs { command, common })
}

pub fn deploy(a: DeployArgs) -> Result<ExitCode> {
    // Records, overlays, seeds (pairing keys) and logs: this user's only,
    // also where a file's mode is not set explicitly.
    ibkit_server::set_private_umask();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // The QEMU processes are daemons on purpose: they outlive this command.
    rt.block_on(run_async(a))
}

#[cfg(test)]
mod tests {
    use ibkit_api::operator::{
        AccessKeyView, InstanceId, InstanceUsage, ParamUsage, PushRecord, PushScheme,
    };

    use super::{billing_verdict, usage_text};

    fn usage(pushes: Vec<PushRecord>) -> InstanceUsage {
        InstanceUsage {
            id: InstanceId::new_v4(),
            params: vec![ParamUsage {
                param: "requests".into(),
                total: 3.0,
                count: 3,
                days: vec![],
                last_push_at: None,
            }],
            pushes,
            keys: vec![AccessKeyView {
                created_at: ibkit_support::clock::now_ms() - 10_000,
                expires_at: ibkit_support::clock::now_ms() + 20_000,
            }],
        }
    }

    fn push(status: u16, error: Option<&str>) -> PushRecord {
        PushRecord {
            at: 1_700_000_000_000,
            scheme: PushScheme::Simple,
            status,
            metrics: 1,
            counted: u32::from(status == 200),
            key_created_at: None,
            error: error.map(str::to_string),
        }
    }

    #[test]
    fn usage_shows_totals_refusals_and_the_verdict() {
        let ok = usage(vec![push(200, None), push(200, None)]);
        let v = billing_verdict(&ok);
        assert_eq!(v.status(), ibkit_rules::Status::Pass);
        let text = usage_text(&ok, &v);
        assert!(text.starts_with("requests: 3 (3 values)\n"), "{text}");
        assert!(text.contains("pushes: 2 accepted, 0 refused"), "{text}");
        assert!(text.contains("APP-BILLING: pass"), "{text}");

        let bad = usage(vec![
            push(200, None),
            push(400, Some("usages[0]: unknown param \"cpu\"")),
        ]);
        let v = billing_verdict(&bad);
        assert_eq!(v.status(), ibkit_rules::Status::Fail);
        let text = usage_text(&bad, &v);
        assert!(
            text.contains(
                "refused 2023-11-14T22:13:20Z simple HTTP 400: usages[0]: unknown param \"cpu\""
            ),
            "{text}"
        );
        assert!(text.contains("APP-BILLING: fail"), "{text}");

        let mut none = usage(vec![]);
        none.params.clear();
        let v = billing_verdict(&none);
        assert_eq!(v.status(), ibkit_rules::Status::Unknown);
        assert!(usage_text(&none, &v).starts_with("no postpaid option"));
    }
}
