//! IMG-NO-HISTORY: no shell or tool history in any home directory.

use ibkit_image::fs::FileKind;

use super::util::fingerprint;
use crate::context::Context;
use crate::model::{Evidence, Outcome, Severity};
use crate::rule::RuleDef;

/// History files of shells, REPLs and tools that record what was typed.
pub const HISTORY_FILES: &[&str] = &[
    ".bash_history",
    ".zsh_history",
    ".sh_history",
    ".ash_history",
    ".ksh_history",
    ".histfile",
    ".python_history",
    ".mysql_history",
    ".mariadb_history",
    ".psql_history",
    ".sqlite_history",
    ".rediscli_history",
    ".node_repl_history",
    ".irb_history",
    ".lesshst",
    ".viminfo",
    ".local/share/fish/fish_history",
    ".config/fish/fish_history",
    ".local/share/nvim/shada/main.shada",
];

/// The rule.
pub static RULE: RuleDef = RuleDef {
    id: "IMG-NO-HISTORY",
    title: "No command history in the image",
    requirement: "The image must contain no shell command history of the work done on it.",
    severity: Severity::Error,
    doc: r#"## What it checks
Every home directory named in `/etc/passwd` (plus `/root`) for history files
of shells, database clients, REPLs and editors: `.bash_history`,
`.zsh_history`, `.python_history`, `.mysql_history`, `.psql_history`,
`.lesshst`, `.viminfo`, fish history and more.

## Why
History shows how the image was built: passwords typed on command lines,
internal host names, tokens passed to `curl`. Buyers get a copy of it.

## Evidence
Offline: each history file that is non-empty, with its size. An empty file or
a symlink to `/dev/null` passes.

## Remediation
Delete the files before sealing the image (`rm -f /root/.bash_history
/home/*/.bash_history ...`) and run the last commands with `HISTFILE=/dev/null`
or `unset HISTFILE` so the cleanup itself is not recorded.

## Traps
Service accounts (`postgres` in `/var/lib/postgresql`, `mysql`, `www-data`)
have homes outside `/home`: only `/etc/passwd` knows them. A size threshold
lets a one-line history with a password through, so any non-empty file fails.
"#,
    remediation: "Remove the history files listed and seal the image with history disabled (`unset HISTFILE`).",
    check,
};

fn check(cx: &Context) -> Outcome {
    let mut o = Outcome::default();
    let acc = cx.accounts();
    if !acc.has_passwd {
        o.unverified("/etc/passwd is missing: only /root was searched");
    }
    let homes = acc.homes();
    let mut searched = 0;
    for (home, user) in &homes {
        if !matches!(cx.guest.stat(home), Ok(Some(m)) if m.kind == FileKind::Dir) {
            continue;
        }
        searched += 1;
        for name in HISTORY_FILES {
            let path = format!("{home}/{name}");
            let Ok(r) = cx.guest.resolve(&path, true) else {
                continue;
            };
            let Some(meta) = r.meta else { continue };
            if r.path == b"/dev/null" || meta.kind != FileKind::File || meta.size == 0 {
                continue;
            }
            let who = user
                .map(|u| format!(" of user {}", u.name))
                .unwrap_or_default();
            let detail = match cx.guest.read_head(&path, 1 << 20) {
                Ok(Some(head)) => format!(
                    "{} lines, {}",
                    head.iter().filter(|&&b| b == b'\n').count().max(1),
                    fingerprint(&head)
                ),
                _ => format!("{} bytes", meta.size),
            };
            o.fail(
                "history-file",
                format!("history file{who}: {path}"),
                Evidence::at(path.clone(), detail),
            );
        }
    }
    if o.findings.is_empty() {
        o.proof(Evidence::note(format!(
            "no non-empty history file in {searched} home directories ({})",
            homes
                .iter()
                .map(|(h, _)| h.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    o
}
