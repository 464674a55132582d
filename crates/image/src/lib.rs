//! Read-only, unprivileged access to VM disk images.
//!
//! Layers, bottom up:
//! - [`source`], [`container`] and [`qcow2`]: bytes — raw files, qcow2
//!   (our own reader, with a bounded cache of decompressed clusters) with
//!   gated backing chains, windows onto them; [`chain`]: the files (and
//!   formats) QEMU may open for a disk, checked against `qemu-img info`.
//! - [`partition`], [`lvm`], [`probe`]: volumes on a disk — MBR, GPT, LVM2
//!   logical volumes, and what each holds.
//! - [`fs`]: filesystem readers — ext2/3/4 (our own), XFS, a host directory.
//! - [`guest`]: one guest view — mounts, symlinks resolved inside the guest
//!   root, bounded reads.
//! - [`inspect`]: find the root filesystem and assemble the guest from
//!   `/etc/fstab`.
//!
//! Limits that protect against hostile images are in [`limits`].

mod cache;
pub mod chain;
pub mod container;
mod error;
pub mod fs;
pub mod guest;
pub mod inspect;
pub mod limits;
pub mod lvm;
pub mod partition;
pub mod probe;
pub mod qcow2;
pub mod source;

pub use error::ImageError;
pub use guest::{Guest, GuestError};
pub use inspect::{InspectOptions, Inspection, inspect};
