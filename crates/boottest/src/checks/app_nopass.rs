//! APP-NOPASS live: after first boot (when first-boot scripts had their
//! chance to replace passwords), `/etc/shadow` is judged with `ibkit
//! check`'s own function: no empty password, no well-known one, and no usable
//! hash that the image shipped and first boot left in place (a preset
//! password is a default password, whatever it is, and whether or not sshd
//! lets it log in). sshd must also refuse well-known password logins.

use ibkit_rules::{Evidence, Outcome};

use super::first_guest;
use crate::observe::Observations;

pub fn check(o: &Observations) -> Outcome {
    let g = match first_guest(o) {
        Ok(g) => g,
        Err(unknown) => return unknown,
    };
    let mut out = Outcome::default();
    match (&g.shadow, &g.shadow_error) {
        (Some(s), _) => {
            for i in &s.issues {
                let ev = Evidence::at("/etc/shadow", format!("{}: {}", i.user, i.detail));
                match i.kind.as_str() {
                    "empty" => out.fail(
                        "empty-password",
                        format!("account {} has an empty password after first boot: anyone can log in as it", i.user),
                        ev,
                    ),
                    "well-known" => out.fail(
                        "well-known-password",
                        format!(
                            "account {} has a well-known password ({}) after first boot",
                            i.user,
                            i.redacted.as_deref().unwrap_or("redacted")
                        ),
                        ev,
                    ),
                    _ => out.fail(
                        "default-password",
                        format!(
                            "account {} still has the password the image was built with after first boot: every instance shares it",
                            i.user
                        ),
                        ev,
                    ),
                }
            }
            if s.issues.is_empty() {
                out.proof(Evidence::at(
                    "/etc/shadow",
                    if s.with_password.is_empty() {
                        "after first boot no account has a usable password (all locked)".to_string()
                    } else {
                        format!(
                            "after first boot {} has a password set at first boot (not the image's)",
                            s.replaced.join(", ")
                        )
                    },
                ));
            }
        }
        (None, Some(e)) => out.unverified(format!("/etc/shadow could not be read: {e}")),
        (None, None) => out.unverified("/etc/shadow was not read"),
    }
    let accepted: Vec<_> = g
        .password_attempts
        .iter()
        .filter(|a| a.outcome == "accepted")
        .collect();
    for a in &accepted {
        out.fail(
            "ssh-password-login",
            format!(
                "sshd accepted a password login for {} with a well-known password ({})",
                a.user, a.password
            ),
            Evidence::note("password authentication over SSH"),
        );
    }
    if accepted.is_empty() && !g.password_attempts.is_empty() {
        let tried: Vec<String> = g
            .password_attempts
            .iter()
            .map(|a| format!("{}:{} {}", a.user, a.password, a.outcome))
            .collect();
        out.proof(Evidence::note(format!(
            "sshd refused every password login tried ({})",
            tried.join(", ")
        )));
    }
    if let Some(m) = &g.auth_methods
        && m.iter()
            .any(|m| m == "password" || m == "keyboard-interactive")
    {
        out.info(
            "password-auth-offered",
            format!("sshd offers password authentication ({}); harmless only while no account has a password", m.join(", ")),
            Evidence::note("SSH auth methods offered to root"),
        );
    }
    out
}
