//! Running a host tool (`qemu-img`, `ip`, …) to completion: the one runner
//! of ibkit's VM code, whose errors name the program, its arguments, the
//! exit status and the end of its stderr.

use std::path::Path;
use std::process::{ExitStatus, Output, Stdio};

use ibkit_support::text::{tail_bytes, tail_lines};

/// How much of a failed tool's stderr an error quotes: its end, where tools
/// say why they failed.
const STDERR_LINES: usize = 20;
const STDERR_BYTES: usize = 4096;

/// A host tool that could not be run or failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The program could not be started (missing, not executable, …).
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        args: Vec<String>,
        #[source]
        source: std::io::Error,
    },
    /// The program ran and exited unsuccessfully (or was killed).
    #[error("`{}` failed ({status}): {stderr}", command_line(program, args))]
    Failed {
        program: String,
        args: Vec<String>,
        status: ExitStatus,
        /// The last lines of its stderr.
        stderr: String,
    },
}

impl CommandError {
    pub fn program(&self) -> &str {
        match self {
            CommandError::Spawn { program, .. } | CommandError::Failed { program, .. } => program,
        }
    }

    pub fn args(&self) -> &[String] {
        match self {
            CommandError::Spawn { args, .. } | CommandError::Failed { args, .. } => args,
        }
    }

    /// The command as run, "program arg1 arg2" (for messages, not a shell).
    pub fn command(&self) -> String {
        command_line(self.program(), self.args())
    }
}

fn command_line(program: &str, args: &[String]) -> String {
    format!("{program} {}", args.join(" "))
}

/// Runs `program args` with no stdin and waits for it (killed if the future
/// is dropped); its output when it exits successfully.
pub async fn run<S: AsRef<str>>(
    program: impl AsRef<Path>,
    args: &[S],
) -> Result<Output, CommandError> {
    let program = program.as_ref();
    let args: Vec<String> = args.iter().map(|a| a.as_ref().to_string()).collect();
    let out = tokio::process::Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    let program = program.display().to_string();
    let out = match out {
        Ok(out) => out,
        Err(source) => {
            return Err(CommandError::Spawn {
                program,
                args,
                source,
            });
        }
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail = tail_lines(stderr.trim(), STDERR_LINES);
        return Err(CommandError::Failed {
            program,
            args,
            status: out.status,
            stderr: tail_bytes(&tail, STDERR_BYTES).to_string(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn success_returns_the_output() {
        let out = run("sh", &["-c", "echo out; echo err >&2"])
            .await
            .expect("sh runs");
        assert_eq!(out.stdout, b"out\n");
    }

    #[tokio::test]
    async fn failure_names_the_command_status_and_stderr_tail() {
        let script = "for i in $(seq 1 30); do echo line$i >&2; done; exit 3";
        let err = run("sh", &["-c", script]).await.expect_err("exit 3");
        let msg = err.to_string();
        assert!(msg.starts_with("`sh -c for i in"), "{msg}");
        assert!(msg.contains("(exit status: 3)"), "{msg}");
        assert!(msg.ends_with("line29\nline30"), "{msg}");
        assert!(!msg.contains("line10\n"), "only the tail: {msg}");
        match err {
            CommandError::Failed { status, .. } => assert_eq!(status.code(), Some(3)),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error() {
        let err = run("/nonexistent/ibkit-tool", &["x"])
            .await
            .expect_err("missing");
        assert!(matches!(err, CommandError::Spawn { .. }), "{err:?}");
        assert_eq!(err.command(), "/nonexistent/ibkit-tool x");
        assert_eq!(err.to_string(), "cannot run /nonexistent/ibkit-tool");
    }
}
