//! KERNEL-VIRTIO: virtio-net, virtio-blk and virtiofs drivers, reachable at boot.

use crate::context::Context;
use crate::facts::boot::{Cmdline, split_args};
use crate::facts::initramfs::normalise_module;
use crate::facts::kernel::{DriverState, Kernel, newest};
use crate::facts::modprobe::{InstallEffect, Modprobe};
use crate::model::{Evidence, Outcome, Severity};
use crate::rule::RuleDef;
use crate::rule_id::RuleId;

/// `(module, config symbol, needed in the initramfs to mount root)`.
pub const DRIVERS: &[(&str, &str, bool)] = &[
    ("virtio_pci", "VIRTIO_PCI", true),
    ("virtio_blk", "VIRTIO_BLK", true),
    ("virtio_net", "VIRTIO_NET", false),
    ("virtiofs", "VIRTIO_FS", false),
];

/// The init function of each driver, as `initcall_blacklist=` names it (it
/// stops a built-in driver and a module alike).
const INITCALLS: &[(&str, &str)] = &[
    ("virtio_pci", "virtio_pci_driver_init"),
    ("virtio_blk", "virtio_blk_init"),
    ("virtio_net", "virtio_net_driver_init"),
    ("virtiofs", "virtio_fs_init"),
];

/// The rule.
pub static RULE: RuleDef = RuleDef {
    id: RuleId::KERNEL_VIRTIO,
    title: "virtio drivers present and reachable at boot",
    requirement: "The kernel must have the virtio-net, virtio-blk and virtiofs drivers (module or built in; reachable at boot, i.e. in the initramfs when root is on virtio-blk).",
    severity: Severity::Error,
    doc: r#"## What it checks
For the kernel that boots by default (the default boot entry's kernel, else
the newest installed): `virtio_net`, `virtio_blk`, `virtiofs` and the
`virtio_pci` transport are built in (`CONFIG_…=y` in the kernel config or
listed in `modules.builtin`) or present as modules (`.ko`, `.ko.xz`,
`.ko.zst`, `.ko.gz`). The disk drivers (`virtio_blk`, `virtio_pci`), when
modular, must also be inside the initramfs, because the root filesystem is
on a virtio-blk disk. Other installed kernels are checked too and reported
as warnings.

A driver that is present can still be switched off. For a modular driver:
- `blacklist NAME` in the image's modprobe.d (`/etc/modprobe.d`,
  `/run/modprobe.d`, `/usr/local/lib/modprobe.d`, `/usr/lib/modprobe.d`,
  `/lib/modprobe.d`; `*.conf`, a file name in an earlier directory hides the
  same name in a later one) fails: udev loads virtio drivers by their device
  alias, and a blacklisted module is never loaded by alias (nor by
  systemd-modules-load, which applies the blacklist);
- `install NAME /bin/false` (or `/bin/true`, `exit 1`, `:`, `echo`, any
  command that runs no `modprobe`/`insmod`) fails: every load runs the
  command instead; an `install` running some other program is a warning;
