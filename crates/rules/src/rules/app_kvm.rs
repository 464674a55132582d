//! APP-KVM (static side): an x86-64 image with a kernel that runs as a KVM guest.

use crate::context::Context;
use crate::model::{Evidence, Outcome, Severity};
use crate::rule::RuleDef;
use crate::rule_id::RuleId;

/// The rule.
pub static RULE: RuleDef = RuleDef {
    id: RuleId::APP_KVM,
    title: "Runs on KVM in OpenStack",
    requirement: "The application must run on KVM virtualization in OpenStack.",
    severity: Severity::Error,
    doc: r#"## What it checks
The image's userland is x86-64 (the ELF header of `/sbin/init`, else
`/bin/sh`), a kernel is installed, and its config enables KVM guest support
(`CONFIG_KVM_GUEST`, `CONFIG_HYPERVISOR_GUEST`) when the config is present.
The virtio drivers are KERNEL-VIRTIO's job.

## Why
The platform's compute nodes are x86-64 KVM hosts. An arm64 image, or an
image without a kernel (a container root filesystem), does not boot.

## Evidence
Offline: ELF machine of `/sbin/init`, the kernel config lines. Live
(boot-test): the VM boots under QEMU/KVM with the cloud's devices.

## Remediation
Build the image for x86-64 with a distribution cloud kernel.

## Traps
A container image exported to qcow2 has a root filesystem but no kernel.
"#,
    remediation: "Build for x86-64 with a KVM-capable (cloud) kernel.",
    check,
};

fn elf_machine(head: &[u8]) -> Option<u16> {
    if head.len() < 20 || &head[0..4] != b"\x7fELF" {
        return None;
    }
    let le = head[5] == 1;
    let b = [head[18], head[19]];
    Some(if le {
        u16::from_le_bytes(b)
    } else {
        u16::from_be_bytes(b)
    })
}

fn machine_name(m: u16) -> String {
    match m {
        62 => "x86-64".into(),
        3 => "i386".into(),
        183 => "aarch64".into(),
        40 => "arm".into(),
        243 => "riscv".into(),
        21 => "ppc64".into(),
        22 => "s390".into(),
        other => format!("ELF machine {other}"),
    }
}

fn check(cx: &Context) -> Outcome {
    let mut o = Outcome::default();
    let mut arch_known = false;
    for p in ["/sbin/init", "/bin/sh", "/usr/bin/env"] {
        let Ok(Some(head)) = cx.guest.read_head(p, 64) else {
            continue;
        };
        let Some(m) = elf_machine(&head) else {
            continue;
        };
        arch_known = true;
        let resolved = cx
            .guest
            .resolve(p, true)
            .map(|r| String::from_utf8_lossy(&r.path).into_owned())
            .unwrap_or_else(|_| p.to_owned());
        if m == 62 {
            o.proof(Evidence::at(resolved, "x86-64 ELF executable"));
        } else {
            o.fail(
                "wrong-architecture",
                format!(
                    "the image is built for {}, the platform runs x86-64 KVM",
                    machine_name(m)
                ),
                Evidence::at(resolved, machine_name(m)),
            );
        }
        break;
    }
    if !arch_known {
        o.unverified("no ELF executable at /sbin/init or /bin/sh to tell the architecture");
    }
    let kernels = cx.kernels();
    match crate::facts::kernel::newest(kernels) {
        None => o.fail(
            "no-kernel",
            "no kernel is installed: the image cannot boot as a VM",
            Evidence::note("no /boot/vmlinuz-* and no /lib/modules/*"),
        ),
        Some(k) => match (k.config_value("KVM_GUEST"), k.config_path.clone()) {
            (Some("y"), Some(p)) => o.proof(Evidence::at(
                p,
                format!("kernel {}: CONFIG_KVM_GUEST=y", k.version),
            )),
            (Some(v), Some(p)) => o.warn(
                "no-kvm-guest",
                format!("kernel {} is built without KVM guest support", k.version),
                Evidence::at(p, format!("CONFIG_KVM_GUEST={v}")),
            ),
            _ => o.proof(Evidence::note(format!(
                "kernel {} installed (no config file to check KVM guest support)",
                k.version
            ))),
        },
    }
    o
}
