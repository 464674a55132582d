//! KERNEL-VIRTIO: virtio-net, virtio-blk and virtiofs drivers, reachable at boot.

use crate::context::Context;
use crate::facts::kernel::{DriverState, Kernel, newest};
use crate::model::{Evidence, Outcome, Severity};
use crate::rule::RuleDef;

/// `(module, config symbol, needed in the initramfs to mount root)`.
pub const DRIVERS: &[(&str, &str, bool)] = &[
    ("virtio_pci", "VIRTIO_PCI", true),
    ("virtio_blk", "VIRTIO_BLK", true),
    ("virtio_net", "VIRTIO_NET", false),
    ("virtiofs", "VIRTIO_FS", false),
];

/// The rule.
pub static RULE: RuleDef = RuleDef {
    id: "KERNEL-VIRTIO",
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

## Why
OpenStack on KVM gives the VM a virtio-blk disk and a virtio-net NIC; the
platform shares files with virtiofs. A kernel that cannot load `virtio_blk`
before mounting root stops in the initramfs shell; one without `virtio_net`
boots unreachable.

## Evidence
Offline: the config line or `modules.builtin`, the module's path, and the
module's path inside the initramfs. Live (boot-test): `lsmod`, a virtiofs
mount.

## Remediation
Use the distribution's cloud/generic kernel, add the modules to the
initramfs (`echo virtio_blk >> /etc/initramfs-tools/modules && update-initramfs -u`;
dracut: `add_drivers+=" virtio_blk virtio_pci "` then `dracut -f`).

## Traps
A module on disk is not enough for the root disk: it must be in the
initramfs. `host-only` dracut images built on non-virtio hardware miss it.
"#,
    remediation: "Use a cloud kernel or put virtio_blk/virtio_pci into the initramfs; make sure virtio_net and virtiofs exist.",
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

fn check_kernel(k: &Kernel, o: &mut Outcome, is_default: bool) {
    let label = format!("kernel {}", k.version);
    for (module, symbol, needed_early) in DRIVERS {
        let mut problem = |kind: &str, msg: String, ev: Evidence| {
            if is_default {
                o.fail(kind, msg, ev);
            } else {
                o.warn(kind, format!("{msg} (not the default kernel)"), ev);
            }
        };
        match k.driver(module, symbol) {
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
    check_kernel(default, &mut o, true);
    for k in kernels
        .iter()
        .filter(|k| k.version != default.version && k.image.is_some())
    {
        check_kernel(k, &mut o, false);
    }
    o
}
