//! `ibkit package lint PATH`: checks a VK service package (a directory or
//! the zip uploaded to the vendor account) before upload. Exit codes: 0 no
//! errors (warnings allowed), 1 an error, 2 the package cannot be read.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use ibkit_package::{Severity, lint_path, render};

#[derive(clap::Args)]
pub struct PackageArgs {
    #[command(subcommand)]
    command: PackageCommand,
}

#[derive(Subcommand)]
enum PackageCommand {
    /// Lint a service package: structure, YAML schemas, cross-file rules.
    Lint {
        /// The package directory or its .zip.
        path: PathBuf,
        /// Output format.
        #[arg(long, short, value_enum, default_value = "text")]
        format: LintFormat,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LintFormat {
    Text,
    Json,
    Sarif,
}

pub fn package(args: PackageArgs) -> Result<ExitCode> {
    match args.command {
        PackageCommand::Lint { path, format } => {
            // An unreadable package is an Err: main prints it and exits 2.
            // Its Display already includes the cause; anyhow's `{:#}` would
            // print the cause twice.
            let diags = lint_path(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
            let out = match format {
                LintFormat::Text => render::text(&diags),
                LintFormat::Json => {
                    format!("{}\n", serde_json::to_string_pretty(&render::json(&diags))?)
                }
                LintFormat::Sarif => format!(
                    "{}\n",
                    serde_json::to_string_pretty(&render::sarif(&diags))?
                ),
            };
            crate::write_stdout(&out)?;
            Ok(if diags.iter().any(|d| d.severity == Severity::Error) {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
