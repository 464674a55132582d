//! Run the catalogue over an inspected image and collect a [`Report`].

use std::time::Instant;

use ibkit_image::inspect::{InputKind, Inspection};
use serde::{Deserialize, Serialize};

use crate::context::Context;
use crate::manifest::Manifest;
use crate::model::{RuleResult, Severity, Status};
use crate::profile::Profile;
use crate::rule::catalogue;
use crate::rule_id::RuleId;
use crate::waiver::Waivers;

/// Inputs besides the image.
#[derive(Default)]
pub struct CheckOptions<'a> {
    /// The vendor's app manifest.
    pub manifest: Option<&'a Manifest>,
    /// Accepted findings.
    pub waivers: Option<&'a Waivers>,
    /// Which rules apply and how severe they are (default: marketplace).
    pub profile: Option<&'a Profile>,
    /// Only these rules (empty: all in the profile).
    pub only: Vec<RuleId>,
}

/// The image as the report describes it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ImageInfo {
    /// Input path as given.
    pub path: String,
    /// `raw`, `qcow2` or `directory`.
    pub format: String,
    /// Backing chain (top first), host paths.
    pub layers: Vec<String>,
    /// Guest-visible size in bytes.
    pub virtual_size: Option<u64>,
    /// `gpt`, `dos` or none.
    pub partition_table: Option<String>,
    /// Volumes found: `p1 ext4 UUID=...`.
    pub volumes: Vec<VolumeSummary>,
    /// Mounted filesystems.
    pub mounts: Vec<MountSummary>,
    /// `PRETTY_NAME` from os-release.
    pub os: Option<String>,
}

/// One volume.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct VolumeSummary {
    /// `disk`, `p1`, `vg/lv`.
    pub name: String,
    /// Content type (`ext4`, `xfs`, `LVM2_member`, ...).
    #[serde(rename = "type")]
    pub kind: String,
    /// Size in bytes.
    pub size: u64,
    /// Filesystem UUID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// Filesystem label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// One mount.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct MountSummary {
    /// Guest mount point.
    pub point: String,
    /// Volume name.
    pub volume: String,
    /// Filesystem type.
    pub fs_type: String,
}

/// Counts by status.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Summary {
    /// Rules that pass.
    pub pass: usize,
    /// Rules that fail.
    pub fail: usize,
    /// Rules with warnings.
    pub warn: usize,
    /// Rules whose problems were all waived.
    pub waived: usize,
    /// Rules that could not be verified.
    pub unknown: usize,
}

impl Summary {
    /// Count results by status.
    pub fn of(results: &[RuleResult]) -> Summary {
        let mut summary = Summary::default();
        for r in results {
            match r.status {
                Status::Pass => summary.pass += 1,
                Status::Fail => summary.fail += 1,
                Status::Warn => summary.warn += 1,
                Status::Waived => summary.waived += 1,
                Status::Unknown => summary.unknown += 1,
            }
        }
        summary
    }
}

/// The outcome of `ibkit check`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    /// Format version of this JSON document.
    pub schema_version: u32,
    /// `ibkit` and its version.
    pub tool: ToolInfo,
    /// What was checked.
    pub image: ImageInfo,
    /// Active profile name.
    pub profile: String,
    /// Manifest path, if one was used.
    pub manifest: Option<String>,
    /// One item per rule, in catalogue order.
    pub results: Vec<RuleResult>,
    /// Counts by status.
    pub summary: Summary,
    /// False when parts of the image could not be read (see `notes`).
    pub complete: bool,
    /// Problems reading the image that did not stop the check.
    pub notes: Vec<String>,
    /// Wall time of the whole check in milliseconds.
    pub elapsed_ms: u64,
}

/// Tool identification.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ToolInfo {
    /// `ibkit`.
    pub name: String,
    /// Crate version.
    pub version: String,
}

impl Report {
    /// True if any error-severity rule failed (exit code 1).
    pub fn failed(&self) -> bool {
        self.results
            .iter()
            .any(|r| r.status == Status::Fail && r.severity == Severity::Error)
    }
    /// The result for one rule ID.
    pub fn result(&self, id: &str) -> Option<&RuleResult> {
        self.results.iter().find(|r| r.id == id)
    }
}

/// The image as reports describe it: input, layers, volumes, mounts, and
/// the OS from `/etc/os-release` (read through `cx`, so loaded once).
pub(crate) fn image_info(insp: &Inspection, cx: &Context) -> ImageInfo {
    let (format, layers, virtual_size) = match &insp.input {
        InputKind::Directory => ("directory".to_string(), Vec::new(), None),
        InputKind::Disk {
            layers,
            virtual_size,
        } => (
            layers
                .first()
                .map(|l| l.format.name())
                .unwrap_or("raw")
                .to_string(),
            layers
                .iter()
                .map(|l| l.path.display().to_string())
                .collect(),
            Some(*virtual_size),
        ),
    };
    ImageInfo {
        path: insp.path.display().to_string(),
        format,
        layers,
        virtual_size,
        partition_table: insp.table.map(|t| t.name().to_string()),
        volumes: insp
            .volumes
            .iter()
            .map(|v| VolumeSummary {
                name: v.name.clone(),
                kind: v.probe.kind.name().to_string(),
                size: v.size,
                uuid: v.probe.uuid.clone(),
                label: v.probe.label.clone(),
            })
            .collect(),
        mounts: insp
            .mounts
            .iter()
            .map(|m| MountSummary {
                point: m.point.clone(),
                volume: m.volume.clone(),
                fs_type: m.fs_type.clone(),
            })
            .collect(),
        os: cx.os_release().pretty_name(),
    }
}

