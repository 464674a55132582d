//! APP-KVM live: on the QEMU/KVM device model an OpenStack compute node uses
//! (virtio-blk, virtio-net, SeaBIOS, DHCP), the app's health check passes
//! after first boot. The report says whether KVM or TCG ran the guest.

use ibkit_rules::{Evidence, Outcome};

use super::{health_evidence, health_failure, no_health, unreachable};
use crate::observe::Observations;

pub fn check(o: &Observations) -> Outcome {
    let mut out = Outcome::default();
    let Some(b) = &o.first else {
        return Outcome::unknown("the first VM did not start");
    };
    if let Some(a) = &o.accel
        && a.accel == ibkit_vm::Accel::Tcg
    {
        out.info(
            "tcg",
            format!("the guest ran under TCG, not KVM: {}", a.reason),
            Evidence::note("accelerator"),
        );
    }
    if let Some(why) = no_health(o) {
        out.unverified(why);
        return out;
    }
    match &b.health {
        Some(h) if h.passed => out.proof(health_evidence(
            &format!("first boot ({})", b.describe()),
            h,
        )),
        Some(h) => out.fail(
            "unhealthy-first-boot",
            health_failure("first boot", h),
            Evidence::note(b.describe()),
        ),
        None => {
            out.unverified(unreachable(o).unwrap_or_else(|| "the health check did not run".into()))
        }
    }
    out
}
