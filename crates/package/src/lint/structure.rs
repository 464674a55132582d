//! `PKG-STRUCTURE`: the files and directories VK's generator 0.0.1 expects
//! (`ib_structure.md`), file names, icon size and the zip's size
//! (`ibservice_upload_package.md`: at most 30 MB).

use std::collections::{BTreeMap, BTreeSet};

use crate::{Diagnostic, PackageFiles, PkgRule};

const MB: u64 = 1_000_000;
const MIB: u64 = 1 << 20;
/// VK's "30 МБ" zip limit: above 30 MiB surely too big, above 30 MB maybe.
const ZIP_MAX: u64 = 30;
/// VK's "1 МБ" icon limit, read the same way.
const ICON_MAX: u64 = 1;
const ICON_MIN_PX: u32 = 62;

fn err(out: &mut Vec<Diagnostic>, file: &str, msg: String) {
    out.push(Diagnostic::error(PkgRule::Structure, file, None, msg));
}

fn warn(out: &mut Vec<Diagnostic>, file: &str, msg: String) {
    out.push(Diagnostic::warning(PkgRule::Structure, file, None, msg));
}

pub fn check(pkg: &PackageFiles, out: &mut Vec<Diagnostic>) {
    if let Some(n) = pkg.zip_bytes {
        if n > ZIP_MAX * MIB {
            err(
                out,
                ".",
                format!("the zip is {n} bytes; VK accepts at most {ZIP_MAX} MB"),
            );
        } else if n > ZIP_MAX * MB {
            warn(
                out,
                ".",
                format!(
                    "the zip is {n} bytes, over {ZIP_MAX}×10^6; VK accepts at most {ZIP_MAX} MB"
                ),
            );
        }
    }
    for f in ["version.yaml", "service.yaml", "full_description.md"] {
        match pkg.bytes(f) {
            None => err(out, f, format!("missing: the package root needs {f}")),
            Some(b) if f == "full_description.md" && b.iter().all(u8::is_ascii_whitespace) => {
                err(out, f, "empty: the service needs a full description".into())
            }
            Some(_) => {}
        }
    }
    check_images(pkg, out);
    check_parameters(pkg, out);
    check_plans(pkg, out);
    check_names(pkg, out);
}

fn ext(path: &str) -> Option<String> {
    let name = path.rsplit('/').next()?;
    let (_, e) = name.rsplit_once('.')?;
    Some(e.to_ascii_lowercase())
}

fn check_images(pkg: &PackageFiles, out: &mut Vec<Diagnostic>) {
    let mut icons = 0;
    for f in pkg.under("images", false) {
        let e = ext(f);
        if !matches!(e.as_deref(), Some("png" | "svg")) {
            warn(
                out,
                f,
                "not a .png or .svg; the marketplace icon must be one".into(),
            );
            continue;
        }
        icons += 1;
        let b = pkg.bytes(f).unwrap_or_default();
        let n = b.len() as u64;
        if n > ICON_MAX * MIB {
            err(
                out,
                f,
                format!("icon is {n} bytes; VK accepts at most {ICON_MAX} MB"),
            );
        } else if n > ICON_MAX * MB {
            warn(
                out,
                f,
                format!("icon is {n} bytes, over 10^6; VK accepts at most {ICON_MAX} MB"),
            );
        }
        if e.as_deref() == Some("png") {
            match png_size(b) {
                None => err(out, f, "not a PNG image (no PNG signature and IHDR)".into()),
                Some((w, h)) if w < ICON_MIN_PX || h < ICON_MIN_PX => err(
                    out,
                    f,
                    format!("icon is {w}×{h} px; VK needs at least {ICON_MIN_PX}×{ICON_MIN_PX}"),
                ),
                Some(_) => {}
            }
        }
    }
    if icons == 0 {
        err(
            out,
            "images",
            "no icon: images/ needs a .png or .svg file".into(),
        );
    }
}

/// Width and height from a PNG's IHDR chunk, which must come first.
pub fn png_size(b: &[u8]) -> Option<(u32, u32)> {
    const SIG: &[u8] = b"\x89PNG\r\n\x1a\n";
    if b.get(..8)? != SIG || b.get(12..16)? != b"IHDR" {
        return None;
    }
    let w = u32::from_be_bytes(b.get(16..20)?.try_into().ok()?);
    let h = u32::from_be_bytes(b.get(20..24)?.try_into().ok()?);
    Some((w, h))
}

