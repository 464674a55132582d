//! Running external tools with errors that say what failed and why.

use std::ffi::OsStr;
use std::io::Write;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The command line as a shell-like string, for error messages.
pub(crate) fn display(cmd: &Command) -> String {
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            s.push_str(&format!("{}={} ", k.to_string_lossy(), v.to_string_lossy()));
        }
    }
    if let Some(d) = cmd.get_current_dir() {
        s = format!("(cd {} && {s}", d.display());
    }
    s.push_str(&quote(cmd.get_program()));
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&quote(a));
    }
    if cmd.get_current_dir().is_some() {
        s.push(')');
    }
    s
}

fn quote(a: &OsStr) -> String {
    let a = a.to_string_lossy();
    if !a.is_empty()
        && a.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=./:,@%+^".contains(c))
    {
        a.into_owned()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

fn hint(program: &str) -> &'static str {
    match program {
        "mkfs.ext4" | "mke2fs" => "e2fsprogs",
        "mkfs.xfs" | "xfs_db" => "xfsprogs",
        "mkfs.vfat" | "mcopy" => "dosfstools and mtools",
        "mkswap" | "sfdisk" => "util-linux / fdisk",
        "qemu-img" => "qemu-utils",
        _ => "the package providing it",
    }
}

/// Runs `cmd` (optionally feeding `stdin`), returning its stdout; fails with
/// the command line, exit status and stderr when it does not succeed.
pub(crate) fn run(cmd: &mut Command, stdin: Option<&[u8]>) -> Result<Vec<u8>> {
    let line = display(cmd);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| {
        let prog = cmd.get_program().to_string_lossy().into_owned();
        format!(
            "cannot run `{line}`: is `{prog}` installed? (it comes with {}; run scripts/setup.sh)",
            hint(&prog)
        )
    })?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().context("no stdin pipe")?;
        pipe.write_all(input)
            .with_context(|| format!("writing the input of `{line}`"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{line}`"))?;
    if !out.status.success() {
        let input = stdin
            .map(|i| format!("\n--- its input ---\n{}", String::from_utf8_lossy(i)))
            .unwrap_or_default();
        bail!(
            "`{line}` failed ({}):\n{}{}{input}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end(),
            if out.stdout.is_empty() {
                String::new()
            } else {
                format!(
                    "\n--- stdout ---\n{}",
                    String::from_utf8_lossy(&out.stdout).trim_end()
                )
            }
        );
    }
    Ok(out.stdout)
}
