//! APP-AUTOSTART-HARD live: the first VM gets a forced reset (QMP
//! `system_reset`, what the platform's orchestrator does after an
//! infrastructure fault: no clean shutdown, dirty filesystems) while the
//! flavor VM reboots cleanly. It must come back with a new boot_id and the
//! app's health check must pass again by itself.

use ibkit_rules::Outcome;

use crate::observe::Observations;

pub fn check(o: &Observations) -> Outcome {
    super::app_autostart::judge(
        o,
        o.first.as_ref(),
        o.hard_reset.as_ref(),
        "after a forced reset (QMP system_reset)",
    )
}
