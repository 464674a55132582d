//! The marketplace's image rules (SPEC §1), checked offline on a guest view.
//!
//! - [`facts`]: what the rules read from the guest (accounts, packages,
//!   systemd units, boot command lines, kernels and initramfs, cloud-init
//!   config), each loaded once, lazily, through [`Context`].
//! - [`rules`]: one file per SPEC rule ID with its documentation and check;
//!   [`catalogue`] lists them in report order.
//! - [`manifest`] (with its [`health`] check), [`waiver`], [`profile`]: the
//!   vendor's app manifest, accepted findings, and which rules apply with
//!   which severity.
//! - [`engine`]: run the catalogue over an inspected image into a [`Report`];
//!   [`summary`]: describe an image without running any rule.

pub mod billing;
pub mod context;
pub mod engine;
pub mod facts;
pub mod health;
pub mod manifest;
pub mod model;
pub mod profile;
pub mod rule;
pub mod rule_id;
pub mod rules;
pub mod summary;
pub mod waiver;

pub use context::Context;
pub use engine::{CheckOptions, Report, Summary, check, rule_result};
pub use model::{Evidence, Finding, Level, Outcome, RuleResult, Severity, Status};
pub use rule::{RuleDef, catalogue, find_rule, rule_def};
pub use rule_id::{RuleId, UnknownRuleId};
pub use summary::{ImageSummary, summarize, summarize_image};
