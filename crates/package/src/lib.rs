//! VK service packages, the vendor's real artefact for an image-based
//! application on the marketplace: `version.yaml`, `service.yaml`,
//! `full_description.md`, `images/`, `parameters/<OPTION>.yaml` and per plan
//! `plans/<PLAN>/{plan.yaml, display.yaml, deployment/*.tf,
//! deployment/settings.yaml}` (VK's docs: `vk-cs/docs-public`,
//! `manage-apps/ibservice_add/`).
//!
//! - [`source`]: a package from a directory or a zip, read once into memory
//!   with limits (an untrusted upload: size, entry count, paths).
//! - [`diag`]: what the lint reports: rule, severity, file, line, message.
//! - [`lint`]: every rule, each problem with its file and line; one file
//!   per group of rules (`structure`, `schema`, `cross`).

pub mod deploy;
pub mod diag;
pub mod lint;
pub mod render;
pub mod source;
pub mod tf;
pub mod yaml;

pub use diag::{Diagnostic, PkgRule, Severity};
pub use source::{PackageError, PackageFiles};

/// Reads the package at `path` (a directory or a `.zip`) and lints it.
pub fn lint_path(path: &std::path::Path) -> Result<Vec<Diagnostic>, PackageError> {
    let pkg = PackageFiles::open(path)?;
    Ok(lint::lint(&pkg))
}