- the same in the initramfs's own modprobe.d (`etc/modprobe.d`,
  `usr/lib/modprobe.d`, … inside it) fails for the disk drivers, which must
  load there; for the others it is information (udev loads them again
  after the switch to the root filesystem, with the root's configuration);
- `module_blacklist=a,b` (the kernel refuses to load them) or
  `modprobe.blacklist=a,b` (kmod's blacklist) on the kernel command line
  that boots fails; in the GRUB defaults only, a warning (the next
  `update-grub` writes it).

`initcall_blacklist=` with the driver's init function
(`virtio_net_driver_init`, `virtio_blk_init`, `virtio_pci_driver_init`,
`virtio_fs_init`) stops a module and a built-in driver alike: it fails.

## Why
OpenStack on KVM gives the VM a virtio-blk disk and a virtio-net NIC; the
platform shares files with virtiofs. A kernel that cannot load `virtio_blk`
before mounting root stops in the initramfs shell; one without `virtio_net`
boots unreachable.

## Evidence
Offline: the config line or `modules.builtin`, the module's path, and the
module's path inside the initramfs; for a disabled driver the file and line
(`/etc/modprobe.d/blacklist.conf:3`, or the path inside the initramfs) or
the command line's file and line. Live (boot-test): `lsmod`, a virtiofs
mount.

## Remediation
Use the distribution's cloud/generic kernel, add the modules to the
initramfs (`echo virtio_blk >> /etc/initramfs-tools/modules && update-initramfs -u`;
dracut: `add_drivers+=" virtio_blk virtio_pci "` then `dracut -f`), delete
`blacklist`/`install` lines for virtio drivers and rebuild the initramfs,
and remove `module_blacklist=`/`modprobe.blacklist=` from the command line.

## Traps
A module on disk is not enough for the root disk: it must be in the
initramfs. `host-only` dracut images built on non-virtio hardware miss it.
A built-in driver (`=y`) cannot be switched off by modprobe.d, nor by
`module_blacklist=` or `modprobe.blacklist=` (they only stop loadable
modules; listed as information); only `initcall_blacklist=` stops it. A
blacklist in `/etc/modprobe.d` that the current initramfs does not have yet
still fails: the next initramfs rebuild (any kernel update) copies it.
Harmless look-alikes pass: a commented `# blacklist virtio_net`, a blacklist
of another module, an `install` that runs `modprobe --ignore-install`, a
file that is not `*.conf`, and a vendor file hidden by an empty file of the
same name in `/etc/modprobe.d`.
"#,
    remediation: "Use a cloud kernel or put virtio_blk/virtio_pci into the initramfs; make sure virtio_net and virtiofs exist and nothing blacklists them (modprobe.d, initramfs, kernel command line).",
    check,
};

/// The kernel the default boot entry starts.
fn default_kernel<'a>(cx: &Context, kernels: &'a [Kernel]) -> Option<&'a Kernel> {
    let boot = cx.boot();
    let entry_kernel = boot.effective().and_then(|c| c.kernel.clone());
    if let Some(path) = entry_kernel {
        let file = path.rsplit('/').next().unwrap_or(&path).to_owned();
        if let Some(k) = kernels.iter().find(|k| {
            k.image
                .as_deref()
                .is_some_and(|i| i.ends_with(&format!("/{file}")))
                || file.ends_with(&k.version)
        }) {
            return Some(k);
        }
    }
    newest(kernels)
}

fn check_kernel(cx: &Context, k: &Kernel, o: &mut Outcome, is_default: bool) {
    let label = format!("kernel {}", k.version);
    for (module, symbol, needed_early) in DRIVERS {
        let state = k.driver(module, symbol);
        if state != DriverState::Missing {
            let builtin = matches!(state, DriverState::BuiltIn(_));
            disabled(cx, k, module, *needed_early, builtin, is_default, o);
        }
        let mut problem = |kind: &str, msg: String, ev: Evidence| {
            if is_default {
                o.fail(kind, msg, ev);
            } else {
                o.warn(kind, format!("{msg} (not the default kernel)"), ev);
            }
        };
        match state {
            DriverState::BuiltIn(why) => {
                if is_default {
                    o.proof(Evidence::note(format!(
                        "{label}: {module} built in ({why})"
                    )));
                }
            }
            DriverState::Module(path) => {
                if *needed_early {
                    match (&k.initramfs, k.in_initramfs(module)) {
                        (None, _) => problem(
                            "no-initramfs",
                            format!(
                                "{label}: {module} is a module but the kernel has no initramfs to load it before root is mounted"
                            ),
                            Evidence::at(path.clone(), "module on the root filesystem only"),
                        ),
                        (Some(init), Some(false)) => problem(
                            "module-not-in-initramfs",
                            format!(
                                "{label}: {module} is not in the initramfs; root on virtio-blk cannot be mounted"
                            ),
                            Evidence::at(
                                init.path.clone(),
                                format!(
                                    "{module} missing from the initramfs ({path} exists on disk)"
                                ),
                            ),
                        ),
                        (Some(init), Some(true)) => {
                            if is_default {
                                let inside = init
                                    .modules
                                    .get(&crate::facts::initramfs::normalise_module(module))
                                    .cloned()
                                    .unwrap_or_default();
                                o.proof(Evidence::at(
                                    init.path.clone(),
                                    format!("{label}: {module} module in the initramfs ({inside})"),
                                ));
                            }
                        }
                        (Some(init), None) => o.warn(
                            "initramfs-unreadable",
                            format!("{label}: could not tell whether {module} is in the initramfs"),
                            Evidence::at(
                                init.path.clone(),
                                init.error.clone().unwrap_or_else(|| "unreadable".into()),
                            ),
                        ),
                    }
                } else if is_default {
                    o.proof(Evidence::at(
                        path,
                        format!("{label}: {module} module present"),
                    ));
                }
            }
            DriverState::Missing => problem(
                "driver-missing",
                format!("{label}: no {module} driver"),
                Evidence {
                    path: k.config_path.clone().or_else(|| k.modules_dir.clone()),
                    detail: format!(
                        "CONFIG_{symbol} is {}; no {module}.ko in {}",
                        k.config_value(symbol).unwrap_or("absent"),
                        k.modules_dir.as_deref().unwrap_or("the modules directory")
                    ),
                    ..Default::default()
                },
            ),
        }
    }
    for p in &k.problems {
        o.unverified(format!("{label}: {p}"));
    }
}

