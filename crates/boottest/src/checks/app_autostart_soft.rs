//! APP-AUTOSTART-SOFT live: after `systemctl reboot` over SSH (a clean
//! reboot, as a buyer does after updates) the flavor VM comes back with a new
//! boot_id and the app's health check passes again, without anyone
//! starting it. Checking only that SSH is back proves nothing about the app.

use ibkit_rules::Outcome;

use crate::observe::Observations;

pub fn check(o: &Observations) -> Outcome {
    super::app_autostart::judge(
        o,
        o.flavor.as_ref(),
        o.soft_reboot.as_ref(),
        "after `systemctl reboot`",
    )
}
