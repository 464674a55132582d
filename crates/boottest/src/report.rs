//! The boot test's report: `check`'s [`Report`] (one item per SPEC rule ID,
//! same formats and exit codes) plus a `boot` section: accelerator, VMs,
//! time per step and the share spent waiting for the guest.

use serde::{Deserialize, Serialize};

use ibkit_rules::Report;

use crate::run::{StepTiming, VmInfo};

/// `ibkit boot-test`'s result. JSON: the `check` report's fields plus `boot`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BootTestReport {
    /// Rule results, image, summary: as `ibkit check`.
    #[serde(flatten)]
    pub report: Report,
    /// How the VMs ran.
    pub boot: BootInfo,
}

/// How the run went.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BootInfo {
    /// `kvm` or `tcg`.
    pub accel: ibkit_vm::Accel,
    /// Why.
    pub accel_reason: String,
    /// The VMs, with QEMU command lines and log paths.
    pub vms: Vec<VmInfo>,
    /// Every step with its time.
    pub steps: Vec<StepTiming>,
    /// Wall time of the run, seconds.
    pub total_s: f64,
    /// Sum of the steps' time spent waiting for the guest, seconds.
    pub guest_wait_s: f64,
    /// Sum of the steps' wall time, seconds (over 100 % of `total_s` when
    /// the two VMs ran in parallel).
    pub steps_s: f64,
    /// Whether the two VMs ran at the same time.
    pub parallel: bool,
    /// Where logs, captures and observations were kept (null: removed).
    pub work_dir: Option<String>,
}

impl BootInfo {
    pub(crate) fn new(
        accel: ibkit_vm::AccelChoice,
        steps: Vec<StepTiming>,
        vms: Vec<VmInfo>,
        work_dir: Option<String>,
        total_s: f64,
        parallel: bool,
    ) -> BootInfo {
        BootInfo {
            accel: accel.accel,
            accel_reason: accel.reason,
            guest_wait_s: steps.iter().map(|s| s.guest_wait_s).sum(),
            steps_s: steps.iter().map(|s| s.elapsed_s).sum(),
            vms,
            steps,
            total_s,
            parallel,
            work_dir,
        }
    }
}

impl BootTestReport {
    /// True when an error-severity rule failed (exit code 1, as `check`).
    pub fn failed(&self) -> bool {
        self.report.failed()
    }

    /// The boot section for the text report.
    pub fn boot_text(&self) -> String {
        let b = &self.boot;
        let mut s = String::new();
        s.push_str(&format!(
            "Boot test: {} ({}), {:.0} s wall{}\n",
            match b.accel {
                ibkit_vm::Accel::Kvm => "KVM",
                ibkit_vm::Accel::Tcg => "TCG",
            },
            b.accel_reason,
            b.total_s,
            if b.parallel { ", VMs in parallel" } else { "" }
        ));
        for v in &b.vms {
            s.push_str(&format!(
                "  {}: {}\n    serial log: {}\n",
                v.label, v.description, v.serial_log
            ));
        }
        s.push_str("  steps:\n");
        for st in &b.steps {
            s.push_str(&format!(
                "    {:>6.1}s  {:<34} {:>6.1} s (guest wait {:.1} s)\n",
                st.started_s, st.name, st.elapsed_s, st.guest_wait_s
            ));
        }
        if b.steps_s > 0.0 {
            s.push_str(&format!(
                "  waiting for the guest: {:.0} of {:.0} step-seconds ({:.0} %)\n",
                b.guest_wait_s,
                b.steps_s,
                100.0 * b.guest_wait_s / b.steps_s
            ));
        }
        match &b.work_dir {
            Some(d) => s.push_str(&format!("  evidence kept in {d}\n")),
            None => s.push_str("  work directory removed (all passed; --keep keeps it)\n"),
        }
        s
    }
}
