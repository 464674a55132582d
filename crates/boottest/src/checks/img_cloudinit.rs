//! IMG-CLOUDINIT live: cloud-init ran on both boots (NoCloud seed, then an
//! OpenStack config drive), finished, and reported no errors
//! (`cloud-init status --long`, `/run/cloud-init/result.json`); the seed's
//! SSH key for the test user was installed.

use ibkit_rules::{Evidence, Outcome};

use super::unreachable;
use crate::observe::{BootObs, Observations};

pub fn check(o: &Observations) -> Outcome {
    let mut out = Outcome::default();
    for b in [o.first.as_ref(), o.flavor.as_ref()].into_iter().flatten() {
        judge(b, &mut out);
    }
    if out.findings.is_empty() && out.evidence.is_empty() {
        return Outcome::unknown(
            unreachable(o).unwrap_or_else(|| "cloud-init was not observed".into()),
        );
    }
    out
}

fn judge(b: &BootObs, out: &mut Outcome) {
    let Some(g) = &b.guest else {
        // A banner but a refused key: the seed's user was never created.
        if b.banner.is_some()
            && let Some(e) = &b.ssh_error
            && e.contains("rejected")
        {
            out.fail(
                "seed-not-applied",
                format!("{}: sshd answered but refused the seed's SSH key: cloud-init did not create the user from the {} seed", b.label, b.seed),
                Evidence::note(e.clone()),
            );
        } else {
            out.unverified(format!(
                "{}: no SSH login, cloud-init state unknown",
                b.label
            ));
        }
        return;
    };
    let Some(ci) = &g.cloud_init else {
        out.fail(
            "no-cloud-init",
            format!("{}: `cloud-init status` did not run in the guest", b.label),
            Evidence::note(g.errors.join("; ")),
        );
        return;
    };
    let at = "/run/cloud-init/result.json";
    for e in &ci.errors {
        out.fail(
            "cloud-init-error",
            format!("{}: cloud-init reported an error: {e}", b.label),
            Evidence::at(at, e.clone()),
        );
    }
    for e in &ci.recoverable {
        out.warn(
            "cloud-init-recoverable",
            format!("{}: cloud-init reported a recoverable error: {e}", b.label),
            Evidence::at(at, e.clone()),
        );
    }
    let status = ci.status.as_deref().unwrap_or("unknown");
    if status != "done" {
        out.fail(
            "cloud-init-status",
            format!("{}: cloud-init status is {status}, not done", b.label),
            Evidence::note(ci.status_text.trim().to_string()),
        );
    }
    if ci.errors.is_empty() && status == "done" {
        out.proof(Evidence::at(
            at,
            format!(
                "{}: cloud-init done without errors (datasource {}), seed user's key accepted",
                b.label,
                ci.datasource.as_deref().unwrap_or("unknown")
            ),
        ));
    }
}
