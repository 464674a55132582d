//! KERNEL-VIRTIO live: the root disk is driven by virtio_blk, the NIC by
//! virtio_net, and a virtiofs share (tag `ibkit`) mounts and reads back the
//! marker the host wrote.

use ibkit_rules::{Evidence, Outcome};

use super::first_guest;
use crate::observe::Observations;

pub fn check(o: &Observations) -> Outcome {
    let g = match first_guest(o) {
        Ok(g) => g,
        Err(unknown) => return unknown,
    };
    let mut out = Outcome::default();
    match g.block_driver.as_deref() {
        Some("virtio_blk") => out.proof(Evidence::at(
            "/sys/block/vda/device/driver",
            "root disk on virtio_blk",
        )),
        Some(d) => out.fail(
            "root-not-virtio",
            format!("the root disk is driven by {d}, not virtio_blk"),
            Evidence::at("/sys/block", d.to_string()),
        ),
        None => out.unverified("the root disk's driver could not be read"),
    }
    if g.net_drivers.iter().any(|d| d == "virtio_net") {
        out.proof(Evidence::at(
            "/sys/class/net/*/device/driver",
            "NIC on virtio_net",
        ));
    } else {
        out.fail(
            "nic-not-virtio",
            format!(
                "no NIC is driven by virtio_net (drivers: {})",
                if g.net_drivers.is_empty() {
                    "none".into()
                } else {
                    g.net_drivers.join(", ")
                }
            ),
            Evidence::at("/sys/class/net", "driver links"),
        );
    }
    match (&g.share.unavailable, g.share.mounted, &g.share.error) {
        (Some(why), _, _) => out.warn(
            "virtiofs-not-tested",
            format!("virtiofs was not tested: {why}"),
            Evidence::note("host side"),
        ),
        (None, true, _) => out.proof(Evidence::note(
            "virtiofs share `ibkit` mounted and the host's marker read back",
        )),
        (None, false, e) => out.fail(
            "virtiofs-mount",
            format!(
                "the virtiofs share did not mount: {}",
                e.as_deref().unwrap_or("unknown error")
            ),
            Evidence::note("mount -t virtiofs ibkit"),
        ),
    }
    out
}
