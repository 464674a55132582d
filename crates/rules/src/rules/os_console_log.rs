//! OS-CONSOLE-LOG: the kernel logs to the serial console.

use crate::context::Context;
use crate::facts::boot::{Cmdline, SourceKind, consoles};
use crate::model::{Evidence, Outcome, Severity};
use crate::rule::RuleDef;
use crate::rule_id::RuleId;

/// The rule.
pub static RULE: RuleDef = RuleDef {
    id: RuleId::OS_CONSOLE_LOG,
    title: "Kernel boot log on the serial console",
    requirement: "The OS must have the kernel write its boot log to the console (console=ttyS0 ...).",
    severity: Severity::Error,
    doc: r#"## What it checks
The kernel command line that actually boots (the default `grub.cfg` entry,
the newest Boot Loader Specification entry on RHEL-family images, or the
extlinux/syslinux `LABEL` named by `ONTIMEOUT`, `MENU DEFAULT` or `DEFAULT`,
with its `APPEND`, or the global `APPEND` if it has none) has
`console=ttyS0`, and `ttyS0` is the **last** `console=`. The command line the
next `update-grub`/`grub2-mkconfig` will write (`GRUB_CMDLINE_LINUX` and
`GRUB_CMDLINE_LINUX_DEFAULT` in `/etc/default/grub` and `grub.d/*.cfg`) is
checked too, so a kernel update does not silently drop the setting.

## Why
OpenStack's console log (`openstack console log show`, the marketplace's
boot diagnostics) is the VM's first serial port. Without `console=ttyS0` a
VM that fails to boot leaves no trace the buyer or support can read.

## Evidence
Offline: file and line of each command line. Live (boot-test): kernel
messages in the serial log, `/proc/cmdline`.

## Remediation
Set `GRUB_CMDLINE_LINUX="... console=tty0 console=ttyS0,115200"` (ttyS0
last) in `/etc/default/grub` and regenerate the menu (`update-grub` or
`grub2-mkconfig -o /boot/grub2/grub.cfg`; on BLS systems `grubby
--update-kernel=ALL --args=console=ttyS0,115200`).

## Traps
The kernel prints to every `console=`, but `/dev/console` (systemd,
cloud-init and their SSH host key fingerprints) is the **last** one: with
`console=ttyS0 console=tty0` the serial log stops after the kernel. That is a
warning.
extlinux/syslinux boot the label `DEFAULT` names, not the first one: a
rescue entry with `console=ttyS0` above the default entry does not help. An
old-syntax `DEFAULT /vmlinuz args` (no such label) boots that kernel with the
global `APPEND` plus its own arguments.
"#,
    remediation: "Put console=ttyS0,115200 last on the kernel command line in /etc/default/grub and regenerate grub.cfg.",
    check,
};

fn is_serial0(c: &str) -> bool {
    c == "ttyS0" || c.starts_with("ttyS0,")
}

/// Judge one command line: `Ok(detail)` if ttyS0 is last, `Err((warn?, detail))`.
fn judge(c: &Cmdline) -> Result<String, (bool, String)> {
    let cons = consoles(&c.args);
    let shown = if cons.is_empty() {
        "no console=".to_string()
    } else {
        cons.iter()
            .map(|c| format!("console={c}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    match cons.last() {
        Some(last) if is_serial0(last) => Ok(shown),
        Some(_) if cons.iter().any(|c| is_serial0(c)) => {
            Err((true, format!("{shown}: ttyS0 is not the last console")))
        }
        _ => Err((false, shown)),
    }
}

fn check(cx: &Context) -> Outcome {
    let mut o = Outcome::default();
    let boot = cx.boot();
    let Some(effective) = boot.effective() else {
        o.unverified("no boot loader configuration found (grub.cfg, /etc/default/grub, BLS entries, /etc/kernel/cmdline): the kernel command line is unknown");
        return o;
    };
    let what = match &effective.kind {
        SourceKind::GrubEntry { title, .. } => format!("default boot entry \"{title}\""),
        SourceKind::Bls => "default BLS entry".to_string(),
        SourceKind::GrubDefaults => "GRUB defaults (no generated grub.cfg)".to_string(),
        SourceKind::KernelCmdline => "/etc/kernel/cmdline".to_string(),
        SourceKind::Extlinux { label } if label.is_empty() => {
            "extlinux DEFAULT kernel line".to_string()
        }
        SourceKind::Extlinux { label } => format!("extlinux entry \"{label}\""),
    };
    match judge(effective) {
        Ok(d) => o.proof(Evidence::at_line(
            effective.path.clone(),
            effective.line,
            format!("{what}: {d}"),
        )),
        Err((true, d)) => o.warn(
            "console-not-last",
            format!("{what}: ttyS0 is not the last console="),
            Evidence::at_line(effective.path.clone(), effective.line, d),
        ),
        Err((false, d)) => o.fail(
            "console-missing",
            format!("{what} has no console=ttyS0"),
            Evidence::at_line(effective.path.clone(), effective.line, d),
        ),
    }
    // What the next menu regeneration writes.
    if let Some(i) = boot.grub_defaults {
        let d = &boot.cmdlines[i];
        if !std::ptr::eq(d, effective) {
            match judge(d) {
                Ok(det) => o.proof(Evidence::at_line(d.path.clone(), d.line, format!("GRUB defaults: {det}"))),
                Err((_, det)) => o.warn(
                    "console-lost-on-update",
                    "GRUB defaults lack console=ttyS0 last: the next update-grub/grub2-mkconfig drops it",
                    Evidence::at_line(d.path.clone(), d.line, det),
                ),
            }
        }
    }
    o
}
