//! The app's usage billing, from the `[billing]` table of the app manifest:
//! the plan's postpaid options (VK: the options with `resource_usages`) and
//! how boot-test wires the app to the marketplace emulator.
//!
//! ```toml
//! [billing]
//! params = ["requests", "cpu_hours"]   # the options' YAML file names
//! token_file = "/opt/agent/xaas-secret-auth-token.key"   # where the agent keeps the access key
//! setup = "/usr/local/sbin/configure-billing"  # run once as root, IBKIT_BILLING_* in its environment
//! watch = "75s"                        # how long boot-test watches the pushes (default 75s)
//! ```
//!
//! Without `[billing]`, or with no `params`, the app declares no postpaid
//! option and APP-BILLING is `unknown`. The table is checked when the
//! manifest is read.

use std::time::Duration;

use ibkit_api::BillingSpec;
use serde::{Deserialize, Serialize};

/// VK's default token file of the secure push.
pub const DEFAULT_TOKEN_FILE: &str = "/opt/agent/xaas-secret-auth-token.key";
/// How long boot-test watches the pushes by default: past the expiry of the
/// first access key (30 s), so a client that never re-reads the token
/// file is caught.
pub const DEFAULT_WATCH: Duration = Duration::from_secs(75);
/// Shortest watch: one key expiry at least.
pub const MIN_WATCH: Duration = Duration::from_secs(40);
/// Longest watch.
pub const MAX_WATCH: Duration = Duration::from_secs(1800);

/// The app's billing as the manifest declares it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingManifest {
    /// The plan's postpaid options; empty: none (APP-BILLING `unknown`).
    pub params: Vec<String>,
    /// Absolute path of the token file the agent keeps current.
    pub token_file: String,
    /// Shell script run once as root in the guest before the watch, to
    /// point the app's client at the emulator (as the vendor's deploy
    /// scripts configure it on the platform).
    pub setup: Option<String>,
    /// How long the pushes are watched.
    pub watch: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    params: Vec<String>,
    token_file: Option<String>,
    setup: Option<String>,
    watch: Option<String>,
}

impl BillingManifest {
    /// Parses and checks the `[billing]` table.
    pub fn from_toml(value: &toml::Value) -> Result<Self, String> {
        let raw: Raw = value
            .clone()
            .try_into()
            .map_err(|e| format!("[billing]: {e}"))?;
        if !raw.params.is_empty() {
            BillingSpec {
                params: raw.params.clone(),
            }
            .validate()
            .map_err(|e| format!("[billing] {e}"))?;
        }
        let token_file = raw
            .token_file
            .unwrap_or_else(|| DEFAULT_TOKEN_FILE.to_string());
        if !token_file.starts_with('/')
            || token_file.ends_with('/')
            || token_file.split('/').any(|c| c == "..")
            || token_file.chars().any(|c| c.is_control() || c == '\'')
        {
            return Err(format!(
                "[billing] token_file {token_file:?}: must be an absolute file path without .., quotes or control characters"
            ));
        }
        if raw.setup.as_deref().is_some_and(|s| s.trim().is_empty()) {
            return Err("[billing] setup is empty".into());
        }
        let watch =
            crate::manifest::duration_or("[billing] watch", raw.watch.as_deref(), DEFAULT_WATCH)?;
        if !(MIN_WATCH..=MAX_WATCH).contains(&watch) {
            return Err(format!(
                "[billing] watch: {}s is outside {}s..{}s (one key expiry at least)",
                watch.as_secs(),
                MIN_WATCH.as_secs(),
                MAX_WATCH.as_secs()
            ));
        }
        Ok(BillingManifest {
            params: raw.params,
            token_file,
            setup: raw.setup,
            watch,
        })
    }

    /// Whether the plan has a postpaid option to push.
    pub fn bills(&self) -> bool {
        !self.params.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<BillingManifest, String> {
        BillingManifest::from_toml(&toml::from_str::<toml::Value>(text).expect("toml"))
    }

    #[test]
    fn defaults_and_values() {
        let b = parse("params = [\"requests\"]").expect("parses");
        assert_eq!(b.token_file, DEFAULT_TOKEN_FILE);
        assert_eq!(b.watch, DEFAULT_WATCH);
        assert!(b.bills());
        let b =
            parse("setup = \"true\"\nwatch = \"2m\"\ntoken_file = \"/run/t.key\"").expect("parses");
        assert!(!b.bills());
        assert_eq!(b.watch, Duration::from_secs(120));
    }

    #[test]
    fn bad_tables_name_the_key() {
        for (table, needle) in [
            ("params = [\"a b\"]", "billing.params[0]"),
            ("params = [\"a\", \"a\"]", "duplicate param"),
            ("token_file = \"rel/path\"", "token_file"),
            ("token_file = \"/a/../etc/shadow\"", "token_file"),
            ("watch = \"5s\"", "watch"),
            ("watch = \"soon\"", "watch"),
            ("setup = \" \"", "setup is empty"),
            ("param = [\"a\"]", "unknown field"),
        ] {
            let e = parse(table).expect_err(table);
            assert!(
                e.contains("[billing]") && e.contains(needle),
                "{table}: {e}"
            );
        }
    }
}
