//! The live checks, one file per SPEC rule, each a pure function from the
//! run's [`Observations`] to an [`Outcome`] (the same type the offline rules
//! return, so the report, its formats and its exit codes are `check`'s).
//! The rule's ID, title, requirement and remediation come from the offline
//! catalogue (`ibkit explain ID`); each file's doc says what is proved live.

use ibkit_rules::{Evidence, Outcome, RuleId};

use crate::observe::{BootObs, GuestObs, HealthObs, Observations};

mod app_autostart;
mod app_autostart_hard;
mod app_autostart_soft;
pub mod app_billing;
mod app_flavor;
mod app_kvm;
mod app_net;
mod app_nopass;
mod app_ports;
mod img_cloudinit;
mod kernel_virtio;
mod os_console_log;
mod os_no_fixed_mac;
mod os_sshd;

/// A live check of one rule.
pub struct LiveCheck {
    /// SPEC rule ID (its title, requirement and remediation come from the
    /// offline catalogue).
    pub id: RuleId,
    /// The judgement.
    pub check: fn(&Observations) -> Outcome,
}

/// Every live check, in report order.
pub const ALL: &[LiveCheck] = &[
    LiveCheck {
        id: RuleId::APP_KVM,
        check: app_kvm::check,
    },
    LiveCheck {
        id: RuleId::APP_NET,
        check: app_net::check,
    },
    LiveCheck {
        id: RuleId::APP_NOPASS,
        check: app_nopass::check,
    },
    LiveCheck {
        id: RuleId::APP_PORTS,
        check: app_ports::check,
    },
    LiveCheck {
        id: RuleId::APP_FLAVOR,
        check: app_flavor::check,
    },
    LiveCheck {
        id: RuleId::APP_AUTOSTART_SOFT,
        check: app_autostart_soft::check,
    },
    LiveCheck {
        id: RuleId::APP_AUTOSTART_HARD,
        check: app_autostart_hard::check,
    },
    LiveCheck {
        id: RuleId::IMG_CLOUDINIT,
        check: img_cloudinit::check,
    },
    LiveCheck {
        id: RuleId::OS_SSHD,
        check: os_sshd::check,
    },
    LiveCheck {
        id: RuleId::OS_CONSOLE_LOG,
        check: os_console_log::check,
    },
    LiveCheck {
        id: RuleId::OS_NO_FIXED_MAC,
        check: os_no_fixed_mac::check,
    },
    LiveCheck {
        id: RuleId::KERNEL_VIRTIO,
        check: kernel_virtio::check,
    },
    LiveCheck {
        id: RuleId::APP_BILLING,
        check: app_billing::check,
    },
];

/// Why nothing inside the first VM could be checked, if so.
pub(crate) fn unreachable(o: &Observations) -> Option<String> {
    match &o.first {
        None => Some("the first VM did not start".into()),
        Some(b) if b.guest.is_none() => Some(format!(
            "could not log in to the first VM: {}",
            b.ssh_error.as_deref().unwrap_or("no SSH")
        )),
        Some(_) => None,
    }
}

/// The first VM's guest observations, or the `unknown` outcome saying why
/// there are none.
pub(crate) fn first_guest(o: &Observations) -> Result<&GuestObs, Outcome> {
    if let Some(why) = unreachable(o) {
        return Err(Outcome::unknown(why));
    }
    o.first
        .as_ref()
        .and_then(|b| b.guest.as_ref())
        .ok_or_else(|| Outcome::unknown("no guest observations"))
}

/// Why the app's health cannot be judged, if so.
pub(crate) fn no_health(o: &Observations) -> Option<String> {
    if o.health_spec.is_none() {
        return Some(
            "the app manifest has no [health] check (give --manifest with [health]), so the app's own state cannot be proved".into(),
        );
    }
    None
}

/// Evidence line for a passing health check.
pub(crate) fn health_evidence(what: &str, h: &HealthObs) -> Evidence {
    Evidence::note(format!(
        "{what}: the app's health check passed after {:.0} s ({} probe round(s))",
        h.after_s, h.attempts
    ))
}

/// Message for a failing health check.
pub(crate) fn health_failure(what: &str, h: &HealthObs) -> String {
    format!(
        "{what}: the app's health check did not pass within {:.0} s ({} probe round(s); last error: {})",
        h.after_s,
        h.attempts,
        h.last_error.as_deref().unwrap_or("none recorded")
    )
}

/// `serial.log` evidence with the last console lines, for failures.
pub(crate) fn serial_excerpt(b: &BootObs, lines: usize) -> Evidence {
    let from = b.serial.tail.len().saturating_sub(lines);
    Evidence::at(
        b.serial_log.clone(),
        format!("last console lines: {}", b.serial.tail[from..].join(" | ")),
    )
}

#[cfg(test)]
mod tests;