fn check(cx: &Context) -> Outcome {
    let mut o = Outcome::default();
    let kernels = cx.kernels();
    let Some(default) = default_kernel(cx, kernels) else {
        o.fail(
            "no-kernel",
            "no kernel is installed in the image",
            Evidence::note("no /boot/vmlinuz-* and no /lib/modules/*"),
        );
        return o;
    };
    check_kernel(cx, default, &mut o, true);
    for k in kernels
        .iter()
        .filter(|k| k.version != default.version && k.image.is_some())
    {
        check_kernel(cx, k, &mut o, false);
    }
    let mp = cx.modprobe();
    for p in &mp.problems {
        o.unverified(p.clone());
    }
    if !o
        .findings
        .iter()
        .any(|f| f.kind.starts_with("driver-disabled") || f.kind == "driver-install-command")
    {
        let init = default
            .initramfs
            .as_ref()
            .map(|i| format!(", {} in the initramfs", i.modprobe.files.len()))
            .unwrap_or_default();
        o.proof(Evidence::note(format!(
            "nothing disables the virtio drivers: {} modprobe.d files read{init}, kernel command line without module_blacklist=/modprobe.blacklist=/initcall_blacklist= for them",
            mp.files.len()
        )));
    }
    o
}

/// Values of a comma-list argument (`module_blacklist=a,b`) on a command
/// line: every occurrence (`all`), or the last one (the kernel keeps the
/// last value of a plain parameter).
fn list_arg(args: &str, key: &str, all: bool) -> Vec<String> {
    let prefix = format!("{key}=");
    let values: Vec<String> = split_args(args)
        .into_iter()
        .filter_map(|a| a.strip_prefix(&prefix).map(str::to_owned))
        .collect();
    let chosen: Vec<&String> = if all {
        values.iter().collect()
    } else {
        values.last().into_iter().collect()
    };
    chosen
        .into_iter()
        .flat_map(|v| v.split(',').map(normalise_module).collect::<Vec<_>>())
        .filter(|v| !v.is_empty())
        .collect()
}

/// What on a command line switches `module` off: `(argument, stops a
/// built-in driver too)`.
fn cmdline_blocks(c: &Cmdline, module: &str) -> Vec<(String, bool)> {
    let m = normalise_module(module);
    let mut out = Vec::new();
    if list_arg(&c.args, "module_blacklist", false).contains(&m) {
        out.push((format!("module_blacklist= names {module}"), false));
    }
    if list_arg(&c.args, "modprobe.blacklist", true).contains(&m) {
        out.push((format!("modprobe.blacklist= names {module}"), false));
    }
    if let Some((_, f)) = INITCALLS.iter().find(|(n, _)| *n == module)
        && list_arg(&c.args, "initcall_blacklist", true)
            .iter()
            .any(|v| v == f)
    {
        out.push((format!("initcall_blacklist= names {f}"), true));
    }
    out
}

/// modprobe.d lines that switch `module` off: `(directive, blocks?)`:
/// `true` for a blacklist or a no-op `install`, `false` for an `install`
/// whose effect is unknown.
fn config_blocks<'a>(
    mp: &'a Modprobe,
    module: &str,
) -> Vec<(&'a crate::facts::modprobe::Directive, bool)> {
    let mut out = Vec::new();
    if let Some(d) = mp.blacklisted(module) {
        out.push((d, true));
    }
    match mp.install_for(module) {
        Some((d, InstallEffect::Blocks)) => out.push((d, true)),
        Some((d, InstallEffect::Unknown)) => out.push((d, false)),
        _ => {}
    }
    out
}

