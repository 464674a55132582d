//! IMG-NO-HISTORY: no shell or tool history in any home directory.

use ibkit_image::fs::FileKind;

use super::util::fingerprint;
use crate::context::Context;
use crate::model::{Evidence, Outcome, Severity};
use crate::rule::RuleDef;
use crate::rule_id::RuleId;

pub use crate::facts::homes::HISTORY_FILES;

/// The rule.
pub static RULE: RuleDef = RuleDef {
    id: RuleId::IMG_NO_HISTORY,
    title: "No command history in the image",
    requirement: "The image must contain no shell command history of the work done on it.",
    severity: Severity::Error,
    doc: r#"## What it checks
Every home directory, whether or not an account owns it: each home named in
`/etc/passwd`, `/root`, every directory directly under `/home` (and under the
home roots set by `HOME=` in `/etc/default/useradd` and `DHOME=` in
`/etc/adduser.conf`), and service homes: directories directly under
`/var/lib`, `/srv` and `/opt` that hold a home's dot-files (`.ssh`,
`.bash_history`, `.profile`, `.config`, ...). In each, the history files of
shells, database clients, REPLs and editors: `.bash_history`, `.zsh_history`,
`.python_history`, `.mysql_history`, `.psql_history`, `.lesshst`,
`.viminfo`, fish history and more.

## Why
History shows how the image was built: passwords typed on command lines,
internal host names, tokens passed to `curl`. Buyers get a copy of it.

## Evidence
Offline: each history file with content, its size and a fingerprint, and
whose home it is: `of user alice`, or `of uid 1001 (no account in
/etc/passwd)` for a home left behind by `userdel` without `-r` or prepared
before its user exists.

## Remediation
Delete the files before sealing the image (`rm -f /root/.bash_history
/home/*/.bash_history ...`) and run the last commands with `HISTFILE=/dev/null`
or `unset HISTFILE` so the cleanup itself is not recorded. Delete the homes
of removed users (`userdel -r`).

## Traps
Service accounts (`postgres` in `/var/lib/postgresql`, `mysql`, `www-data`)
have homes outside `/home`; homes of removed users are in no passwd entry at
all. A size threshold lets a one-line history with a password through, so
any content fails. Harmless look-alikes pass: an empty file, a link to
`/dev/null`, a file of blank lines, the headers tools write before any entry
(`.lesshst` with only `.less-history-file:`/`.search`, a libedit
`_HiStOrY_V2_` line, `.viminfo` with only comments and settings). A symlinked
home is followed inside the image and searched once.
"#,
    remediation: "Remove the history files listed and seal the image with history disabled (`unset HISTFILE`).",
    check,
};

/// True if the start of a history file records something typed; the headers
/// tools write into an empty history do not count.
pub fn has_entries(name: &str, head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head);
    let base = name.rsplit('/').next().unwrap_or(name);
    text.lines().map(str::trim).any(|l| {
        if l.is_empty() || l == "_HiStOrY_V2_" {
            return false;
        }
        match base {
            // less: a version header and section names; entries start with `"`.
            ".lesshst" => !matches!(l, ".less-history-file:" | ".search" | ".shell" | ".mark"),
            // vim: comments, `*encoding=`-style settings and the `|1,` version
            // bar line; history, marks and registers are anything else.
            ".viminfo" => !(l.starts_with('#') || l.starts_with('*') || l.starts_with("|1,")),
            _ => true,
        }
    })
}

fn check(cx: &Context) -> Outcome {
    let mut o = Outcome::default();
    let acc = cx.accounts();
    if !acc.has_passwd {
        o.unverified("/etc/passwd is missing: homes were found by location only (/root, /home/*, service homes), none by account");
    }
    let homes = cx.homes();
    for p in &homes.problems {
        o.unverified(p.clone());
    }
    for home in &homes.list {
        for name in HISTORY_FILES {
            let path = home.join(name);
            let Ok(r) = cx.guest.resolve(&path, true) else {
                continue;
            };
            let Some(meta) = r.meta else { continue };
            if r.path == b"/dev/null" || meta.kind != FileKind::File || meta.size == 0 {
                continue;
            }
            let head = cx.guest.read_head(&path, 1 << 20).ok().flatten();
            if let Some(h) = &head
                && !has_entries(name, h)
            {
                continue;
            }
            let detail = match head {
                Some(head) => format!(
                    "{} lines, {}; {}",
                    head.iter().filter(|&&b| b == b'\n').count().max(1),
                    fingerprint(&head),
                    home.how()
                ),
                None => format!("{} bytes; {}", meta.size, home.how()),
            };
            o.fail(
                "history-file",
                format!("history file {}: {path}", home.whose()),
                Evidence::at(path.clone(), detail),
            );
        }
    }
    if o.findings.is_empty() {
        o.proof(Evidence::note(format!(
            "no history file with content in {}",
            homes.summary()
        )));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::has_entries;

    #[test]
    fn empty_headers_are_not_history() {
        assert!(!has_entries(
            ".lesshst",
            b".less-history-file:\n.search\n.shell\n"
        ));
        assert!(has_entries(
            ".lesshst",
            b".less-history-file:\n.search\n\"password\n"
        ));
        assert!(!has_entries(".mysql_history", b"_HiStOrY_V2_\n"));
        assert!(has_entries(
            ".mysql_history",
            b"_HiStOrY_V2_\nselect\\040*\n"
        ));
        assert!(!has_entries(".bash_history", b"\n  \n"));
        assert!(has_entries(".bash_history", b"ls\n"));
        assert!(!has_entries(
            ".viminfo",
            b"# This viminfo file was generated by Vim 9.0.\n*encoding=utf-8\n|1,4\n"
        ));
        assert!(has_entries(
            ".viminfo",
            b"# Command Line History (newest to oldest):\n:wq\n"
        ));
    }
}
