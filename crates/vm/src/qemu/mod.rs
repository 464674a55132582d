//! Starting, watching and stopping one QEMU VM (and its virtiofsd).
//!
//! The image is never modified: QEMU runs on a qcow2 overlay in the work
//! directory over the image. The image is untrusted: before anything opens
//! it, [`approve_image`] decides its format and whole backing chain with
//! ibkit's policy and checks `qemu-img info` agrees; QEMU then gets every
//! layer as an explicit `-blockdev` node ([`disk_args`]), so it never
//! probes a format or follows a file name written in an image. The work
//! directory keeps everything for the report afterwards: `overlay.qcow2`,
//! `serial.log`, `qemu.log` (QEMU's stderr), `net.pcap` (all guest traffic),
//! `qmp.sock`, `virtiofsd.sock` and `virtiofsd.log`.
//!
//! The parts: `config` (MAC, forwards, [`VmConfig`], [`LaunchOptions`]),
//! `disk` (the image gate, qemu-img, `-blockdev` nodes), `argv` (QEMU's
//! command line), `virtiofsd`, `detached` (the QEMU process, pid files,
//! [`stop_detached`]) and `vm` ([`Vm`]'s life); this file holds
//! [`VmError`] and the helpers they share.

mod argv;
mod config;
mod detached;
mod disk;
mod virtiofsd;
mod vm;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::command::CommandError;
use crate::qmp::QmpError;

pub use crate::binary::{qemu_binary, qemu_img_binary, socat_binary};
pub use config::{
    Forward, GuestForward, LaunchOptions, MacAddr, MacParseError, NetBackend, Proto, ShareState,
    VmConfig,
};
pub use detached::{detached_qemu_pid, pidfile_path, stop_detached};
pub use disk::{approve_image, create_overlay, disk_args, overlay_create_args, qemu_img_info_args};
pub use virtiofsd::find_virtiofsd;
pub use vm::{PreparedDisk, Vm};

// ---------------------------------------------------------------- errors

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("vm {name}: bad configuration: {message}")]
    Config { name: String, message: String },
    /// The disk image failed the gate ([`approve_image`]).
    #[error("vm {name}: disk image {} refused: {reason}", image.display())]
    Image {
        name: String,
        image: PathBuf,
        reason: String,
    },
    #[error("vm {name}: {what} {}", path.display())]
    Io {
        name: String,
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("vm {name}: cannot run {program}")]
    Spawn {
        name: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("vm {name}: `{command}` failed ({status}): {stderr}")]
    Command {
        name: String,
        command: String,
        status: String,
        stderr: String,
    },
    #[error("vm {name}: QEMU exited during start-up ({status}); {}:\n{log}", log_path.display())]
    QemuExited {
        name: String,
        status: String,
        log_path: PathBuf,
        log: String,
    },
    #[error("vm {name}: QEMU is not running any more ({status}); {}:\n{log}", log_path.display())]
    NotRunning {
        name: String,
        status: String,
        log_path: PathBuf,
        log: String,
    },
    #[error("vm {name}: QMP")]
    Qmp {
        name: String,
        #[source]
        source: QmpError,
    },
    #[error("vm {name}: QMP socket {} did not answer within {timeout:?} (QEMU log {}: {log})", socket.display(), log_path.display())]
    QmpStart {
        name: String,
        socket: PathBuf,
        timeout: Duration,
        log_path: PathBuf,
        log: String,
    },
    #[error("vm {name}: {needle:?} did not appear in {} within {timeout:?} (last console line: {last_line})", path.display())]
    SerialTimeout {
        name: String,
        needle: String,
        timeout: Duration,
        path: PathBuf,
        last_line: String,
    },
}

impl VmError {
    /// A host tool's failure ([`crate::command::run`]) as an error of the VM `name`.
    pub(crate) fn command(name: &str, e: CommandError) -> VmError {
        let command = e.command();
        match e {
            CommandError::Spawn {
                program, source, ..
            } => VmError::Spawn {
                name: name.to_string(),
                program,
                source,
            },
            CommandError::Failed { status, stderr, .. } => VmError::Command {
                name: name.to_string(),
                command,
                status: status.to_string(),
                stderr,
            },
        }
    }
}

// ---------------------------------------------------------------- files

/// `chmod 0600`, whatever the umask made of it.
pub fn set_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

/// Create (or truncate) `path` with mode 0600 before QEMU or virtiofsd
/// writes it: they keep the mode of an existing file.
pub fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    set_private(path)?;
    Ok(f)
}

/// The end of a log (QEMU's, virtiofsd's) for an error message.
fn read_log(p: &Path) -> String {
    let text = String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    let t = ibkit_support::text::tail_lines(text.trim(), 20);
    if t.is_empty() { "(empty)".into() } else { t }
}
