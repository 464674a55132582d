//! Helpers shared by several rules.

use crate::context::Context;
use crate::model::Evidence;

/// Standard directories that hold executables.
pub const BIN_DIRS: &[&str] = &[
    "/usr/bin",
    "/usr/sbin",
    "/bin",
    "/sbin",
    "/usr/local/bin",
    "/usr/local/sbin",
];

/// Evidence that a package is installed, from the package database.
pub fn installed_package(cx: &Context, names: &[&str]) -> Option<Evidence> {
    let pk = cx.packages();
    names.iter().find_map(|n| {
        pk.get(n).map(|p| {
            Evidence::package(
                format!("{} {}", p.name, p.version),
                format!(
                    "installed ({})",
                    pk.path.as_deref().unwrap_or("package database")
                ),
            )
        })
    })
}

/// The first of `names` found as an executable in a standard bin directory.
pub fn find_binary(cx: &Context, names: &[&str]) -> Option<String> {
    for dir in BIN_DIRS {
        for n in names {
            let p = format!("{dir}/{n}");
            if cx.guest.is_file(&p) {
                return Some(p);
            }
        }
    }
    None
}

/// Evidence that `unit` starts at boot, with the link that pulls it in.
pub fn enabled_evidence(cx: &Context, unit: &str) -> Option<Evidence> {
    let units = cx.units();
    if !units.is_enabled(unit) {
        return None;
    }
    let why = units.explain(unit)?;
    let p = units.reachable.get(unit)?;
    let path = p
        .how
        .split_whitespace()
        .find(|w| w.starts_with('/'))
        .map(|w| w.split(':').next().unwrap_or(w).to_owned());
    Some(Evidence {
        path,
        line: None,
        package: None,
        detail: format!("{unit} starts at boot: {why}"),
    })
}

/// A short, non-reversible fingerprint of a secret for reports: its kind,
/// length and the first 8 hex digits of its SHA-256.
pub fn fingerprint(secret: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(secret);
    let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("{} bytes, sha256:{hex}…", secret.len())
}

/// Directory entry names of `path` as strings.
pub fn names(cx: &Context, path: &str) -> Vec<String> {
    cx.list_dir(path)
        .into_iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect()
}
