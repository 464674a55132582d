//! IMG-NO-DEBUGGERS: no debuggers or tracers installed.

use super::util::BIN_DIRS;
use crate::context::Context;
use crate::model::{Evidence, Outcome, Severity};
use crate::rule::RuleDef;
use crate::rule_id::RuleId;

/// Packages that install a debugger or tracer (Debian and RPM names).
pub const DEBUGGER_PACKAGES: &[&str] = &[
    "gdb",
    "gdb-minimal",
    "gdb-multiarch",
    "gdbserver",
    "gdb-gdbserver",
    "strace",
    "ltrace",
    "valgrind",
    "lldb",
    "systemtap",
    "systemtap-client",
    "bpftrace",
    "bpfcc-tools",
    "bcc-tools",
    "sysdig",
    "rr",
    "uftrace",
    "radare2",
    "edb-debugger",
    "ddd",
    "cgdb",
    "pwndbg",
    "linux-perf",
    "perf",
    "crash",
];

/// Executables of debuggers and tracers (versioned names match by prefix).
pub const DEBUGGER_BINARIES: &[&str] = &[
    "gdb",
    "gdbserver",
    "gdb-multiarch",
    "strace",
    "ltrace",
    "valgrind",
    "lldb",
    "lldb-server",
    "stap",
    "staprun",
    "bpftrace",
    "sysdig",
    "rr",
    "uftrace",
    "r2",
    "radare2",
    "edb",
    "ddd",
    "cgdb",
    "perf",
    "crash",
];

/// The rule.
pub static RULE: RuleDef = RuleDef {
    id: RuleId::IMG_NO_DEBUGGERS,
    title: "No debuggers in the image",
    requirement: "The image must contain no debuggers (gdb, strace, ltrace, valgrind, lldb, ...).",
    severity: Severity::Error,
    doc: r#"## What it checks
The package database for debugger and tracer packages (gdb, gdbserver,
strace, ltrace, valgrind, lldb, systemtap, bpftrace, bcc, sysdig, rr, uftrace,
radare2, perf, ...) and the standard executable directories for their
binaries, including versioned names such as `lldb-15`.

## Why
A debugger on a production image lets anyone with a shell read the memory of
running services (keys, session tokens) and makes post-exploitation easy.
The marketplace forbids them.

## Evidence
Offline: package name and version, or the binary's path when no package owns
it (a tool copied in by hand).

## Remediation
Remove the packages (`apt-get purge gdb strace ...`, `dnf remove ...`) and any
hand-copied binaries before sealing the image.

## Traps
No comparable tool checks this. Binaries installed outside the package
manager (`/usr/local/bin`) are found by path.
"#,
    remediation: "Purge the debugger packages and delete hand-installed debugger binaries.",
    check,
};

fn binary_matches(name: &str) -> bool {
    DEBUGGER_BINARIES.iter().any(|b| {
        name == *b
            || name
                .strip_prefix(b)
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|v| !v.is_empty() && v.chars().all(|c| c.is_ascii_digit() || c == '.'))
    })
}

fn check(cx: &Context) -> Outcome {
    let mut o = Outcome::default();
    let pk = cx.packages();
    for (name, p) in &pk.list {
        let versioned_lldb =
            name.starts_with("lldb-") && name[5..].chars().all(|c| c.is_ascii_digit() || c == '.');
        if DEBUGGER_PACKAGES.contains(&name.as_str()) || versioned_lldb {
            o.fail(
                "debugger-package",
                format!("debugger package installed: {name}"),
                Evidence::package(format!("{name} {}", p.version), "installed"),
            );
        }
    }
    let mut seen_dirs = Vec::new();
    for dir in BIN_DIRS {
        let Ok(r) = cx.guest.resolve(dir, true) else {
            continue;
        };
        if r.meta.is_none() || seen_dirs.contains(&r.path) {
            continue;
        }
        seen_dirs.push(r.path.clone());
        for e in cx.list_dir(dir) {
            let name = String::from_utf8_lossy(&e.name).into_owned();
            if !binary_matches(&name) {
                continue;
            }
            let path = format!("{dir}/{name}");
            if !cx.guest.is_file(&path) {
                continue;
            }
            // perf on Debian is a wrapper script from linux-base that only
            // execs a versioned perf_x.y from linux-perf: not a debugger.
            if name == "perf"
                && pk.get("linux-perf").is_none()
                && pk.get("perf").is_none()
                && pk.known()
            {
                continue;
            }
            // Already reported through the package that installed it.
            let owner = if name.starts_with("perf") {
                "linux-perf"
            } else {
                name.as_str()
            };
            if o.findings.iter().any(|f| {
                f.kind == "debugger-package"
                    && f.evidence.package.as_deref().is_some_and(|p| {
                        p.split(' ').next() == Some(owner) || p.starts_with(&format!("{name} "))
                    })
            }) {
                continue;
            }
            o.fail(
                "debugger-binary",
                format!("debugger executable: {path}"),
                Evidence::at(path, "executable in a standard path"),
            );
        }
    }
    if !pk.known() {
        o.unverified(match &pk.error {
            Some(e) => format!("package database unreadable ({e}); only executables were searched"),
            None => "no package database found; only executables were searched".into(),
        });
    }
    if o.findings.is_empty() {
        o.proof(Evidence::note(format!(
            "no debugger among {} installed packages or in {}",
            pk.list.len(),
            BIN_DIRS.join(", ")
        )));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::binary_matches;

    #[test]
    fn versioned_names() {
        assert!(binary_matches("gdb"));
        assert!(binary_matches("lldb-15"));
        assert!(binary_matches("lldb-server-14.0"));
        assert!(!binary_matches("gdbus"));
        assert!(!binary_matches("strace-log-merge"));
        assert!(!binary_matches("rrsync"));
    }
}