fn check_parameters(pkg: &PackageFiles, out: &mut Vec<Diagnostic>) {
    let mut any = false;
    for f in pkg.under("parameters", false) {
        any = true;
        let rest = f.strip_prefix("parameters/").unwrap_or(f);
        if rest.contains('/') {
            warn(
                out,
                f,
                "options are read from parameters/<OPTION>.yaml only, not subdirectories".into(),
            );
        } else if ext(f).as_deref() != Some("yaml") {
            warn(
                out,
                f,
                "not an option file: options are parameters/<OPTION>.yaml".into(),
            );
        }
    }
    // An empty directory does not survive a zip; a service without options
    // is possible, so this is only a hint.
    if !any {
        warn(
            out,
            "parameters",
            "no option files: parameters/<OPTION>.yaml describes each plan option".into(),
        );
    }
}

fn check_plans(pkg: &PackageFiles, out: &mut Vec<Diagnostic>) {
    // plan name -> paths inside the plan's directory
    let mut plans: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for f in pkg.under("plans", false) {
        let rest = f.strip_prefix("plans/").unwrap_or(f);
        match rest.split_once('/') {
            Some((plan, inner)) => {
                plans.entry(plan).or_default().insert(inner);
            }
            None => warn(
                out,
                f,
                "a file directly in plans/; each plan is a directory plans/<PLAN>/".into(),
            ),
        }
    }
    if plans.is_empty() {
        err(
            out,
            "plans",
            "no plan: plans/<PLAN>/ with plan.yaml, display.yaml and deployment/*.tf".into(),
        );
    }
    for (plan, inner) in plans {
        let dir = format!("plans/{plan}");
        for f in ["plan.yaml", "display.yaml"] {
            if !inner.contains(f) {
                err(
                    out,
                    &format!("{dir}/{f}"),
                    format!("missing: plan {plan} needs {f}"),
                );
            }
        }
        let tf = inner.iter().any(|p| {
            p.strip_prefix("deployment/")
                .is_some_and(|n| !n.contains('/') && ext(n).as_deref() == Some("tf"))
        });
        if !tf {
            err(
                out,
                &format!("{dir}/deployment"),
                format!("no Terraform manifest: plan {plan} needs deployment/*.tf"),
            );
        }
    }
}

/// `name` is `stem(.ext)*` with the stem of Latin letters, digits and `_`.
fn good_name(name: &str, is_file: bool) -> bool {
    let word = |s: &str, us: bool| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || (us && c == '_'))
    };
    if !is_file {
        return word(name, true);
    }
    let mut parts = name.split('.');
    parts.next().is_some_and(|s| word(s, true)) && parts.all(|e| word(e, false))
}

fn check_names(pkg: &PackageFiles, out: &mut Vec<Diagnostic>) {
    let mut seen = BTreeSet::new();
    for f in pkg.files.keys() {
        let parts: Vec<&str> = f.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            let is_file = i + 1 == parts.len();
            let path = parts[..=i].join("/");
            if !good_name(part, is_file) && seen.insert(path.clone()) {
                let what = if is_file { "file" } else { "directory" };
                warn(
                    out,
                    &path,
                    format!(
                        "{what} name {part:?}: VK recommends Latin letters, digits and \
                         underscores only"
                    ),
                );
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(good_name("deploy.tf", true));
        assert!(good_name("full_description.md", true));
        assert!(good_name("free_2", false));
        assert!(!good_name("my plan", false));
        assert!(!good_name("my-plan", false));
        assert!(!good_name(".DS_Store", true));
        assert!(!good_name("a.b_c", true));
    }

    #[test]
    fn png_header() {
        let mut b = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
        b.extend(64u32.to_be_bytes());
        b.extend(63u32.to_be_bytes());
        assert_eq!(png_size(&b), Some((64, 63)));
        assert_eq!(png_size(&b[..20]), None);
        assert_eq!(png_size(b"<svg/>"), None);
    }
}
