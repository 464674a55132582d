//! Render an `ibkit check` [`Report`] in four formats:
//!
//! | [`Format`] | for | function |
//! |---|---|---|
//! | `text` (default) | terminals and humans | [`render_text`] |
//! | `json` | scripts: the stable interface, schema below | [`render_json`] |
//! | `sarif` | code-scanning UIs (SARIF 2.1.0) | [`render_sarif`] |
//! | `junit` | CI test reports (JUnit XML) | [`render_junit`] |
//!
//! [`render`] picks one by [`Format`]; [`write()`] writes it to an
//! [`io::Write`]. Every rendered document ends with exactly one newline.
//! `ibkit inspect`'s image summary (no rules) is rendered by [`summary`].
//!
//! Nothing here reads the image: everything shown comes from the report,
//! whose evidence details the rules have already redacted. The text format
//! escapes control characters (and Unicode direction overrides) in strings
//! that come from the image, so a hostile file name cannot drive the
//! terminal; JSON and SARIF escape them by construction, and JUnit drops them.
//!
//! # Text
//!
//! A header describing the image (path, format, backing chain, partition
//! table and volumes, mounts, OS, profile), then the rules grouped by status,
//! worst first: `FAIL`, `WARN`, `UNKNOWN`, `WAIVED`, `PASS` (catalogue order
//! within a group). Each rule that is not a pass gets a block: its ID, title,
//! summary, its findings (`fail`/`warn`/`info` with the message and, on the
//! next line, `at /path:line: detail` or `at package NAME VERSION: detail`),
//! waived findings with their waiver's reason, `unverified` items, and the
//! remediation (`fix`) for failures and warnings. Passing rules take one line
//! each. Then the counts (`19 rules: 14 pass, 2 fail, 1 warn, 0 waived,
//! 2 unknown`), an `INCOMPLETE INSPECTION` block when parts of the image could
//! not be read, the verdict (`Result: FAIL ...`) and the elapsed time.
//! [`TextOptions::verbose`] adds passing rules' summaries and evidence, `info`
//! findings and each rule's requirement; [`TextOptions::color`] adds ANSI
//! colours (never emitted otherwise). Prose is wrapped at 100 columns.
//!
//! # JSON
//!
//! `serde_json::to_string_pretty(report)`: the stable, versioned interface
//! (`schema_version` 1). Field names never change within a schema version;
//! new fields may be added. Optional values are `null` unless noted
//! (*omitted when absent*).
//!
//! **Top level** (`ibkit_rules::Report`):
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `schema_version` | integer | version of this document's format (1) |
//! | `tool` | object | `name` (`"ibkit"`) and `version` of the checker |
//! | `image` | object | what was checked (below) |
//! | `profile` | string | active profile (`"marketplace"` by default) |
//! | `manifest` | string or null | path of the vendor's app manifest, if one was used |
//! | `results` | array | one item per rule checked, in catalogue order (below) |
//! | `summary` | object | counts of rules by status: `pass`, `fail`, `warn`, `waived`, `unknown` |
//! | `complete` | boolean | false when parts of the image could not be read (see `notes`) |
//! | `notes` | array of strings | problems reading the image that did not stop the check |
//! | `elapsed_ms` | integer | wall time of the whole check, milliseconds |
//!
//! **`image`**: `path` (input as given), `format` (`raw`, `qcow2`,
//! `directory`), `layers` (backing chain, top first, host paths; empty for a
//! directory), `virtual_size` (bytes or null), `partition_table` (`gpt`,
//! `dos` or null), `volumes` (array of `{name, type, size, uuid, label}`;
//! `name` is `disk`, `p1` or `vg/lv`, `type` the content type such as `ext4`
//! or `LVM2_member`, `size` in bytes, `uuid` and `label` *omitted when
//! absent*), `mounts` (array of `{point, volume, fs_type}`), `os`
//! (`PRETTY_NAME` from os-release, or null).
//!
//! **`results[]`** (`ibkit_rules::RuleResult`):
//!
//! | field | type | meaning |
//! |---|---|---|
//! | `id` | string | the SPEC rule ID, e.g. `IMG-NO-HISTORY`; never renamed |
//! | `title` | string | short title |
//! | `requirement` | string | the marketplace's requirement |
//! | `severity` | `"error"` or `"warning"` | severity in the active profile; a failing `warning` rule is reported as `warn` |
//! | `status` | `"pass"`, `"fail"`, `"warn"`, `"waived"`, `"unknown"` | the verdict |
//! | `summary` | string | one line for humans |
//! | `evidence` | array of evidence | what proves the requirement is met |
//! | `findings` | array of findings | problems and observations |
//! | `unverified` | array of strings | what could not be verified offline, and why |
//! | `remediation` | string | how to fix a failure |
//! | `elapsed_us` | integer | time spent in this rule's check, microseconds |
//!
//! **finding**: `level` (`"fail"`, `"warn"`, `"info"`), `kind` (short stable
//! key, e.g. `history-file`, used by waivers), `message` (one sentence),
//! `evidence` (one evidence object), `waived` (the waiver's reason; *omitted
//! when the finding is not waived*). A rule is `fail` if it has an unwaived
//! `fail` finding, `warn` if it has an unwaived `warn` finding, `waived` if
//! all its problems are waived.
//!
//! **evidence**: `path` (guest path, or host path for manifest-side
//! evidence), `line` (1-based line in `path`), `package` (package name and
//! version), `detail` (what was seen, secrets redacted). `path`, `line` and
//! `package` are *omitted when absent*; `detail` is always present.
//!
//! Example (abridged to three results):
//!
//! ```json
#![doc = include_str!("../docs/example-report.json")]
//! ```
//!
//! # SARIF
//!
//! A SARIF 2.1.0 log with one run whose driver is `ibkit`; see [`sarif`] for
//! the mapping (one result per fail/warn finding, guest paths relative to
//! the `GUEST_ROOT` base, waived findings as suppressed results).
//!
//! # JUnit
//!
//! One test suite `ibkit check <image>`, one test case per rule; see
//! [`junit`] for the mapping (JUnit has no "warning" outcome, so warnings
//! pass with their findings in `system-out`).

