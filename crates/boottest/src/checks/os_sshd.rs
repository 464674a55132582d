//! OS-SSHD live: port 22 answers with an SSH banner and key authentication
//! works on both boots; which unit serves it (service or socket activation).

use ibkit_rules::{Evidence, Outcome};

use crate::observe::{BootObs, Observations};

pub fn check(o: &Observations) -> Outcome {
    let mut out = Outcome::default();
    for b in [o.first.as_ref(), o.flavor.as_ref()].into_iter().flatten() {
        judge(b, &mut out);
    }
    if out.findings.is_empty() && out.evidence.is_empty() {
        return Outcome::unknown("no VM was reachable");
    }
    out
}

fn judge(b: &BootObs, out: &mut Outcome) {
    match (&b.banner, &b.guest) {
        (Some(banner), Some(g)) => {
            let units: Vec<String> = g
                .sshd_units
                .iter()
                .filter(|u| u.active == "active")
                .map(|u| format!("{} ({})", u.unit, u.enabled))
                .collect();
            out.proof(Evidence::note(format!(
                "{}: port 22 answered \"{banner}\" and key login worked after {:.0} s; active: {}",
                b.label,
                b.ssh_ready_after_s.unwrap_or(0.0),
                if units.is_empty() {
                    "no ssh unit reported".into()
                } else {
                    units.join(", ")
                }
            )));
        }
        (Some(banner), None) => out.proof(Evidence::note(format!(
            "{}: port 22 answered \"{banner}\" (login failed: {})",
            b.label,
            b.ssh_error.as_deref().unwrap_or("unknown")
        ))),
        (None, _) if b.network.dhcp_ack.is_some() => out.fail(
            "no-ssh",
            format!(
                "{}: the guest got an address by DHCP but nothing answered SSH on port 22 ({})",
                b.label,
                b.ssh_error.as_deref().unwrap_or("no banner")
            ),
            Evidence::at(b.serial_log.clone(), "see the console log for sshd's start"),
        ),
        (None, _) => out.unverified(format!(
            "{}: the guest never got a network address, so port 22 could not be reached",
            b.label
        )),
    }
}
