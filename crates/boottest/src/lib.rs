//! `ibkit boot-test`: prove on a running VM what no file can show.
//!
//! Two VMs boot from the image under QEMU (KVM when a real probe boot shows
//! it works, else TCG), each on a throw-away overlay with virtio-blk,
//! virtio-net (random MAC, DHCP), a cloud-init seed written in Rust and a
//! captured serial console. The first VM (small flavor, NoCloud seed,
//! virtiofs share) is inspected over SSH, then rebooted cleanly and reset
//! hard; the second (larger flavor and disk, new MAC, OpenStack config
//! drive) proves the image adapts. What was seen ([`observe`]) is judged by
//! one pure function per SPEC rule ([`checks`]) into the same
//! [`ibkit_rules::Report`] `ibkit check` produces, so formats, JSON shape
//! and exit codes are shared.
//!
//! | module | job |
//! |---|---|
//! | [`options`] | what a run is told |
//! | `run` | the course: VMs, SSH, restarts |
//! | `gather` | facts read from a booted guest and its network capture |
//! | [`health`] | probing the manifest's `[health]` check |
//! | `billing` | the marketplace's billing emulator wired to the app, pushes watched |
//! | [`guest`] | parsers for guest output |
//! | [`observe`] | the observations |
//! | [`checks`] | one file per rule |
//! | [`report`] | the report and its boot section |

mod billing;
pub mod checks;
mod error;
mod gather;
pub mod guest;
pub mod health;
pub mod observe;
pub mod options;
pub mod report;
mod run;

use std::path::PathBuf;
use std::time::Instant;

pub use error::BootTestError;
pub use options::{AccelRequest, Flavor, Options};
pub use report::{BootInfo, BootTestReport};
pub use run::{Progress, StepTiming, TEST_USER, VmInfo};

use ibkit_rules::profile::Profile;
use ibkit_rules::{CheckOptions, Report, Summary, rule_def, rule_result};

/// What the offline side tells the run.
struct ImageFacts {
    info: ibkit_rules::engine::ImageInfo,
    virtual_size: u64,
    notes: Vec<String>,
    offline_fixed_mac: Vec<String>,
    kernel: Option<(PathBuf, Option<PathBuf>)>,
    /// The image's `/etc/shadow` (name → hash): APP-NOPASS live tells a
    /// preset password from one first boot set.
    image_shadow: std::collections::BTreeMap<String, String>,
}

