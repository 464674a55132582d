//! The text formats read from a guest or given by the vendor, all on the same
//! input: /etc/fstab, systemd unit files, the app manifest, waivers and
//! profiles (TOML), os-release, kernel .config, modules.dep and
//! modules.builtin, kernel command lines, shadow password fields, kernel
//! version ordering, and the bzImage version string (binary).
#![no_main]
use libfuzzer_sys::fuzz_target;

use ibkit_rules::facts::{boot, initramfs, kernel, os_release, systemd};

fuzz_target!(|data: &[u8]| {
    let _ = kernel::bzimage_version(data);
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();

    let _ = ibkit_image::inspect::parse_fstab(text);

    let unit = systemd::UnitFile::parse("/etc/systemd/system/fuzz.service", text);
    for (section, key) in [
        ("Unit", "Wants"),
        ("Install", "WantedBy"),
        ("Service", "ExecStart"),
        ("Socket", "ListenStream"),
    ] {
        let _ = unit.values(section, key);
        let _ = unit.value(section, key);
    }
    for line in text.lines().take(64) {
        let _ = systemd::template_of(line);
        let _ = boot::split_args(line);
        let _ = boot::consoles(line);
        let _ = boot::arg_value(line, "console");
        let _ = boot::arg_value(line, "root");
        let _ =
            ibkit_rules::facts::password::password_state(line.split(':').nth(1).unwrap_or(line));
        let _ = initramfs::module_name(line);
        let _ = initramfs::normalise_module(line);
    }
    let mut lines = text.lines();
    if let (Some(a), Some(b)) = (lines.next(), lines.next()) {
        let _ = kernel::compare_versions(a, b);
    }

    let _ = ibkit_rules::manifest::Manifest::parse(text);
    let _ = ibkit_rules::waiver::Waivers::parse(text);
    let _ = ibkit_rules::profile::Profile::parse(text);

    let _ = os_release::parse(text);
    let _ = kernel::parse_config(text);
    let _ = kernel::modules_from_dep("/lib/modules/6.1.0-fuzz", text);
    let _ = initramfs::parse_builtin(text).count();
});
