//! `ibkit-agent` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ibkit_agent::config::Config;
use ibkit_agent::journal::StateDir;

#[derive(Parser)]
#[command(
    name = "ibkit-agent",
    version,
    about = "ibkit's in-VM agent: runs the deployment's scripts and health checks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (pairs first when there is no credential yet).
    Run {
        #[arg(long, default_value = "/etc/ibkit/agent.toml")]
        config: PathBuf,
    },
    /// Pair with the service, save the credential and exit.
    Pair {
        #[arg(long, default_value = "/etc/ibkit/agent.toml")]
        config: PathBuf,
    },
    /// Man pages, shell completions and the packaged systemd unit (the
    /// Debian package runs this at build time).
    #[command(hide = true)]
    Generate {
        #[command(subcommand)]
        what: Generate,
    },
    /// Internal: run one attempt of a step (started by the agent).
    #[command(name = "__step-runner", hide = true)]
    StepRunner { dir: PathBuf },
    /// Internal: read a step's structured result file, as the step's user
    /// (started by the step runner).
    #[command(name = "__read-structured", hide = true)]
    ReadStructured { path: PathBuf, max_bytes: u64 },
    /// Internal: run one Work (JSON file) against a state directory
    /// without a service, print the outcome as JSON (tests).
    #[command(name = "__exec-local", hide = true)]
    ExecLocal { state_dir: PathBuf, work: PathBuf },
}

#[derive(Subcommand)]
enum Generate {
    #[command(flatten)]
    Docs(ibkit_clidoc::Generate),
    /// Print the systemd unit the Debian package installs.
    SystemdUnit,
}

/// The platform's memory cap for the agent (install.sh's `--memory-max`
/// default).
const PLATFORM_MEMORY_MAX: &str = "512M";

/// Where the installer puts the agent, and where the package does (Debian
/// packages never install into /usr/local).
const INSTALLER_BINARY: &str = "/usr/local/bin/ibkit-agent";
const PACKAGED_BINARY: &str = "/usr/bin/ibkit-agent";

/// The installer's unit (one text, `ibkit_api::dist::AGENT_UNIT`) with the
/// platform's memory cap and the packaged binary's path.
fn packaged_unit() -> anyhow::Result<String> {
    let unit = ibkit_api::dist::agent_unit(PLATFORM_MEMORY_MAX);
    if !unit.contains(&format!("ExecStart={INSTALLER_BINARY} ")) {
        anyhow::bail!("the agent unit no longer starts {INSTALLER_BINARY}; update packaged_unit()");
    }
    Ok(unit.replace(INSTALLER_BINARY, PACKAGED_BINARY))
}

fn generate(what: &Generate) -> anyhow::Result<()> {
    match what {
        Generate::Docs(docs) => {
            ibkit_clidoc::generate(docs, <Cli as clap::CommandFactory>::command())?
        }
        Generate::SystemdUnit => print!("{}", packaged_unit()?),
    }
    Ok(())
}

fn main() -> ExitCode {
    // Everything the agent creates (state, reports, credentials, step
    // output) is for root only; the step runner gives scripts umask 022.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let cli = Cli::parse();
    match &cli.command {
        Command::StepRunner { dir } => {
            return ExitCode::from(
                u8::try_from(ibkit_agent::runner::runner_main(dir)).unwrap_or(1),
            );
        }
        Command::ReadStructured { path, max_bytes } => {
            return ExitCode::from(
                u8::try_from(ibkit_agent::runner::read_structured_main(path, *max_bytes))
                    .unwrap_or(1),
            );
        }
        Command::Generate { what } => {
            return match generate(what) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("ibkit-agent: {e:#}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("IBKIT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ibkit-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: anyhow::Result<()> = rt.block_on(async {
        match cli.command {
            Command::Run { config } => {
                let cfg = Config::load(&config)?;
                ibkit_agent::agent::run(cfg, Some(config)).await
            }
            Command::Pair { config } => {
                let cfg = Config::load(&config)?;
                let state = StateDir::open(&cfg.state_dir)?;
                ibkit_agent::agent::ensure_paired(&cfg, &state, Some(&config)).await?;
                eprintln!(
                    "ibkit-agent: paired; credential saved in {}",
                    state.credential_path().display()
                );
                Ok(())
            }
            Command::ExecLocal { state_dir, work } => {
                let work: ibkit_api::wire::Work = serde_json::from_slice(&std::fs::read(&work)?)?;
                let exe = std::env::current_exe()?;
                let outcome = ibkit_agent::run_local(&work, &state_dir, &exe).await?;
                println!("{}", serde_json::to_string(&outcome)?);
                Ok(())
            }
            Command::StepRunner { .. }
            | Command::ReadStructured { .. }
            | Command::Generate { .. } => Ok(()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ibkit-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    /// The package's unit differs from the installer's only in the two
    /// lines the package must change.
    #[test]
    fn the_packaged_unit_is_the_installers_with_the_cap_and_the_packaged_path() {
        let packaged = super::packaged_unit().expect("unit");
        let installer = ibkit_api::dist::AGENT_UNIT;
        let differing: Vec<(&str, &str)> = installer
            .lines()
            .zip(packaged.lines())
            .filter(|(a, b)| a != b)
            .collect();
        assert_eq!(
            differing,
            [
                (
                    "ExecStart=/usr/local/bin/ibkit-agent run --config /etc/ibkit/agent.toml",
                    "ExecStart=/usr/bin/ibkit-agent run --config /etc/ibkit/agent.toml"
                ),
                ("MemoryMax=@MEMORY_MAX@", "MemoryMax=512M"),
            ]
        );
        assert_eq!(installer.lines().count(), packaged.lines().count());
    }
}
