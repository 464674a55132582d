//! Rule IDs as a type: every SPEC §1 ID is a constant of [`RuleId`], the only
//! way to name a rule in code, so a typo fails to compile; text from users
//! (waivers, profiles, `--rule`) goes through [`RuleId::parse`], which
//! refuses an unknown ID and names it. On the wire a `RuleId` is its plain
//! string (`"IMG-NO-HISTORY"`); reports keep `RuleResult::id` a `String` so
//! a report from a newer ibkit with more rules still reads.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A known SPEC rule ID. Stable: IDs are never renamed (reports, waivers
/// and profiles name them).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleId(&'static str);

macro_rules! rule_ids {
    ($($name:ident = $id:literal,)*) => {
        impl RuleId {
            $(
                #[doc = concat!("`", $id, "`")]
                pub const $name: RuleId = RuleId($id);
            )*
            /// Every known ID, in SPEC §1 (report) order.
            pub const ALL: &'static [RuleId] = &[$(RuleId::$name),*];
        }
    };
}

rule_ids! {
    APP_KVM = "APP-KVM",
    APP_NET = "APP-NET",
    APP_NOPASS = "APP-NOPASS",
    APP_PORTS = "APP-PORTS",
    APP_FLAVOR = "APP-FLAVOR",
    APP_AUTOSTART_SOFT = "APP-AUTOSTART-SOFT",
    APP_AUTOSTART_HARD = "APP-AUTOSTART-HARD",
    APP_BILLING = "APP-BILLING",
    APP_DOCS = "APP-DOCS",
    IMG_CLOUDINIT = "IMG-CLOUDINIT",
    IMG_AGENT_DEPS = "IMG-AGENT-DEPS",
    IMG_NO_SECRETS = "IMG-NO-SECRETS",
    IMG_NO_HISTORY = "IMG-NO-HISTORY",
    IMG_NO_DEBUGGERS = "IMG-NO-DEBUGGERS",
    OS_SSHD = "OS-SSHD",
    OS_FIREWALL_OFF = "OS-FIREWALL-OFF",
    OS_CONSOLE_LOG = "OS-CONSOLE-LOG",
    OS_NO_FIXED_MAC = "OS-NO-FIXED-MAC",
    KERNEL_VIRTIO = "KERNEL-VIRTIO",
}

/// Text that names no known rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown rule ID {0:?} (see `ibkit rules`)")]
pub struct UnknownRuleId(pub String);

impl RuleId {
    /// The ID as SPEC spells it (`IMG-NO-HISTORY`).
    pub const fn as_str(self) -> &'static str {
        self.0
    }

    /// A known ID from text, ignoring ASCII case (`img-no-history` too).
    pub fn parse(text: &str) -> Result<RuleId, UnknownRuleId> {
        RuleId::ALL
            .iter()
            .copied()
            .find(|id| id.0.eq_ignore_ascii_case(text))
            .ok_or_else(|| UnknownRuleId(text.to_owned()))
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

impl fmt::Debug for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0, f)
    }
}

impl FromStr for RuleId {
    type Err = UnknownRuleId;
    fn from_str(s: &str) -> Result<RuleId, UnknownRuleId> {
        RuleId::parse(s)
    }
}

impl AsRef<str> for RuleId {
    fn as_ref(&self) -> &str {
        self.0
    }
}

// Comparisons with text are exact (case-sensitive), as string IDs were.
impl PartialEq<str> for RuleId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}
impl PartialEq<&str> for RuleId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}
impl PartialEq<String> for RuleId {
    fn eq(&self, other: &String) -> bool {
        self.0 == other
    }
}
impl PartialEq<RuleId> for str {
    fn eq(&self, other: &RuleId) -> bool {
        self == other.0
    }
}
impl PartialEq<RuleId> for &str {
    fn eq(&self, other: &RuleId) -> bool {
        *self == other.0
    }
}
impl PartialEq<RuleId> for String {
    fn eq(&self, other: &RuleId) -> bool {
        self == other.0
    }
}

impl Serialize for RuleId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.0)
    }
}

impl<'de> Deserialize<'de> for RuleId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RuleId, D::Error> {
        let text = String::deserialize(d)?;
        RuleId::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SPEC §1, in order: the one place the ID strings are checked.
    const SPEC_IDS: &[&str] = &[
        "APP-KVM",
        "APP-NET",
        "APP-NOPASS",
        "APP-PORTS",
        "APP-FLAVOR",
        "APP-AUTOSTART-SOFT",
        "APP-AUTOSTART-HARD",
        "APP-BILLING",
        "APP-DOCS",
        "IMG-CLOUDINIT",
        "IMG-AGENT-DEPS",
        "IMG-NO-SECRETS",
        "IMG-NO-HISTORY",
        "IMG-NO-DEBUGGERS",
        "OS-SSHD",
        "OS-FIREWALL-OFF",
        "OS-CONSOLE-LOG",
        "OS-NO-FIXED-MAC",
        "KERNEL-VIRTIO",
    ];

    #[test]
    fn the_table_is_the_spec() {
        let ids: Vec<&str> = RuleId::ALL.iter().map(|id| id.as_str()).collect();
        assert_eq!(ids, SPEC_IDS);
    }

    #[test]
    fn parse_ignores_case_and_refuses_unknown_ids() {
        assert_eq!(RuleId::parse("img-no-history"), Ok(RuleId::IMG_NO_HISTORY));
        assert_eq!("KERNEL-VIRTIO".parse(), Ok(RuleId::KERNEL_VIRTIO));
        let e = RuleId::parse("IMG-NO-HISTROY").expect_err("typo");
        assert_eq!(
            e.to_string(),
            "unknown rule ID \"IMG-NO-HISTROY\" (see `ibkit rules`)"
        );
        assert!(RuleId::parse("").is_err());
    }

    #[test]
    fn serde_is_the_plain_string() {
        assert_eq!(
            serde_json::to_string(&RuleId::OS_SSHD).expect("json"),
            "\"OS-SSHD\""
        );
        let id: RuleId = serde_json::from_str("\"os-sshd\"").expect("known");
        assert_eq!(id, RuleId::OS_SSHD);
        let e = serde_json::from_str::<RuleId>("\"OS-SHD\"").expect_err("unknown");
        assert!(e.to_string().contains("\"OS-SHD\""), "{e}");
        assert_eq!(
            format!("{} {:?}", RuleId::APP_KVM, RuleId::APP_KVM),
            "APP-KVM \"APP-KVM\""
        );
        assert_eq!(RuleId::APP_KVM, "APP-KVM");
        assert_eq!("APP-KVM", RuleId::APP_KVM);
        assert_ne!(RuleId::APP_KVM, "app-kvm");
    }
}
