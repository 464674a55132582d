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
use crate::rule_id::RuleId;

/// One waiver.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Waiver {
    /// Rule ID (an unknown ID fails parsing, naming it).
    pub rule: RuleId,
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

/// A waiver file as written: the rule is text until [`Waivers::parse`]
/// checks it, so the error says which waiver names an unknown rule.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWaivers {
    #[serde(default)]
    waiver: Vec<RawWaiver>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWaiver {
    rule: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    reason: String,
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
        let raw: RawWaivers = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut waiver = Vec::with_capacity(raw.waiver.len());
        for (i, w) in raw.waiver.into_iter().enumerate() {
            let rule = RuleId::parse(&w.rule).map_err(|e| format!("waiver {}: {e}", i + 1))?;
            if w.reason.trim().is_empty() {
                return Err(format!(
                    "waiver {} for {}: a reason is required",
                    i + 1,
                    w.rule
                ));
            }
            waiver.push(Waiver {
                rule,
                path: w.path,
                kind: w.kind,
                reason: w.reason,
            });
        }
        Ok(Waivers { waiver })
    }

    /// Mark the findings of `rule` that a waiver accepts.
    pub fn apply(&self, rule: RuleId, outcome: &mut Outcome) {
        for f in outcome
            .findings
            .iter_mut()
            .filter(|f| f.level >= Level::Warn)
        {
            if let Some(w) = self.waiver.iter().find(|w| {
                w.rule == rule
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
    use super::*;

    #[test]
    fn rule_ids_are_checked_at_parse() {
        let w = Waivers::parse("[[waiver]]\nrule = \"img-no-history\"\nreason = \"ok\"\n")
            .expect("known ID, any case");
        assert_eq!(w.waiver[0].rule, RuleId::IMG_NO_HISTORY);
        let e = Waivers::parse("[[waiver]]\nrule = \"IMG-NO-HISTROY\"\nreason = \"ok\"\n")
            .expect_err("typo");
        assert_eq!(
            e,
            "waiver 1: unknown rule ID \"IMG-NO-HISTROY\" (see `ibkit rules`)"
        );
        let e = Waivers::parse("[[waiver]]\nrule = \"OS-SSHD\"\nreason = \" \"\n")
            .expect_err("no reason");
        assert!(e.contains("waiver 1 for OS-SSHD"), "{e}");
    }

    #[test]
    fn glob_matches() {
        assert!(glob("/home/*/.bash_history", "/home/alice/.bash_history"));
        assert!(glob("/usr/bin/strace", "/usr/bin/strace"));
        assert!(!glob("/usr/bin/strace", "/usr/bin/ltrace"));
        assert!(glob("*", "/anything"));
        assert!(!glob("/etc/*.conf", "/etc/x.cfg"));
    }
}