/// Report what switches a present driver off.
fn disabled(
    cx: &Context,
    k: &Kernel,
    module: &str,
    needed_early: bool,
    builtin: bool,
    is_default: bool,
    o: &mut Outcome,
) {
    let label = format!("kernel {}", k.version);
    let not_default = if is_default {
        ""
    } else {
        " (not the default kernel)"
    };
    let problem = |o: &mut Outcome, kind: &str, msg: String, ev: Evidence| {
        if is_default {
            o.fail(kind, msg, ev);
        } else {
            o.warn(kind, format!("{msg}{not_default}"), ev);
        }
    };
    let ineffective = |o: &mut Outcome, what: &str, ev: Evidence| {
        if is_default {
            o.info(
                "blacklist-builtin",
                format!("{label}: {module} is built in; {what} does not stop it"),
                ev,
            );
        }
    };

    // The root filesystem's modprobe.d and the command line do not depend
    // on the kernel: judged once, with the default kernel's driver.
    let shared = if is_default {
        config_blocks(cx.modprobe(), module)
    } else {
        Vec::new()
    };
    for (d, blocks) in shared {
        let ev = Evidence::at_line(d.path.clone(), d.line, d.text.clone());
        if builtin {
            ineffective(o, "modprobe.d", ev);
        } else if blocks {
            problem(
                o,
                "driver-disabled",
                format!("{label}: {module} is present but modprobe.d switches it off"),
                ev,
            );
        } else {
            o.warn(
                "driver-install-command",
                format!("{label}: loading {module} runs a command instead; make sure it loads the module{not_default}"),
                ev,
            );
        }
    }

    // The initramfs's own copy.
    let root_blocks = config_blocks(cx.modprobe(), module)
        .iter()
        .any(|(_, blocks)| *blocks);
    if let (false, Some(init)) = (builtin, &k.initramfs) {
        for (d, blocks) in config_blocks(&init.modprobe, module) {
            let ev = Evidence::at(
                init.path.clone(),
                format!("{}:{} inside: {}", d.path, d.line, d.text),
            );
            if blocks && needed_early {
                problem(
                    o,
                    "driver-disabled-initramfs",
                    format!(
                        "{label}: the initramfs switches {module} off; the root disk cannot be found"
                    ),
                    ev,
                );
            } else if blocks {
                let then = if root_blocks {
                    "and so does the root filesystem's configuration"
                } else {
                    "it is loaded after the switch to the root filesystem"
                };
                o.info(
                    "driver-disabled-initramfs",
                    format!("{label}: the initramfs switches {module} off; {then}"),
                    ev,
                );
            } else {
                o.warn(
                    "driver-install-command",
                    format!("{label}: loading {module} in the initramfs runs a command instead; make sure it loads the module{not_default}"),
                    ev,
                );
            }
        }
    }

    // The kernel command line.
    if !is_default {
        return;
    }
    let boot = cx.boot();
    let effective = boot.effective();
    if let Some(c) = effective {
        for (what, stops_builtin) in cmdline_blocks(c, module) {
            let ev = Evidence::at_line(c.path.clone(), c.line, what.clone());
            if builtin && !stops_builtin {
                ineffective(o, "the command line's blacklist", ev);
            } else {
                problem(
                    o,
                    "driver-disabled-cmdline",
                    format!("{label}: the kernel command line switches {module} off"),
                    ev,
                );
            }
        }
    }
    if let Some(d) = boot.grub_defaults.and_then(|i| boot.cmdlines.get(i))
        && effective.is_none_or(|e| !std::ptr::eq(d, e))
    {
        for (what, stops_builtin) in cmdline_blocks(d, module) {
            if builtin && !stops_builtin {
                continue;
            }
            o.warn(
                "driver-disabled-cmdline-on-update",
                format!("{label}: the GRUB defaults switch {module} off; the next update-grub/grub2-mkconfig writes it into the boot entry"),
                Evidence::at_line(d.path.clone(), d.line, what),
            );
        }
    }
}
