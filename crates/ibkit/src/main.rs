//! `ibkit`: the command line. Exit codes: 0 all rules pass, 1 a rule fails,
//! 2 the command could not run (the reason is printed on stderr).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

mod deploy_cmd;
mod instance_cmd;
mod package_cmd;
mod package_deploy;
mod service_args;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use ibkit_image::container::BackingPolicy;
use ibkit_image::{InspectOptions, inspect};
use ibkit_report::{Format, TextOptions, render};
use ibkit_rules::manifest::Manifest;
use ibkit_rules::profile::Profile;
use ibkit_rules::waiver::Waivers;
use ibkit_rules::{CheckOptions, RuleId, catalogue, check, find_rule};

#[derive(Parser)]
#[command(
    name = "ibkit",
    version,
    about = "Build, check and run image-based applications for OpenStack marketplaces"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum OutputFormat {
    Text,
    Json,
    Sarif,
    Junit,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum ColorChoice {
    Auto,
    Always,
    Never,
}

#[derive(Subcommand)]
enum Command {
    /// Check an image (qcow2, raw, or an unpacked root directory) against every rule, offline.
    Check {
        /// The image file or root directory.
        image: PathBuf,
        /// The app manifest (ibkit.toml): app units, ports, docs.
        #[arg(long, short)]
        manifest: Option<PathBuf>,
        /// A waiver file accepting findings with a reason.
        #[arg(long, short)]
        waivers: Option<PathBuf>,
        /// `marketplace` (default) or a profile file.
        #[arg(long, default_value = "marketplace")]
        profile: String,
        /// Only check these rule IDs (repeatable).
        #[arg(long = "rule", value_name = "ID")]
        rules: Vec<String>,
        /// Report format.
        #[arg(long, short, value_enum, default_value = "text")]
        format: OutputFormat,
        /// Write the report to this file instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// Also let qcow2 backing files come from this directory (repeatable).
        #[arg(long, value_name = "DIR")]
        allow_backing_dir: Vec<PathBuf>,
        /// Show passing rules' evidence and informational findings.
        #[arg(long, short)]
        verbose: bool,
        /// Colour in the text report.
        #[arg(long, value_enum, default_value = "auto")]
        color: ColorChoice,
        /// No progress lines on stderr.
        #[arg(long, short)]
        quiet: bool,
    },
    /// Show what is in an image: partitions, volumes, mounts, OS.
    Inspect {
        /// The image file or root directory.
        image: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Also let qcow2 backing files come from this directory.
        #[arg(long, value_name = "DIR")]
        allow_backing_dir: Vec<PathBuf>,
    },
    /// Explain a rule: what it checks, why, evidence, remediation, traps.
    Explain {
        /// Rule ID, e.g. IMG-NO-HISTORY.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List every rule.
    Rules {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Boot an image under QEMU and check what only a running VM proves.
    BootTest(BootTestArgs),
    /// Run the configuration service the agents talk to.
    Serve(ServeArgs),
    /// Deploy a service instance from a manifest onto local QEMU VMs, show
    /// its status and outputs, recover dead VMs, delete it.
    Deploy(deploy_cmd::DeployArgs),
    /// Create instances in `ibkit serve` for agents you run yourself, and
    /// show an instance's status, hosts and steps.
    Instance(instance_cmd::InstanceArgs),
    /// VK service packages: `package lint PATH` before upload.
    Package(package_cmd::PackageArgs),
    /// Man pages and shell completions (the Debian package runs this at build time).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: ibkit_clidoc::Generate,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum AccelArg {
    Auto,
    Kvm,
    Tcg,
}

#[derive(clap::Args)]
struct BootTestArgs {
    /// The image (qcow2 or raw); it is never modified.
    image: PathBuf,
    /// The app manifest (ibkit.toml): units, ports, [health] check.
    #[arg(long, short)]
    manifest: Option<PathBuf>,
    /// Report format.
    #[arg(long, short, value_enum, default_value = "text")]
    format: OutputFormat,
    /// Write the report to this file instead of stdout.
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Also write the JSON report here (whatever --format says).
    #[arg(long, value_name = "FILE")]
    report_json: Option<PathBuf>,
    /// KVM if a probe boot shows it works (auto), or force one.
    #[arg(long, value_enum, default_value = "auto")]
    accel: AccelArg,
    /// Keep disks, logs and captures here (default: a temporary directory,
    /// removed after a pass; logs are kept after a failure).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Keep everything, the VMs' disks included.
    #[arg(long)]
    keep: bool,
    /// Boot the two VMs one after the other instead of at the same time.
    #[arg(long)]
    sequential: bool,
    /// Let the guests reach the host's loopback services (10.0.2.2) and
    /// every address the host reaches. Default: a restricted network where
    /// only the billing emulator is forwarded in (an untrusted image
    /// reaches nothing of the host's).
    #[arg(long)]
    open_network: bool,
    /// First VM's flavor, VCPUS:MIB.
    #[arg(long, default_value = "1:1024", value_parser = parse_flavor)]
    small_flavor: ibkit_boottest::Flavor,
    /// Second VM's flavor, VCPUS:MIB.
    #[arg(long, default_value = "2:4096", value_parser = parse_flavor)]
    large_flavor: ibkit_boottest::Flavor,
    /// How much larger the second VM's disk is, GiB.
    #[arg(long, default_value = "2")]
    extra_disk_gib: u64,
    /// Boot to SSH.
    #[arg(long, default_value = "6m")]
    boot_timeout: ibkit_api::Duration,
    /// Reboot or reset to SSH.
    #[arg(long, default_value = "5m")]
    restart_timeout: ibkit_api::Duration,
    /// How long the app may take to pass its health check (default: the manifest's, else 120s).
    #[arg(long)]
    health_timeout: Option<ibkit_api::Duration>,
    /// Show passing rules' evidence and informational findings.
    #[arg(long, short)]
    verbose: bool,
    /// Colour in the text report.
    #[arg(long, value_enum, default_value = "auto")]
    color: ColorChoice,
    /// No progress lines on stderr.
    #[arg(long, short)]
    quiet: bool,
}

fn parse_flavor(s: &str) -> Result<ibkit_boottest::Flavor, String> {
    let (c, m) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: write VCPUS:MIB, e.g. 2:4096"))?;
    let vcpus: u32 = c
        .parse()
        .ok()
        .filter(|n| (1..=64).contains(n))
        .ok_or_else(|| format!("{s:?}: vCPUs must be 1..64"))?;
    let memory_mib: u64 = m
        .parse()
        .ok()
        .filter(|n| (256..=262_144).contains(n))
        .ok_or_else(|| format!("{s:?}: memory must be 256..262144 MiB"))?;
    Ok(ibkit_boottest::Flavor { vcpus, memory_mib })
}

fn boot_test(a: BootTestArgs) -> Result<ExitCode> {
    let quiet = a.quiet;
    let manifest = a.manifest.as_deref().map(Manifest::load).transpose()?;
    if !a.image.is_file() {
        bail!(
            "{}: not a file (give a qcow2 or raw disk image)",
            a.image.display()
        );
    }
    let mut opts = ibkit_boottest::Options::new(a.image.clone());
    opts.manifest = manifest;
    opts.accel = match a.accel {
        AccelArg::Auto => ibkit_boottest::AccelRequest::Auto,
        AccelArg::Kvm => ibkit_boottest::AccelRequest::Kvm,
        AccelArg::Tcg => ibkit_boottest::AccelRequest::Tcg,
    };
    opts.work_dir = a.work_dir;
    opts.keep = a.keep;
    opts.parallel = !a.sequential;
    opts.open_network = a.open_network;
    opts.small = a.small_flavor;
    opts.large = a.large_flavor;
    opts.extra_disk = a.extra_disk_gib << 30;
    opts.boot_timeout = a.boot_timeout.to_std();
    opts.restart_timeout = a.restart_timeout.to_std();
    opts.health_timeout = a.health_timeout.map(|d| d.to_std());
    let progress: ibkit_boottest::Progress = std::sync::Arc::new(move |line: &str| {
        if !quiet {
            eprintln!("ibkit: {line}");
        }
    });
    // No QEMU or virtiofsd may outlive us: on a panic, on Ctrl-C (below), and
    // on SIGKILL (children carry PR_SET_PDEATHSIG).
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        ibkit_vm::procs::kill_all();
        previous(info);
    }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = rt.block_on(async {
        tokio::select! {
            r = ibkit_boottest::boot_test(opts, progress) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    let Some(result) = result else {
        ibkit_vm::procs::kill_all();
        eprintln!("ibkit: interrupted; VMs stopped");
        return Ok(ExitCode::from(130));
    };
    ibkit_vm::procs::kill_all();
    let bt = result?;
    if let Some(p) = &a.report_json {
        std::fs::write(p, format!("{}\n", serde_json::to_string_pretty(&bt)?))
            .with_context(|| format!("cannot write {}", p.display()))?;
    }
    let to_terminal = a.output.is_none() && std::io::stdout().is_terminal();
    let color = match a.color {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => to_terminal && std::env::var_os("NO_COLOR").is_none(),
    };
    let text = match a.format {
        OutputFormat::Json => format!("{}\n", serde_json::to_string_pretty(&bt)?),
        OutputFormat::Text => format!(
            "{}\n{}",
            render(
                &bt.report,
                Format::Text,
                &TextOptions {
                    color,
                    verbose: a.verbose
                }
            ),
            bt.boot_text()
        ),
        OutputFormat::Sarif => render(&bt.report, Format::Sarif, &TextOptions::default()),
        OutputFormat::Junit => render(&bt.report, Format::Junit, &TextOptions::default()),
    };
    match a.output {
        Some(p) => {
            std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?
        }
        None => write_stdout(&text)?,
    }
    Ok(if bt.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "0.0.0.0:8443")]
    listen: std::net::SocketAddr,
    /// State directory: database, TLS material, operator token.
    #[arg(long, default_value = "/var/lib/ibkit")]
    state_dir: PathBuf,
    /// A certificate chain (PEM) to serve instead of the generated self-signed one.
    #[arg(long, requires = "tls_key", conflicts_with = "insecure_http")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Extra subject alternative name (DNS name or IP) of the generated certificate (repeatable).
    #[arg(long = "tls-san", value_name = "NAME|IP")]
    tls_san: Vec<String>,
    /// Plain HTTP, for debugging only.
    #[arg(long)]
    insecure_http: bool,
    /// The URL installers and agents use (default: derived from the listen address).
    #[arg(long)]
    public_url: Option<String>,
    /// Operator token file (default STATE/operator-token, generated if missing).
    #[arg(long)]
    operator_token_file: Option<PathBuf>,
    /// A file holding a token that opens GET /metrics and nothing else, for
    /// a Prometheus server (the operator token opens it too).
    #[arg(long)]
    metrics_token_file: Option<PathBuf>,
    /// The agent binary served to VMs (default: ibkit-agent next to ibkit).
    #[arg(long)]
    agent_binary: Option<PathBuf>,
    /// The agent's Debian package, served at /v1/agent/ibkit-agent.deb
    /// (default: none, that URL answers 404).
    #[arg(long, value_name = "FILE")]
    agent_deb: Option<PathBuf>,
    #[arg(long, default_value = "30s")]
    heartbeat_interval: ibkit_api::Duration,
    /// A paired agent silent this long gets a recovery request.
    #[arg(long, default_value = "5m")]
    agent_timeout: ibkit_api::Duration,
    /// A host without a passing health result this long gets a recovery request.
    #[arg(long, default_value = "5m")]
    health_timeout: ibkit_api::Duration,
    #[arg(long, default_value = "5s")]
    monitor_interval: ibkit_api::Duration,
    /// How long a new pairing key stays valid (keys are also single-use);
    /// `POST /v1/instances?pairing_key_ttl=` sets an instance's own.
    #[arg(long, default_value = "1h")]
    pairing_key_ttl: ibkit_api::Duration,
    /// Largest structured result stored, in bytes; a step reporting a
    /// larger one fails, saying so.
    #[arg(long, default_value_t = ibkit_api::structured::DEFAULT_MAX_STRUCTURED_BYTES)]
    max_structured_bytes: usize,
    /// Lifetime of the billing emulator's access keys (secure usage push):
    /// a new key is issued when the newest is half this old; each stays
    /// valid until its own expiry.
    #[arg(long, default_value = "24h")]
    billing_key_ttl: ibkit_api::Duration,
    /// Agent binary downloads served at once; more are told to retry (503).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..))]
    max_agent_downloads: u16,
    /// Also recover dead VMs of the deployments in this `ibkit deploy`
    /// state directory (local QEMU backend), as `ibkit deploy watch` would.
    #[arg(long, value_name = "DEPLOY_STATE")]
    recover_deployments: Option<PathBuf>,
    #[command(flatten)]
    qemu: deploy_cmd::QemuArgs,
}

fn serve(a: ServeArgs) -> Result<ExitCode> {
    use ibkit_server::{ServeConfig, TlsMode};
    // Everything the service (and the deployment recovery in it) creates
    // holds secrets: its user's only.
    ibkit_server::set_private_umask();
    if a.pairing_key_ttl.to_std().is_zero()
        || a.pairing_key_ttl.to_std() > ibkit_server::config::MAX_PAIRING_KEY_TTL
    {
        bail!("--pairing-key-ttl must be more than 0s and at most 30 days");
    }
    let billing_ttl = a.billing_key_ttl.to_std();
    if !(ibkit_server::config::MIN_BILLING_KEY_TTL..=ibkit_server::config::MAX_BILLING_KEY_TTL)
        .contains(&billing_ttl)
    {
        bail!("--billing-key-ttl must be between 2s and 365 days");
    }
    let tls = if a.insecure_http {
        TlsMode::InsecureHttp
    } else if let (Some(cert), Some(key)) = (a.tls_cert, a.tls_key) {
        TlsMode::Provided { cert, key }
    } else {
        TlsMode::Generated {
            extra_sans: a.tls_san,
        }
    };
    let mut cfg = ServeConfig::new(a.state_dir);
    cfg.listen = a.listen;
    cfg.tls = tls;
    cfg.public_url = a.public_url;
    cfg.operator_token_file = a.operator_token_file;
    cfg.metrics_token_file = a.metrics_token_file;
    cfg.agent_binary = a.agent_binary;
    cfg.agent_deb = a.agent_deb;
    cfg.heartbeat_interval = a.heartbeat_interval.to_std();
    cfg.agent_timeout = a.agent_timeout.to_std();
    cfg.health_timeout = a.health_timeout.to_std();
    cfg.monitor_interval = a.monitor_interval.to_std();
    cfg.pairing_key_ttl = a.pairing_key_ttl.to_std();
    cfg.max_structured_bytes = a.max_structured_bytes;
    cfg.max_agent_downloads = usize::from(a.max_agent_downloads);
    cfg.billing_key_ttl = billing_ttl;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let server = ibkit_server::Server::start(cfg).await?;
        server.print_ready()?;
        let recovery = match a.recover_deployments {
            Some(dir) => Some(deploy_cmd::recover_in_service(&server, dir, a.qemu).await?),
            None => None,
        };
        let r = server.wait().await;
        if let Some(task) = recovery {
            task.abort();
        }
        r
    })?;
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("IBKIT_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ibkit: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn step(quiet: bool, msg: &str) {
    if !quiet {
        eprintln!("ibkit: {msg}");
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Check {
            image,
            manifest,
            waivers,
            profile,
            rules,
            format,
            output,
            allow_backing_dir,
            verbose,
            color,
            quiet,
        } => {
            let quiet = quiet || !std::io::stderr().is_terminal();
            let rules = rules
                .iter()
                .map(|r| r.parse::<RuleId>())
                .collect::<Result<Vec<_>, _>>()?;
            let manifest = manifest.map(|p| Manifest::load(&p)).transpose()?;
            let waivers = waivers
                .map(|p| Waivers::load(&p).map_err(anyhow::Error::msg))
                .transpose()?;
            let profile = Profile::resolve(&profile).map_err(anyhow::Error::msg)?;
            let t = Instant::now();
            step(quiet, &format!("opening {}", image.display()));
            let insp = open_image(&image, allow_backing_dir)?;
            step(
                quiet,
                &format!(
                    "found root on {}, {} mounts; checking {} rules",
                    insp.root
                        .map(|r| insp.volumes[r].name.clone())
                        .unwrap_or_else(|| "directory".into()),
                    insp.mounts.len(),
                    profile.active().count()
                ),
            );
            let report = check(
                &insp,
                &CheckOptions {
                    manifest: manifest.as_ref(),
                    waivers: waivers.as_ref(),
                    profile: Some(&profile),
                    only: rules,
                },
            );
            step(quiet, &format!("done in {} ms", t.elapsed().as_millis()));
            let fmt = match format {
                OutputFormat::Text => Format::Text,
                OutputFormat::Json => Format::Json,
                OutputFormat::Sarif => Format::Sarif,
                OutputFormat::Junit => Format::Junit,
            };
            let to_terminal = output.is_none() && std::io::stdout().is_terminal();
            let color = match color {
                ColorChoice::Always => true,
                ColorChoice::Never => false,
                ColorChoice::Auto => to_terminal && std::env::var_os("NO_COLOR").is_none(),
            };
            let text = render(&report, fmt, &TextOptions { color, verbose });
            match output {
                Some(p) => std::fs::write(&p, text)
                    .with_context(|| format!("cannot write {}", p.display()))?,
                None => write_stdout(&text)?,
            }
            Ok(if report.failed() {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Command::Inspect {
            image,
            json,
            allow_backing_dir,
        } => {
            let summary = ibkit_rules::summarize(&open_image(&image, allow_backing_dir)?);
            write_stdout(&if json {
                ibkit_report::render_summary_json(&summary)
            } else {
                ibkit_report::render_summary_text(&summary)
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain { id, json } => {
            let Some(r) = find_rule(&id) else {
                bail!("unknown rule ID {id:?} (see `ibkit rules`)");
            };
            if json {
                let v = serde_json::json!({
                    "id": r.id, "title": r.title, "requirement": r.requirement,
                    "severity": r.severity, "doc": r.doc, "remediation": r.remediation,
                });
                write_stdout(&format!("{}\n", serde_json::to_string_pretty(&v)?))?;
            } else {
                write_stdout(&format!(
                    "# {} — {}\n\n> {}\n\n{}\n",
                    r.id, r.title, r.requirement, r.doc
                ))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(args) => serve(args),
        Command::Deploy(args) => deploy_cmd::deploy(args),
        Command::Instance(args) => instance_cmd::instance(args),
        Command::Package(args) => package_cmd::package(args),
        Command::BootTest(args) => boot_test(args),
        Command::Generate { what } => {
            ibkit_clidoc::generate(&what, <Cli as clap::CommandFactory>::command())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Rules { json } => {
            if json {
                let v: Vec<_> = catalogue()
                    .iter()
                    .map(|r| serde_json::json!({"id": r.id, "title": r.title, "severity": r.severity}))
                    .collect();
                write_stdout(&format!("{}\n", serde_json::to_string_pretty(&v)?))?;
            } else {
                let mut s = String::new();
                for r in catalogue() {
                    s.push_str(&format!("{:<20} {}\n", r.id, r.title));
                }
                write_stdout(&s)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Inspect an image, letting backing files come from the extra directories.
fn open_image(
    image: &std::path::Path,
    allowed_dirs: Vec<PathBuf>,
) -> Result<ibkit_image::Inspection> {
    Ok(inspect(
        image,
        &InspectOptions {
            backing: BackingPolicy { allowed_dirs },
        },
    )?)
}

/// Write to stdout; a closed pipe (`ibkit check ... | head`) is not an error.
fn write_stdout(s: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(s.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write to stdout"),
    }
}
