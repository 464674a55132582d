//! APP-NET live: the cloud's network as OpenStack gives it: DHCP on a
//! virtio-net NIC with an arbitrary MAC on both boots, and instance data
//! from a NoCloud seed (first boot) and from an OpenStack config drive
//! (`config-2`, second boot), which cloud-init must pick up.

use ibkit_rules::{Evidence, Outcome};

use crate::observe::Observations;

pub fn check(o: &Observations) -> Outcome {
    let mut out = Outcome::default();
    for b in [o.first.as_ref(), o.flavor.as_ref()].into_iter().flatten() {
        match &b.network.dhcp_ack {
            Some(ip) => out.proof(Evidence::note(format!(
                "{}: DHCP on virtio-net gave {ip} to MAC {}",
                b.label, b.mac
            ))),
            None if b.network.error.is_none() => out.fail(
                "no-dhcp",
                format!(
                    "{}: the guest did not configure its virtio-net NIC by DHCP (MAC {})",
                    b.label, b.mac
                ),
                Evidence::note("network capture of the VM's NIC"),
            ),
            None => out.unverified(format!("{}: network capture unreadable", b.label)),
        }
        let ds = b
            .guest
            .as_ref()
            .and_then(|g| g.cloud_init.as_ref())
            .and_then(|c| c.datasource.clone());
        match (b.seed.as_str(), ds) {
            ("ConfigDrive", Some(ds)) if ds.contains("ConfigDrive") || ds.contains("OpenStack") => {
                out.proof(Evidence::at(
                    "/run/cloud-init/result.json",
                    format!(
                        "{}: cloud-init read the OpenStack config drive ({ds})",
                        b.label
                    ),
                ))
            }
            ("ConfigDrive", Some(ds)) => out.fail(
                "config-drive-ignored",
                format!(
                    "{}: cloud-init did not use the OpenStack config drive (datasource: {ds})",
                    b.label
                ),
                Evidence::at("/run/cloud-init/result.json", "v1.datasource"),
            ),
            (_, Some(ds)) => out.proof(Evidence::at(
                "/run/cloud-init/result.json",
                format!("{}: datasource {ds}", b.label),
            )),
            (_, None) => out.unverified(format!("{}: cloud-init's datasource is unknown", b.label)),
        }
    }
    if out.findings.is_empty() && out.evidence.is_empty() {
        return Outcome::unknown("no VM started");
    }
    out
}
