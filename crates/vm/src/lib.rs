//! # ibkit-vm: a small, careful QEMU runner
//!
//! Used by `ibkit boot-test` (and later `ibkit deploy`) to boot a marketplace
//! image the way a cloud would: a throw-away qcow2 overlay over the untouched
//! image, a cloud-init seed (NoCloud or OpenStack config drive, written in
//! Rust by [`seed`]), user-mode networking with port forwards and a packet
//! capture ([`pcap`]), a QMP control socket ([`qmp`]), optionally a virtiofs
//! share, and an SSH client ([`ssh`]) to look inside.
//!
//! * [`approve_image`] is the one gate every disk image passes before
//!   QEMU or qemu-img opens it: ibkit decides its format and backing chain,
//!   `qemu-img info` must agree, and QEMU gets each layer explicitly;
//! * [`qemu::Vm`] starts and stops QEMU (and virtiofsd); with
//!   [`LaunchOptions::detached`] QEMU is daemonised and outlives the program
//!   (`ibkit deploy`), found again by [`Vm::attach`] / [`detached_qemu_pid`];
//! * [`accel`] decides between KVM and TCG by really booting a kernel;
//! * [`procs`] makes sure no QEMU or virtiofsd outlives the program, even on
//!   Ctrl-C, panic or SIGKILL of the parent;
//! * [`command`] runs host tools (`qemu-img`, `ip`…) with errors that name
//!   the command, its exit status and the end of its stderr.
//!
//! Every error names the file, command or timeout it is about.

pub mod accel;
mod binary;
pub mod command;
pub mod pcap;
pub mod procs;
pub mod qemu;
pub mod qmp;
pub mod seed;
pub mod ssh;

pub use accel::{Accel, AccelChoice};
pub use qemu::{
    Forward, GuestForward, LaunchOptions, MacAddr, NetBackend, PreparedDisk, Proto, ShareState, Vm,
    VmConfig, VmError, approve_image, detached_qemu_pid, find_virtiofsd, pidfile_path,
    stop_detached,
};
