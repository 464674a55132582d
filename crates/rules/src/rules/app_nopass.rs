//! APP-NOPASS: no default passwords.

use crate::context::Context;
use crate::facts::password::{PasswordState, judge, password_state};
use crate::model::{Evidence, Outcome, Severity};
use crate::rule::RuleDef;
use crate::rule_id::RuleId;

/// The rule.
pub static RULE: RuleDef = RuleDef {
    id: RuleId::APP_NOPASS,
    title: "No default passwords",
    requirement: "The application must have no default passwords.",
    severity: Severity::Error,
    doc: r#"## What it checks
Every account in `/etc/shadow` (and password fields left in `/etc/passwd`):
an empty password field fails; any usable hash fails, whatever its scheme
(DES, BSDi DES, MD5, SHA-256/512 crypt, yescrypt, gost-yescrypt, bcrypt,
scrypt): a password baked into an image is a default password, the vendor
and anyone who cracks the image know it. Locked fields (`!`, `*`, `!$6$…`,
anything crypt() cannot produce) pass. Usable hashes are also tried against a
short list of well-known passwords and the account name (every scheme the
verifier supports), so the report can say *which* default it is.
`PermitEmptyPasswords yes` in `sshd_config` fails too. `ibkit boot-test`
judges the live `/etc/shadow` after first boot with the same function.

## Why
Instances are reachable from the internet. A password that is the same on
every instance from the image is found by scanners within hours.

## Evidence
Offline: `/etc/shadow` line per account and the hash's scheme (never the
hash itself). Live (boot-test): the shadow file after first boot compared
with the image's: a usable hash that came with the image and was not
replaced fails, whether or not a guess logs in; SSH password logins with
well-known passwords are tried too.

## Remediation
Lock the accounts (`passwd -l root`, `usermod -p '!' user`), let cloud-init
create the buyer's user with their SSH key, and have the app generate its
own admin password at first boot (shown to the buyer as an output).

## Traps
Passwords replaced at first boot: if cloud-init's `chpasswd` sets the
account's password to `RANDOM` on every new instance, the baked hash is a
warning, not a failure.
"#,
    remediation: "Lock every account's password (`passwd -l`) and generate app passwords per instance at first boot.",
    check,
};

/// Accounts whose password cloud-init replaces with a random one per instance.
fn replaced_at_first_boot(cx: &Context) -> Vec<String> {
    let cc = cx.cloud();
    let Some(chpasswd) = cc.get("chpasswd") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    // Old form: list: "user:RANDOM" lines or a list; new form: users: [{name, type: RANDOM}].
    if let Some(list) = chpasswd.get("list") {
        let lines: Vec<String> = match list {
            serde_json::Value::String(s) => s.lines().map(str::to_owned).collect(),
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        for l in lines {
            if let Some((u, p)) = l.trim().split_once(':')
                && (p.eq_ignore_ascii_case("RANDOM") || p.eq_ignore_ascii_case("R"))
            {
                out.push(u.to_owned());
            }
        }
    }
    if let Some(serde_json::Value::Array(users)) = chpasswd.get("users") {
        for u in users {
            let random = u
                .get("type")
                .and_then(|t| t.as_str())
                .is_some_and(|t| t.eq_ignore_ascii_case("RANDOM"));
            if let (true, Some(name)) = (random, u.get("name").and_then(|n| n.as_str())) {
                out.push(name.to_owned());
            }
        }
    }
    out
}

fn check(cx: &Context) -> Outcome {
    let mut o = Outcome::default();
    let acc = cx.accounts();
    if !acc.has_passwd && !acc.has_shadow {
        return Outcome::unknown("neither /etc/passwd nor /etc/shadow exists");
    }
    let replaced = replaced_at_first_boot(cx);
    let mut checked = 0;
    for s in &acc.shadow {
        checked += 1;
        let ev = |detail: String| Evidence::at_line("/etc/shadow", s.line, detail);
        let j = judge(&s.hash, &s.name);
        let detail = format!("{}: {}", s.name, j.describe());
        match j.state {
            PasswordState::Locked => {}
            PasswordState::Empty => o.fail(
                "empty-password",
                format!("account {} has an empty password", s.name),
                ev(format!("{detail}: login without a password")),
            ),
            PasswordState::Usable(_) => {
                if replaced.contains(&s.name) {
                    o.warn("password-replaced", format!("account {} has a password in the image (cloud-init replaces it at first boot)", s.name), ev(detail));
                } else if j.well_known.is_some() {
                    o.fail(
                        "well-known-password",
                        format!("account {} has a well-known password", s.name),
                        ev(detail),
                    );
                } else {
                    o.fail(
                        "default-password",
                        format!("account {} has a password set in the image", s.name),
                        ev(detail),
                    );
                }
            }
        }
    }
    for u in &acc.users {
        let st = password_state(&u.passwd_field);
        if st != PasswordState::Locked {
            o.fail(
                "passwd-field-password",
                format!("account {} has a password in /etc/passwd", u.name),
                Evidence::at_line(
                    "/etc/passwd",
                    u.line,
                    format!(
                        "{}: {} password field in /etc/passwd",
                        u.name,
                        if st == PasswordState::Empty {
                            "empty"
                        } else {
                            "hashed"
                        }
                    ),
                ),
            );
        }
    }
    if !acc.has_shadow {
        o.unverified("/etc/shadow is missing");
    }
    if let Some(text) = cx.read_text("/etc/ssh/sshd_config") {
        for (i, l) in text.lines().enumerate() {
            let mut w = l.split_whitespace();
            if w.next()
                .is_some_and(|k| k.eq_ignore_ascii_case("PermitEmptyPasswords"))
                && w.next().is_some_and(|v| v.eq_ignore_ascii_case("yes"))
            {
                o.fail(
                    "sshd-empty-passwords",
                    "sshd permits empty passwords",
                    Evidence::at_line("/etc/ssh/sshd_config", i + 1, "PermitEmptyPasswords yes"),
                );
            }
        }
    }
    if o.findings.is_empty() && acc.has_shadow {
        o.proof(Evidence::at(
            "/etc/shadow",
            format!("all {checked} accounts are locked or have no password"),
        ));
    }
    o
}
