//! OS-CONSOLE-LOG live: the kernel's messages appear on the serial console
//! (ttyS0) during the first boot, and the *last* `console=` of the running
//! kernel's command line is ttyS0 (that one becomes `/dev/console`, where
//! systemd and cloud-init write).

use ibkit_rules::{Evidence, Outcome};

use super::serial_excerpt;
use crate::guest::{consoles, last_console};
use crate::observe::Observations;

pub fn check(o: &Observations) -> Outcome {
    let Some(b) = &o.first else {
        return Outcome::unknown("the first VM did not start");
    };
    let mut out = Outcome::default();
    if b.serial.kernel_lines > 0 {
        out.proof(Evidence::at(
            b.serial_log.clone(),
            format!(
                "{} kernel message lines on the serial console{}",
                b.serial.kernel_lines,
                b.serial
                    .linux_version
                    .as_deref()
                    .map(|v| format!(", starting with \"{v}\""))
                    .unwrap_or_default()
            ),
        ));
    } else {
        out.fail(
            "no-kernel-messages",
            format!(
                "the kernel wrote no messages to the serial console (ttyS0) during boot ({} bytes captured)",
                b.serial.bytes
            ),
            serial_excerpt(b, 5),
        );
    }
    match b.guest.as_ref().and_then(|g| g.cmdline.as_deref()) {
        Some(cmdline) => match last_console(cmdline) {
            Some(c) if c == "ttyS0" => out.proof(Evidence::at(
                "/proc/cmdline",
                format!("last console= is ttyS0 ({})", consoles(cmdline).join(", ")),
            )),
            Some(c) => out.fail(
                "console-not-serial",
                format!("/dev/console is {c}, not ttyS0: the last console= on the kernel command line wins"),
                Evidence::at("/proc/cmdline", cmdline.trim().to_string()),
            ),
            None => out.fail(
                "no-console-arg",
                "the kernel command line has no console= argument, so boot messages go to tty0 only",
                Evidence::at("/proc/cmdline", cmdline.trim().to_string()),
            ),
        },
        None => out.unverified("/proc/cmdline could not be read (no SSH login)"),
    }
    out
}
