//! OS-NO-FIXED-MAC live: two VMs, each with a new random MAC (OpenStack's
//! `fa:16:3e` prefix), both bring their NIC up and get an address by DHCP,
//! as seen in the capture of their network. When a VM never asks for an
//! address, the offline check's findings (udev rules, ifcfg `HWADDR`, netplan
//! `macaddress` ...) are attached: they usually say where the MAC is pinned.

use ibkit_rules::{Evidence, Outcome};

use crate::observe::Observations;

pub fn check(o: &Observations) -> Outcome {
    let mut out = Outcome::default();
    let mut failed = false;
    for b in [o.first.as_ref(), o.flavor.as_ref()].into_iter().flatten() {
        if let Some(e) = &b.network.error {
            out.unverified(format!(
                "{}: the network capture could not be read: {e}",
                b.label
            ));
            continue;
        }
        match &b.network.dhcp_ack {
            Some(ip) => out.proof(Evidence::note(format!(
                "{}: the NIC with new MAC {} got {ip} by DHCP after {:.0} s",
                b.label,
                b.mac,
                b.network.dhcp_ack_after_s.unwrap_or(0.0)
            ))),
            None => {
                failed = true;
                out.fail(
                    "no-address-with-new-mac",
                    format!(
                        "{}: the guest never got an address on its NIC with the new MAC {} ({} frames, {} DHCP requests sent)",
                        b.label, b.mac, b.network.frames_from_guest, b.network.dhcp_requests
                    ),
                    Evidence::at(b.serial_log.clone(), "network capture of the VM's NIC"),
                );
            }
        }
    }
    if failed {
        for f in &o.offline_fixed_mac {
            out.info(
                "offline-evidence",
                format!("offline check: {f}"),
                Evidence::note("ibkit check --rule OS-NO-FIXED-MAC"),
            );
        }
    }
    if out.findings.is_empty() && out.evidence.is_empty() {
        return Outcome::unknown("no VM started");
    }
    out
}
