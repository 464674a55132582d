//! Profiles: which rules apply and with which severity. The marketplace's
//! rules are the default profile (`marketplace`); a profile file can extend
//! it, switch rules off or change their severity.
//!
//! ```toml
//! name = "internal"
//! [rules]
//! "APP-BILLING" = "off"
//! "IMG-NO-DEBUGGERS" = "warning"
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::model::Severity;
use crate::rule::{RuleDef, catalogue};
use crate::rule_id::RuleId;

/// A rule's setting in a profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Setting {
    /// Not checked.
    Off,
    /// Failures fail the check.
    Error,
    /// Failures are only warnings.
    Warning,
}

/// A profile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    /// Name shown in reports.
    pub name: String,
    /// Overrides by rule ID; rules not listed keep their default severity.
    pub overrides: BTreeMap<RuleId, Setting>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    name: String,
    #[serde(default)]
    rules: BTreeMap<String, Setting>,
}

impl Profile {
    /// The marketplace's rules with their default severities.
    pub fn marketplace() -> Profile {
        Profile {
            name: "marketplace".into(),
            overrides: BTreeMap::new(),
        }
    }

    /// A built-in profile by name, or a profile file.
    pub fn resolve(name_or_path: &str) -> Result<Profile, String> {
        if name_or_path == "marketplace" {
            return Ok(Profile::marketplace());
        }
        let path = Path::new(name_or_path);
        if !path.exists() {
            return Err(format!(
                "unknown profile {name_or_path:?}: built-in profiles are `marketplace`; otherwise give a profile file"
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read profile {name_or_path}: {e}"))?;
        Profile::parse(&text).map_err(|e| format!("invalid profile {name_or_path}: {e}"))
    }

    /// Parse a profile file's text.
    pub fn parse(text: &str) -> Result<Profile, String> {
        let raw: RawProfile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut overrides = BTreeMap::new();
        for (id, setting) in raw.rules {
            let id = RuleId::parse(&id).map_err(|e| e.to_string())?;
            overrides.insert(id, setting);
        }
        Ok(Profile {
            name: raw.name,
            overrides,
        })
    }

    /// The severity of `rule` here, `None` if the rule is off.
    pub fn severity(&self, rule: &RuleDef) -> Option<Severity> {
        match self.overrides.get(&rule.id) {
            None => Some(rule.severity),
            Some(Setting::Off) => None,
            Some(Setting::Error) => Some(Severity::Error),
            Some(Setting::Warning) => Some(Severity::Warning),
        }
    }

    /// Rules that are on.
    pub fn active(&self) -> impl Iterator<Item = &'static RuleDef> + '_ {
        catalogue()
            .iter()
            .copied()
            .filter(|r| self.severity(r).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_are_known_rule_ids() {
        let p =
            Profile::parse("name = \"x\"\n[rules]\n\"app-billing\" = \"off\"\n").expect("parses");
        assert_eq!(p.overrides.get(&RuleId::APP_BILLING), Some(&Setting::Off));
        let e =
            Profile::parse("name = \"x\"\n[rules]\n\"APP-BILING\" = \"off\"\n").expect_err("typo");
        assert!(e.contains("unknown rule ID \"APP-BILING\""), "{e}");
    }
}