/// Run the whole boot test.
pub async fn boot_test(opts: Options, progress: Progress) -> Result<BootTestReport, BootTestError> {
    let t0 = Instant::now();
    let clock = run::Clock::new(progress);
    let (work, temp) = match &opts.work_dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| BootTestError::io(d, e))?;
            (d.clone(), None)
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("ibkit-boottest-")
                .tempdir()
                .map_err(|e| BootTestError::Setup(format!("temporary directory: {e}")))?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    clock.say(&format!("reading {}", opts.image.display()));
    let facts = {
        let image = opts.image.clone();
        let manifest = opts.manifest.clone();
        let work = work.clone();
        let probe = opts.accel == AccelRequest::Auto;
        tokio::task::spawn_blocking(move || image_facts(&image, manifest.as_ref(), &work, probe))
            .await
            .map_err(|e| BootTestError::Image(format!("reader task: {e}")))??
    };
    // The VMs' gate, run once up front: a disk QEMU may not open fails
    // here, before the accelerator probe boots anything.
    ibkit_vm::approve_image("ibkit-boottest", &opts.image)
        .await
        .map_err(|e| BootTestError::Image(e.to_string()))?;
    let accel = run::choose_accel(&opts, facts.kernel.clone(), &clock).await;
    clock.record("read image, choose accelerator", 0.0, 0.0);
    clock.say(&format!(
        "accelerator: {} ({})",
        match accel.accel {
            ibkit_vm::Accel::Kvm => "KVM",
            ibkit_vm::Accel::Tcg => "TCG",
        },
        accel.reason
    ));
    let course = run::run_course(
        &opts,
        &accel,
        &work,
        facts.virtual_size,
        facts.image_shadow.clone(),
        &clock,
    )
    .await?;
    let mut obs = course.observations;
    obs.offline_fixed_mac = facts.offline_fixed_mac;

    let profile = Profile::marketplace();
    let mut results = Vec::new();
    for c in checks::ALL {
        let Some(rule) = rule_def(c.id) else {
            continue;
        };
        let Some(severity) = profile.severity(rule) else {
            continue;
        };
        let t = Instant::now();
        let outcome = (c.check)(&obs);
        results.push(rule_result(
            rule,
            severity,
            outcome,
            None,
            t.elapsed().as_micros() as u64,
        ));
    }
    // Catalogue order, as `check` reports.
    let order: Vec<ibkit_rules::RuleId> = ibkit_rules::catalogue().iter().map(|r| r.id).collect();
    results.sort_by_key(|r| order.iter().position(|id| *id == r.id));
    let mut notes = facts.notes;
    notes.extend(course.notes);
    // A VM nobody could log in to: say why, with the console's last words.
    for b in [obs.first.as_ref(), obs.flavor.as_ref()]
        .into_iter()
        .flatten()
    {
        if b.guest.is_none() {
            let from = b.serial.tail.len().saturating_sub(5);
            notes.push(format!(
                "{}: {}; last console lines ({}): {}",
                b.label,
                b.ssh_error.as_deref().unwrap_or("no SSH login"),
                b.serial_log,
                b.serial.tail[from..].join(" | ")
            ));
        }
    }
    let report = Report {
        schema_version: 1,
        tool: ibkit_rules::engine::ToolInfo {
            name: "ibkit".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        },
        image: facts.info,
        profile: profile.name.clone(),
        manifest: opts
            .manifest
            .as_ref()
            .and_then(|m| m.path.as_ref().map(|p| p.display().to_string())),
        summary: Summary::of(&results),
        results,
        complete: notes.is_empty(),
        notes,
        elapsed_ms: t0.elapsed().as_millis() as u64,
    };
    let failed = report.failed()
        || report
            .results
            .iter()
            .any(|r| r.status == ibkit_rules::Status::Unknown);
    let obs_path = work.join("observations.json");
    if let Ok(j) = serde_json::to_string_pretty(&obs) {
        let _ = std::fs::write(&obs_path, j);
    }
    // Evidence stays after a failure (without the big disks unless --keep),
    // and always when the caller chose the directory.
    let kept = if opts.keep || opts.work_dir.is_some() || failed {
        if !opts.keep {
            remove_disks(&work);
        }
        if let Some(t) = temp {
            let _ = t.keep();
        }
        Some(work.display().to_string())
    } else {
        drop(temp);
        None
    };
    let steps = clock.steps();
    let boot = BootInfo::new(
        accel,
        steps,
        course.vms,
        kept,
        t0.elapsed().as_secs_f64(),
        opts.parallel,
    );
    Ok(BootTestReport { report, boot })
}

/// Overlays are large: drop them, keep logs, captures and seeds.
fn remove_disks(work: &std::path::Path) {
    for sub in ["vm1-first", "vm2-flavor"] {
        let _ = std::fs::remove_file(work.join(sub).join("overlay.qcow2"));
    }
    let _ = std::fs::remove_dir_all(work.join("kvm-probe"));
}

fn image_facts(
    image: &std::path::Path,
    manifest: Option<&ibkit_rules::manifest::Manifest>,
    work: &std::path::Path,
    want_kernel: bool,
) -> Result<ImageFacts, BootTestError> {
    let insp = ibkit_image::inspect(image, &ibkit_image::InspectOptions::default())
        .map_err(|e| BootTestError::Image(e.to_string()))?;
    let virtual_size = match &insp.input {
        ibkit_image::inspect::InputKind::Disk { virtual_size, .. } => *virtual_size,
        ibkit_image::inspect::InputKind::Directory => {
            return Err(BootTestError::Image(
                "a directory cannot be booted: give a qcow2 or raw disk image".into(),
            ));
        }
    };
    let offline = ibkit_rules::check(
        &insp,
        &CheckOptions {
            manifest,
            only: vec![ibkit_rules::RuleId::OS_NO_FIXED_MAC],
            ..Default::default()
        },
    );
    let offline_fixed_mac = offline
        .results
        .iter()
        .flat_map(|r| r.findings.iter())
        .map(|f| {
            let at = f
                .evidence
                .path
                .as_deref()
                .map(|p| match f.evidence.line {
                    Some(l) => format!(" ({p}:{l})"),
                    None => format!(" ({p})"),
                })
                .unwrap_or_default();
            format!("{}{at}", f.message)
        })
        .collect();
    let kernel = if want_kernel {
        run::extract_kernel(&insp.guest, work)
    } else {
        None
    };
    let image_shadow = insp
        .guest
        .read("/etc/shadow")
        .ok()
        .flatten()
        .map(|b| guest::shadow_hashes(&String::from_utf8_lossy(&b)))
        .unwrap_or_default();
    Ok(ImageFacts {
        image_shadow,
        info: offline.image,
        virtual_size,
        notes: offline.notes,
        offline_fixed_mac,
        kernel,
    })
}