/// Check an inspected image.
pub fn check(insp: &Inspection, opts: &CheckOptions) -> Report {
    let start = Instant::now();
    let default_profile = Profile::marketplace();
    let profile = opts.profile.unwrap_or(&default_profile);
    let cx = Context::new(&insp.guest, Some(insp), opts.manifest);
    let selected: Vec<(&'static crate::rule::RuleDef, Severity)> = catalogue()
        .iter()
        .copied()
        .filter(|r| opts.only.is_empty() || opts.only.contains(&r.id))
        .filter_map(|r| profile.severity(r).map(|s| (r, s)))
        .collect();
    // Two workers: the expensive facts (the initramfs scan behind
    // KERNEL-VIRTIO, the content scan of IMG-NO-SECRETS) start first, on
    // different threads; the cheap rules fill in around them.
    let mut order: Vec<usize> = (0..selected.len()).collect();
    order.sort_by_key(|&i| match selected[i].0.id {
        RuleId::IMG_NO_SECRETS => 0,
        RuleId::KERNEL_VIRTIO => 1,
        _ => 2,
    });
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<RuleResult>>> = selected
        .iter()
        .map(|_| std::sync::Mutex::new(None))
        .collect();
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&i) = order.get(k) else { break };
                    let (rule, severity) = selected[i];
                    let result = run_rule(&cx, rule, severity, opts.waivers);
                    if let Ok(mut slot) = slots[i].lock() {
                        *slot = Some(result);
                    }
                }
            });
        }
    });
    let results: Vec<RuleResult> = slots
        .into_iter()
        .filter_map(|m| m.into_inner().ok().flatten())
        .collect();
    let summary = Summary::of(&results);
    let mut notes = insp.notes.clone();
    notes.extend(cx.notes());
    let image = image_info(insp, &cx);
    Report {
        schema_version: 1,
        tool: ToolInfo {
            name: "ibkit".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        image,
        profile: profile.name.clone(),
        manifest: opts
            .manifest
            .and_then(|m| m.path.as_ref().map(|p| p.display().to_string())),
        results,
        summary,
        complete: notes.is_empty(),
        notes,
        elapsed_ms: start.elapsed().as_millis() as u64,
    }
}

fn run_rule(
    cx: &Context,
    rule: &crate::rule::RuleDef,
    severity: Severity,
    waivers: Option<&Waivers>,
) -> RuleResult {
    let t = Instant::now();
    let outcome = (rule.check)(cx);
    rule_result(
        rule,
        severity,
        outcome,
        waivers,
        t.elapsed().as_micros() as u64,
    )
}

/// Turn an outcome into the report's item for `rule`: waivers applied, a
/// failing `warning` rule shown as `warn`, the one-line summary. Shared by
/// `check` and by live checks (`boot-test`) that produce their own outcomes.
pub fn rule_result(
    rule: &crate::rule::RuleDef,
    severity: Severity,
    mut outcome: crate::model::Outcome,
    waivers: Option<&Waivers>,
    elapsed_us: u64,
) -> RuleResult {
    if let Some(w) = waivers {
        w.apply(rule.id, &mut outcome);
    }
    let status = match (outcome.status(), severity) {
        (Status::Fail, Severity::Warning) => Status::Warn,
        (s, _) => s,
    };
    let summary = summarize(status, &outcome);
    RuleResult {
        id: rule.id.as_str().to_string(),
        title: rule.title.to_string(),
        requirement: rule.requirement.to_string(),
        severity,
        status,
        summary,
        evidence: outcome.evidence,
        findings: outcome.findings,
        unverified: outcome.unverified,
        remediation: rule.remediation.to_string(),
        elapsed_us,
    }
}

fn summarize(status: Status, o: &crate::model::Outcome) -> String {
    use crate::model::Level;
    let count = |l: Level| {
        o.findings
            .iter()
            .filter(|f| f.level == l && f.waived.is_none())
            .count()
    };
    match status {
        Status::Fail | Status::Warn => {
            let first = o
                .findings
                .iter()
                .filter(|f| f.waived.is_none())
                .min_by_key(|f| std::cmp::Reverse(f.level))
                .map(|f| f.message.clone())
                .unwrap_or_default();
            let n = count(Level::Fail) + count(Level::Warn);
            if n > 1 {
                format!("{first} (and {} more)", n - 1)
            } else {
                first
            }
        }
        Status::Waived => "all problems waived".into(),
        Status::Unknown => o
            .unverified
            .first()
            .cloned()
            .unwrap_or_else(|| "not verifiable offline".into()),
        Status::Pass => o
            .evidence
            .first()
            .map(|e| e.detail.clone())
            .unwrap_or_else(|| "no problems found".into()),
    }
}
