//! `ibkit package lint --image KEY=PATH`: `ibkit check`'s image rules on
//! the package's VM images, their findings reported with the package's
//! own. KEY is how the package's Terraform names the image (see
//! [`image_refs`]); PATH the disk image (qcow2, raw) or a root directory.
//!
//! The rules run here, in the binary, so that ibkit-package stays free of
//! ibkit-rules and ibkit-report: it only renders [`ImageCheck`]s.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Result, bail};
use ibkit_package::PackageFiles;
use ibkit_package::Severity;
use ibkit_package::lint::terraform::image_refs;
use ibkit_package::render::{ImageCheck, ImageFinding};
use ibkit_rules::{CheckOptions, Level, Report, check};

/// One `--image KEY=PATH`.
#[derive(Clone, Debug)]
pub struct ImageArg {
    pub key: String,
    pub path: PathBuf,
}

/// clap's parser for `KEY=PATH` (split at the first `=`: a path may hold
/// one, a Terraform name may not).
pub fn parse_image_arg(s: &str) -> Result<ImageArg, String> {
    match s.split_once('=') {
        Some((k, p)) if !k.is_empty() && !p.is_empty() => Ok(ImageArg {
            key: k.to_string(),
            path: PathBuf::from(p),
        }),
        _ => Err(format!(
            "{s:?}: expected KEY=PATH (KEY: how the package's Terraform names the image)"
        )),
    }
}

/// Every KEY names an image of the package's Terraform, once: a typo
/// would otherwise report a real image's findings under a name the
/// package does not use.
pub fn check_keys(pkg: &PackageFiles, images: &[ImageArg]) -> Result<()> {
    let refs = image_refs(pkg);
    for (i, a) in images.iter().enumerate() {
        if images[..i].iter().any(|b| b.key == a.key) {
            bail!("--image {}: given twice", a.key);
        }
        if !refs.iter().any(|r| r.keys.contains(&a.key)) {
            let known: Vec<String> = refs
                .iter()
                .map(|r| {
                    let line = r.line.map(|l| format!(":{l}")).unwrap_or_default();
                    format!("{} ({}{line})", r.keys.join(" = "), r.file)
                })
                .collect();
            if known.is_empty() {
                bail!(
                    "--image {}: the package's Terraform names no image \
                     (a data \"vkcs_images_image\", an image_id or an image block_device)",
                    a.key
                );
            }
            bail!(
                "--image {}: the package's Terraform names no image {:?}; it names: {}",
                a.key,
                a.key,
                known.join("; ")
            );
        }
    }
    Ok(())
}

/// Runs every image rule of the marketplace profile on each image, as
/// `ibkit check IMAGE` does. An image that cannot be opened is an error
/// (exit 2), like a package that cannot be read.
pub fn check_images(images: &[ImageArg]) -> Result<Vec<ImageCheck>> {
    let progress = std::io::stderr().is_terminal();
    let mut out = Vec::new();
    for a in images {
        if progress {
            eprintln!("ibkit: checking image {} ({})", a.key, a.path.display());
        }
        let insp = crate::open_image(&a.path, Vec::new())
            .map_err(|e| anyhow::anyhow!("--image {}: {e:#}", a.key))?;
        let report = check(
            &insp,
            &CheckOptions {
                manifest: None,
                waivers: None,
                profile: None,
                only: Vec::new(),
            },
        );
        out.push(image_check(a, &report));
    }
    Ok(out)
}

/// The report's open problems as lint findings: a failing finding of an
/// error-severity rule is an error, any other failing or warning finding
/// a warning (as `ibkit check` labels them); info findings are left out.
fn image_check(a: &ImageArg, report: &Report) -> ImageCheck {
    let mut findings = Vec::new();
    for r in &report.results {
        for f in r.findings.iter().filter(|f| f.waived.is_none()) {
            let severity = match f.level {
                Level::Fail if r.severity == ibkit_rules::Severity::Error => Severity::Error,
                Level::Fail | Level::Warn => Severity::Warning,
                Level::Info => continue,
            };
            findings.push(ImageFinding {
                image: a.key.clone(),
                rule: r.id.clone(),
                rule_title: r.title.clone(),
                severity,
                path: f.evidence.path.clone(),
                line: f.evidence.line.and_then(|l| u32::try_from(l).ok()),
                package: f.evidence.package.clone(),
                message: f.message.clone(),
                detail: f.evidence.detail.clone(),
            });
        }
    }
    ImageCheck {
        key: a.key.clone(),
        path: a.path.display().to_string(),
        complete: report.complete,
        notes: report.notes.clone(),
        findings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_path() {
        let a = parse_image_arg("grafana=/img/a=b.qcow2").expect("parses");
        assert_eq!(
            (a.key.as_str(), a.path),
            ("grafana", "/img/a=b.qcow2".into())
        );
        assert!(parse_image_arg("grafana").is_err());
        assert!(parse_image_arg("=x.qcow2").is_err());
        assert!(parse_image_arg("grafana=").is_err());
    }
}
