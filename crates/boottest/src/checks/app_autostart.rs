//! What the two autostart checks share: judging a restart of the first VM.

use ibkit_rules::{Evidence, Outcome};

use super::{health_evidence, health_failure, no_health};
use crate::observe::{BootObs, Observations, RestartObs};

/// `vm` is the VM that was restarted: its first boot must have been healthy.
pub(crate) fn judge(
    o: &Observations,
    vm: Option<&BootObs>,
    r: Option<&RestartObs>,
    what: &str,
) -> Outcome {
    let Some(vm) = vm else {
        return Outcome::unknown("the VM did not start");
    };
    if vm.guest.is_none() {
        return Outcome::unknown(format!(
            "could not log in to the {}: {}",
            vm.label,
            vm.ssh_error.as_deref().unwrap_or("no SSH")
        ));
    }
    if let Some(why) = no_health(o) {
        return Outcome::unknown(why);
    }
    if let Some(h) = vm.health.as_ref()
        && !h.passed
    {
        return Outcome::unknown(format!(
            "the app was not healthy after the {}, so a restart proves nothing",
            vm.label
        ));
    }
    let Some(r) = r else {
        return Outcome::unknown(format!(
            "the VM was not restarted ({what}): an earlier step failed"
        ));
    };
    let mut out = Outcome::default();
    if let Some(e) = &r.error {
        out.fail(
            "not-back",
            format!("{what} the VM did not come back: {e}"),
            Evidence::note(r.how.clone()),
        );
        return out;
    }
    if r.boot_id_before.is_some() && r.boot_id_before == r.boot_id_after {
        out.fail(
            "no-restart",
            format!("{what} the boot_id did not change: the guest did not really restart"),
            Evidence::at(
                "/proc/sys/kernel/random/boot_id",
                r.boot_id_after.clone().unwrap_or_default(),
            ),
        );
        return out;
    }
    out.proof(Evidence::at(
        "/proc/sys/kernel/random/boot_id",
        format!(
            "{what} SSH was back after {:.0} s with a new boot_id",
            r.back_after_s.unwrap_or(0.0)
        ),
    ));
    match &r.health {
        Some(h) if h.passed => out.proof(health_evidence(what, h)),
        Some(h) => {
            out.fail(
                "not-started",
                health_failure(what, h),
                Evidence::note(r.how.clone()),
            );
            for u in &r.app_units {
                out.info(
                    "unit-state",
                    format!("{}: {} and {}", u.unit, u.active, u.enabled),
                    Evidence::note(format!("systemctl is-active / is-enabled {}", u.unit)),
                );
            }
        }
        None => out.unverified(format!("the health check did not run {what}")),
    }
    out
}
