//! Every rule of the catalogue on a fuzzed image, as `ibkit check` runs
//! them: the facts readers behind them (passwd/shadow, dpkg status and the
//! rpm databases, systemd units, GRUB and kernel command lines, kernels,
//! modules and the initramfs, cloud-init YAML, sshd and firewall configs,
//! secrets by content) all parse file contents taken from the image.
#![no_main]
use libfuzzer_sys::fuzz_target;

use ibkit_image::inspect::{InspectOptions, inspect};
use ibkit_rules::{CheckOptions, check};

fuzz_target!(|data: &[u8]| {
    let path = ibkit_fuzz::scratch_file("input.img", data);
    let Ok(insp) = inspect(path, &InspectOptions::default()) else {
        return;
    };
    let report = check(
        &insp,
        &CheckOptions {
            manifest: None,
            waivers: None,
            profile: None,
            only: Vec::new(),
        },
    );
    let _ = report;
});
