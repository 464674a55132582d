//! `/etc/os-release` (or `/usr/lib/os-release`).

use std::collections::BTreeMap;

use crate::context::Context;

/// Parsed os-release fields.
#[derive(Clone, Debug, Default)]
pub struct OsRelease {
    /// `KEY=value` pairs, quotes removed.
    pub fields: BTreeMap<String, String>,
    /// Guest path it was read from.
    pub path: Option<String>,
}

impl OsRelease {
    /// A field.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }
    /// `ID` plus `ID_LIKE`, lowercase.
    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .get("ID")
            .map(|s| vec![s.to_lowercase()])
            .unwrap_or_default();
        if let Some(like) = self.get("ID_LIKE") {
            ids.extend(like.split_whitespace().map(str::to_lowercase));
        }
        ids
    }
    /// True for Debian, Ubuntu, Astra and friends.
    pub fn is_debian_like(&self) -> bool {
        self.ids()
            .iter()
            .any(|i| matches!(i.as_str(), "debian" | "ubuntu" | "astra"))
    }
    /// True for RHEL, CentOS, AlmaLinux, Rocky, Fedora, RedOS.
    pub fn is_rhel_like(&self) -> bool {
        self.ids().iter().any(|i| {
            matches!(
                i.as_str(),
                "rhel" | "centos" | "fedora" | "almalinux" | "rocky" | "redos"
            )
        })
    }
    /// `PRETTY_NAME`, or `NAME VERSION`.
    pub fn pretty_name(&self) -> Option<String> {
        self.get("PRETTY_NAME").map(str::to_owned).or_else(|| {
            self.get("NAME").map(|n| {
                format!("{n} {}", self.get("VERSION").unwrap_or(""))
                    .trim()
                    .to_owned()
            })
        })
    }
}

/// Parse os-release text.
pub fn parse(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            let v = v
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or(v);
            out.insert(k.trim().to_owned(), v.to_owned());
        }
    }
    out
}

/// Load os-release.
pub fn load(cx: &Context) -> OsRelease {
    for path in ["/etc/os-release", "/usr/lib/os-release"] {
        if let Some(text) = cx.read_text(path) {
            return OsRelease {
                fields: parse(&text),
                path: Some(path.to_owned()),
            };
        }
    }
    OsRelease::default()
}
