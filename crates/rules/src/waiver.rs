//! Waivers: accepted findings, each with a reason. A waived finding stays in
//! the report, marked with the reason; a rule whose every problem is waived
//! is reported as `waived`.
//!
//! ```toml
//! [[waiver]]
//! rule = "IMG-NO-DEBUGGERS"
//! path = "/usr/bin/strace"        # optional: only findings at this guest path (glob `*` allowed)
//! kind = "debugger-binary"        # optional: only findings of this kind
//! reason = "strace is part of the support bundle, approved by the marketplace (ticket 123)"
//! ```

use std::path::Path;

use serde::Deserialize;

use crate::model::{Level, Outcome};

/// One waiver.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Waiver {
    /// Rule ID.
    pub rule: String,
    /// Guest path (or glob with `*`) the finding's evidence must be at.
    #[serde(default)]
    pub path: Option<String>,
    /// Finding kind.
    #[serde(default)]
    pub kind: Option<String>,
    /// Why the finding is acceptable (required, non-empty).
    pub reason: String,
}

/// A set of waivers.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Waivers {
    /// The waivers.
    #[serde(default)]
    pub waiver: Vec<Waiver>,
}

/// Glob match supporting `*` (any run of characters, `/` included).
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else {
                return false;
            };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

impl Waivers {
    /// Read a waiver file.
    pub fn load(path: &Path) -> Result<Waivers, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read waivers {}: {e}", path.display()))?;
        Waivers::parse(&text).map_err(|e| format!("invalid waivers {}: {e}", path.display()))
    }

    /// Parse waiver text and validate it against the catalogue.
    pub fn parse(text: &str) -> Result<Waivers, String> {
        let w: Waivers = toml::from_str(text).map_err(|e| e.to_string())?;
        for (i, waiver) in w.waiver.iter().enumerate() {
            if crate::rule::find_rule(&waiver.rule).is_none() {
                return Err(format!(
                    "waiver {}: unknown rule ID {:?} (see `ibkit rules`)",
                    i + 1,
                    waiver.rule
                ));
            }
            if waiver.reason.trim().is_empty() {
                return Err(format!(
                    "waiver {} for {}: a reason is required",
                    i + 1,
                    waiver.rule
                ));
            }
        }
        Ok(w)
    }

    /// Mark the findings of `rule` that a waiver accepts.
    pub fn apply(&self, rule: &str, outcome: &mut Outcome) {
        for f in outcome
            .findings
            .iter_mut()
            .filter(|f| f.level >= Level::Warn)
        {
            if let Some(w) = self.waiver.iter().find(|w| {
                w.rule.eq_ignore_ascii_case(rule)
                    && w.kind.as_ref().is_none_or(|k| *k == f.kind)
                    && w.path
                        .as_ref()
                        .is_none_or(|p| f.evidence.path.as_deref().is_some_and(|fp| glob(p, fp)))
            }) {
                f.waived = Some(w.reason.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn glob_matches() {
        assert!(glob("/home/*/.bash_history", "/home/alice/.bash_history"));
        assert!(glob("/usr/bin/strace", "/usr/bin/strace"));
        assert!(!glob("/usr/bin/strace", "/usr/bin/ltrace"));
        assert!(glob("*", "/anything"));
        assert!(!glob("/etc/*.conf", "/etc/x.cfg"));
    }
}