use std::fmt;
use std::io;
use std::str::FromStr;

pub use ibkit_rules::Report;

pub mod junit;
pub mod sarif;
mod style;
pub mod summary;
pub mod text;

pub use junit::render_junit;
pub use sarif::{render_sarif, render_sarif_with};
pub use summary::{render_summary_json, render_summary_text};
pub use text::{TextOptions, render_text};

/// An output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Format {
    /// Human-readable text for terminals.
    #[default]
    Text,
    /// The report as JSON (the stable interface).
    Json,
    /// SARIF 2.1.0 for code-scanning UIs.
    Sarif,
    /// JUnit XML for CI systems.
    Junit,
}

impl Format {
    /// Every format, in the order shown in help texts.
    pub const ALL: [Format; 4] = [Format::Text, Format::Json, Format::Sarif, Format::Junit];

    /// The name used on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Text => "text",
            Format::Json => "json",
            Format::Sarif => "sarif",
            Format::Junit => "junit",
        }
    }

    /// Conventional file extension for this format.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Text => "txt",
            Format::Json => "json",
            Format::Sarif => "sarif",
            Format::Junit => "xml",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown format name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseFormatError(pub String);

impl fmt::Display for ParseFormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unknown report format `{}` (expected one of: text, json, sarif, junit)",
            self.0
        )
    }
}

impl std::error::Error for ParseFormatError {}

impl FromStr for Format {
    type Err = ParseFormatError;

    /// Parse a format name, ignoring ASCII case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL
            .into_iter()
            .find(|f| f.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| ParseFormatError(s.to_owned()))
    }
}

/// Render `report` in `format`; `text` only matters for [`Format::Text`].
pub fn render(report: &Report, format: Format, text: &TextOptions) -> String {
    match format {
        Format::Text => render_text(report, text),
        Format::Json => render_json(report),
        Format::Sarif => render_sarif(report),
        Format::Junit => render_junit(report),
    }
}

/// Render `report` in `format` into `out`.
pub fn write(
    report: &Report,
    format: Format,
    text: &TextOptions,
    out: &mut dyn io::Write,
) -> io::Result<()> {
    out.write_all(render(report, format, text).as_bytes())?;
    out.flush()
}

/// The report as pretty-printed JSON (see the crate docs for the schema),
/// with a final newline.
pub fn render_json(report: &Report) -> String {
    let mut s = serde_json::to_string_pretty(report).expect("a report always serializes to JSON");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names_round_trip() {
        for f in Format::ALL {
            assert_eq!(f.to_string().parse::<Format>(), Ok(f));
        }
        assert_eq!("SARIF".parse::<Format>(), Ok(Format::Sarif));
        let err = "yaml".parse::<Format>().expect_err("not a format");
        assert!(
            err.to_string().contains("text, json, sarif, junit"),
            "{err}"
        );
        assert_eq!(Format::default(), Format::Text);
    }

    #[cfg(feature = "clap")]
    #[test]
    fn clap_value_names_match() {
        use clap::ValueEnum;
        for f in Format::value_variants() {
            let v = f
                .to_possible_value()
                .expect("every format is a possible value");
            assert_eq!(v.get_name(), f.as_str());
        }
    }

    #[test]
    fn documented_example_is_a_valid_report() {
        let example = include_str!("../docs/example-report.json");
        let report: Report =
            serde_json::from_str(example).expect("the documented example parses as a Report");
        let back: serde_json::Value = serde_json::from_str(&render_json(&report)).expect("json");
        let orig: serde_json::Value = serde_json::from_str(example).expect("json");
        assert_eq!(
            back, orig,
            "the documented example must be exactly what render_json produces"
        );
    }
}
