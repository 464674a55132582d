//! `ibkit package lint PATH`: checks a VK service package (a directory or
//! the zip uploaded to the vendor account) before upload, and with
//! `--image KEY=PATH` its VM images against `ibkit check`'s rules. Exit
//! codes: 0 no errors (warnings allowed), 1 an error, 2 the package or an
//! image cannot be read.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Subcommand, ValueEnum};
use ibkit_package::{PackageFiles, lint, render};

// Beside this file: the lint's image part, kept out of the subcommands.
#[path = "package_lint_images.rs"]
mod lint_images;

#[derive(clap::Args)]
pub struct PackageArgs {
    #[command(subcommand)]
    command: PackageCommand,
}

/// `ibkit deploy`'s flags (state, service, backend, QEMU, OpenStack).
#[derive(clap::Args)]
struct DeployFlags {
    #[command(flatten)]
    common: crate::deploy_cmd::Common,
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
        /// Also check a VM image with `ibkit check`'s rules: KEY is how the
        /// Terraform names it (a data "vkcs_images_image" name, an image id
        /// or variable), PATH the disk image (repeatable).
        #[arg(long = "image", value_name = "KEY=PATH", value_parser = lint_images::parse_image_arg)]
        images: Vec<lint_images::ImageArg>,
    },
    /// Deploy a plan of the package: its Terraform evaluated and mapped
    /// onto `ibkit deploy` (docs/packages.md); waits until running or
    /// failed. Running it again updates the deployment.
    Deploy {
        /// The package directory or its .zip.
        path: PathBuf,
        /// The plan (a directory under plans/).
        #[arg(long)]
        plan: String,
        /// An option or variable value (repeatable).
        #[arg(long = "var", value_name = "NAME=VALUE", value_parser = crate::package_deploy::parse_pair)]
        vars: Vec<(String, String)>,
        /// An image (by its name in the Terraform, or id) → a disk image
        /// file (or a Glance image on OpenStack); a flavor → VCPUSxMEMORY_MIB
        /// (or a Nova flavor on OpenStack). Repeatable.
        #[arg(long = "map", value_name = "KEY=VALUE", value_parser = crate::package_deploy::parse_pair)]
        maps: Vec<(String, String)>,
        /// The deployment's name (default: pkg-PLAN-SERVICEID).
        #[arg(long)]
        name: Option<String>,
        /// Print the mapped deployment manifest; deploy nothing.
        #[arg(long)]
        dry_run: bool,
        /// Stay and recover dead VMs until interrupted.
        #[arg(long)]
        watch: bool,
        #[arg(long, value_enum, default_value = "text")]
        format: crate::deploy_cmd::Format,
        #[command(flatten)]
        deploy: DeployFlags,
    },
    /// A package deployment's status (as `ibkit deploy status`).
    Status {
        name: String,
        #[arg(long, value_enum, default_value = "text")]
        format: crate::deploy_cmd::Format,
        #[command(flatten)]
        deploy: DeployFlags,
    },
    /// A package deployment's outputs; sensitive ones masked unless
    /// --show-sensitive.
    Outputs {
        name: String,
        #[arg(long)]
        show_sensitive: bool,
        #[arg(long, value_enum, default_value = "text")]
        format: crate::deploy_cmd::Format,
        #[command(flatten)]
        deploy: DeployFlags,
    },
    /// Usage a package deployment pushed to the billing emulator (as
    /// `ibkit deploy usage`).
    Usage {
        name: String,
        #[arg(long, value_enum, default_value = "text")]
        format: crate::deploy_cmd::Format,
        #[command(flatten)]
        deploy: DeployFlags,
    },
    /// Delete a package deployment's VMs, instance and generated values.
    Down {
        name: String,
        #[arg(long)]
        no_evidence: bool,
        #[command(flatten)]
        deploy: DeployFlags,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LintFormat {
    Text,
    Json,
    Sarif,
}

pub fn package(args: PackageArgs) -> Result<ExitCode> {
    use crate::deploy_cmd::{Forward, forward};
    match args.command {
        PackageCommand::Deploy {
            path,
            plan,
            vars,
            maps,
            name,
            dry_run,
            watch,
            format,
            deploy,
        } => crate::package_deploy::deploy(
            crate::package_deploy::DeployOptions {
                path,
                plan,
                vars,
                maps,
                name,
                dry_run,
                watch,
                format,
            },
            deploy.common,
        ),
        PackageCommand::Status {
            name,
            format,
            deploy,
        } => forward(deploy.common, Forward::Status { name, format }),
        PackageCommand::Outputs {
            name,
            show_sensitive,
            format,
            deploy,
        } => forward(
            deploy.common,
            Forward::Outputs {
                name,
                show_sensitive,
                format,
            },
        ),
        PackageCommand::Usage {
            name,
            format,
            deploy,
        } => forward(deploy.common, Forward::Usage { name, format }),
        PackageCommand::Down {
            name,
            no_evidence,
            deploy,
        } => crate::package_deploy::down(name, no_evidence, deploy.common),
        PackageCommand::Lint {
            path,
            format,
            images,
        } => {
            // An unreadable package is an Err: main prints it and exits 2.
            // Its Display already includes the cause; anyhow's `{:#}` would
            // print the cause twice.
            let pkg = PackageFiles::open(&path).map_err(|e| anyhow::anyhow!("{e}"))?;
            lint_images::check_keys(&pkg, &images)?;
            let diags = lint::lint(&pkg);
            let checked = lint_images::check_images(&images)?;
            let out = match format {
                LintFormat::Text => render::text_with_images(&diags, &checked),
                LintFormat::Json => format!(
                    "{}\n",
                    serde_json::to_string_pretty(&render::json_with_images(&diags, &checked))?
                ),
                LintFormat::Sarif => format!(
                    "{}\n",
                    serde_json::to_string_pretty(&render::sarif_with_images(&diags, &checked))?
                ),
            };
            crate::write_stdout(&out)?;
            Ok(if render::has_errors(&diags, &checked) {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
