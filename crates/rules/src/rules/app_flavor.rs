//! APP-FLAVOR (static side): the image adapts to the buyer's flavor.

use super::util::{find_binary, installed_package};
use crate::context::Context;
use crate::facts::boot::split_args;
use crate::model::{Evidence, Outcome, Severity};
use crate::rule::RuleDef;
use crate::rule_id::RuleId;

/// The rule.
pub static RULE: RuleDef = RuleDef {
    id: RuleId::APP_FLAVOR,
    title: "Works on any flavor (CPU, RAM, disk size)",
    requirement: "The application must work on any infrastructure configuration the buyer picks (vCPUs, RAM, disk size).",
    severity: Severity::Error,
    doc: r#"## What it checks
- the root filesystem can grow into a bigger disk: `growpart` is installed
  (cloud-guest-utils / cloud-utils-growpart) and cloud-init's `growpart` and
  `resizefs` modules are not switched off;
- the root partition is the **last** partition on the disk (growpart can
  only extend a partition into free space behind it); root on LVM is a
  warning (the PV grows, the LV does not without extra steps);
- `/etc/fstab` names filesystems by UUID, LABEL or PARTUUID, not by device
  name (`/dev/vda1` becomes `/dev/sda1` on another disk bus);
- the kernel command line does not pin memory or CPUs (`mem=`, `maxcpus=`,
  `nr_cpus=`, `hugepages=`).

## Why
Buyers pick the flavor: 1 vCPU/1 GiB or 16 vCPU/64 GiB, a 10 GiB or a 500 GiB
disk. An image that keeps its build-time disk size, or whose fstab breaks on
a different bus, wastes what the buyer pays for or does not boot.

## Evidence
Offline: packages, the partition table, fstab lines, cmdline. Live
(boot-test): boots with small and large RAM/CPU and a bigger disk, and the
root filesystem grew.

## Remediation
Install growpart, keep root as the last partition, mount by UUID, and drop
memory/CPU pins from the kernel command line.

## Traps
A root partition followed by swap or a recovery partition cannot grow.
"#,
    remediation: "Install growpart, keep root last on the disk, mount by UUID, don't pin mem=/maxcpus= on the command line.",
    check,
};

fn check(cx: &Context) -> Outcome {
    let mut o = Outcome::default();
    // growpart + cloud-init modules.
    match (
        installed_package(
            cx,
            &["cloud-guest-utils", "cloud-utils-growpart", "cloud-utils"],
        ),
        find_binary(cx, &["growpart"]),
    ) {
        (Some(e), _) => o.proof(e),
        (None, Some(b)) => o.proof(Evidence::at(b, "growpart present")),
        (None, None) => o.fail(
            "growpart-missing",
            "growpart is not installed: the root partition will not grow into a bigger disk",
            Evidence::note("no cloud-guest-utils/cloud-utils-growpart package and no growpart"),
        ),
    }
    let cc = cx.cloud();
    if let Some(mods) = cc.names("cloud_init_modules") {
        let origin = cc
            .origin("cloud_init_modules")
            .unwrap_or("/etc/cloud/cloud.cfg")
            .to_owned();
        for m in ["growpart", "resizefs"] {
            if !mods.iter().any(|x| x == m || x == &format!("cc_{m}")) {
                o.fail(
                    "cloudinit-module-off",
                    format!("cloud-init module {m} is not in cloud_init_modules"),
                    Evidence::at(origin.clone(), format!("cloud_init_modules lacks {m}")),
                );
            }
        }
    }
    if let Some(mode) = cc.get("growpart").and_then(|g| g.get("mode")) {
        let off = mode
            .as_str()
            .is_some_and(|m| m.eq_ignore_ascii_case("off") || m.eq_ignore_ascii_case("false"))
            || mode.as_bool() == Some(false);
        if off {
            o.fail(
                "growpart-off",
                "cloud-init growpart is switched off",
                Evidence::at(
                    cc.origin("growpart")
                        .unwrap_or("/etc/cloud/cloud.cfg")
                        .to_owned(),
                    "growpart: {mode: off}",
                ),
            );
        }
    }
    if cc.bool("resize_rootfs") == Some(false) {
        o.fail(
            "resizefs-off",
            "cloud-init resize_rootfs is false",
            Evidence::at(
                cc.origin("resize_rootfs")
                    .unwrap_or("/etc/cloud/cloud.cfg")
                    .to_owned(),
                "resize_rootfs: false",
            ),
        );
    }

    // Partition layout.
    match cx.inspection.and_then(|i| i.root.map(|r| (i, r))) {
        Some((insp, root)) => {
            let rv = &insp.volumes[root];
            if let Some((vg, lv)) = &rv.lvm {
                o.warn("root-on-lvm", format!("root is on LVM ({vg}/{lv}): growpart grows the physical volume, the logical volume needs lvextend"), Evidence::note(format!("root on {vg}/{lv}")));
            }
            match &rv.partition {
                Some(p) => {
                    let last = insp.volumes.iter().filter_map(|v| v.partition.as_ref()).max_by_key(|q| q.offset);
                    match last {
                        Some(l) if l.offset > p.offset => o.fail(
                            "root-not-last",
                            format!("the root partition ({}) is not the last on the disk: partition {} follows it", p.number, l.number),
                            Evidence::note(format!("root p{} at {} MiB; p{} at {} MiB", p.number, p.offset >> 20, l.number, l.offset >> 20)),
                        ),
                        _ => o.proof(Evidence::note(format!("root partition p{} is the last on the disk and can grow", p.number))),
                    }
                }
                None if rv.lvm.is_none() => o.info("root-whole-disk", "root filesystem spans the whole disk (no partition table): resize2fs/xfs_growfs can grow it, growpart is not needed", Evidence::note("no partition table")),
                None => {}
            }
        }
        None => o.unverified("a directory input has no partition layout to check"),
    }

    // fstab by device name.
    if let Some(text) = cx.read_text("/etc/fstab") {
        for e in ibkit_image::inspect::parse_fstab(&text) {
            let by_name = ["/dev/vd", "/dev/sd", "/dev/xvd", "/dev/hd", "/dev/nvme"]
                .iter()
                .any(|p| e.spec.starts_with(p));
            if by_name {
                o.warn(
                    "fstab-device-name",
                    format!("/etc/fstab mounts {} by device name {}", e.point, e.spec),
                    Evidence::at_line("/etc/fstab", e.line, format!("{} {}", e.spec, e.point)),
                );
            }
        }
    }

    // Kernel command line pins.
    if let Some(c) = cx.boot().effective() {
        for a in split_args(&c.args) {
            let key = a.split('=').next().unwrap_or("");
            if matches!(
                key,
                "mem" | "maxcpus" | "nr_cpus" | "hugepages" | "possible_cpus"
            ) {
                o.warn(
                    "cmdline-pin",
                    format!("kernel command line pins resources: {a}"),
                    Evidence::at_line(c.path.clone(), c.line, a.clone()),
                );
            }
        }
    }
    o
}
