//! Builds small VM disk images for ibkit's tests, from a description written
//! in Rust, without mounting anything, and caches them by content.
//!
//! ```no_run
//! use ibkit_test_utils::{Container, FsType, GptPart, Layout, Tree, Volume, build_image};
//!
//! let mut root = Tree::new();
//! root.file("/etc/hostname", "web1\n")
//!     .file("/etc/fstab", "UUID=0b9e2f4e-7a3e-4c57-9a43-5d1c1e0f7a11 / ext4 defaults 0 1\n")
//!     .symlink("/etc/localtime", "/usr/share/zoneinfo/UTC")
//!     .dir_mode("/home/alice", 0o700)
//!     .owner("/home/alice", 1000, 1000);
//! let mut esp = Tree::new();
//! esp.file("/EFI/BOOT/BOOTX64.EFI", b"MZ...");
//!
//! let layout = Layout::Gpt(vec![
//!     GptPart::empty("ef02", "bios", 1),
//!     GptPart::new("ef00", "esp", Volume::new(FsType::Vfat, 32).with_tree(&esp)),
//!     GptPart::new(
//!         "8300",
//!         "root",
//!         Volume::new(FsType::Ext4, 64)
//!             .with_tree(&root)
//!             .with_label("cloudimg-rootfs")
//!             .with_uuid("0b9e2f4e-7a3e-4c57-9a43-5d1c1e0f7a11"),
//!     ),
//! ]);
//! let image = build_image(&layout, Container::Qcow2).unwrap();
//! // `image` is `<cache>/<sha256>.qcow2`; treat it as read-only (it is shared).
//! ```
//!
//! # API
//!
//! * [`Tree`]: a temporary directory written from Rust: [`Tree::file`],
//!   [`Tree::file_mode`], [`Tree::dir`], [`Tree::dir_mode`],
//!   [`Tree::symlink`], [`Tree::remove`], [`Tree::chmod`], [`Tree::owner`]
//!   (uid/gid; needs root, which tests run as), [`Tree::copy_from`] / `Clone`.
//! * [`Volume`] `{ fs: FsType, tree: Option<PathBuf>, size_mib, label, uuid }`
//!   with [`FsType`] `Ext4 | Ext4With(features) | Ext2 | Xfs | Vfat | Swap`.
//! * [`Layout`]: `Bare(Volume)`, `Mbr(Vec<Volume>)`,
//!   `MbrExtended { primary, logical }`, `Gpt(Vec<GptPart>)`,
//!   `Lvm { boot, vg, lvs, table: PartTable }` (partition 1 = /boot, last =
//!   the PV), `GptLvm { parts, vg, lvs }` (any GPT partitions, then the PV).
//!   [`GptPart`] `{ volume: Option<Volume>, size_mib, type_code, name,
//!   part_uuid }`, built with [`GptPart::new`] / [`GptPart::empty`].
//! * [`Container`]: `Raw`, `Qcow2`, `Qcow2Zlib`, `Qcow2Zstd`, `Qcow2Backed`
//!   (qcow2 base), `Qcow2BackedRaw` (raw base), `Other("vmdk")` etc.
//! * [`build_image`] (default cache directory), [`build_image_in`] (explicit
//!   cache directory), [`build_overlay`] (a qcow2 overlay that holds the
//!   difference between two layouts), [`cache_dir`].
//!
//! Partitions start at 1 MiB and follow each other; each is exactly its
//! volume's size. Identifiers are deterministic: the MBR disk id is
//! [`MBR_DISK_ID`], the GPT disk GUID [`GPT_DISK_GUID`]; filesystem UUIDs, GPT
//! partition UUIDs and LVM ids that are not given are derived from the
//! layout's hash (stable, but not predictable: set them when a test or an
//! fstab must name them). MBR PARTUUIDs are `1b1c0de5-NN`.
//!
//! # Caching
//!
//! The image's name is the SHA-256 of a canonical serialisation of the layout
//! (every tree walked in sorted order: relative path, type, mode, uid/gid,
//! symlink target, file bytes; timestamps are left out), the container and
//! [`BUILDER_VERSION`]. The cache directory is `$IBKIT_FIXTURE_DIR`, else
//! `$CARGO_TARGET_DIR/ibkit-fixtures` when that is absolute, else
//! `<workspace>/target/ibkit-fixtures`. An image present there is returned at
//! once; otherwise it is built under a `.tmp-*` name in the same directory and
//! hard-linked into place, which never replaces an existing file: concurrent
//! test processes building the same image are safe (one copy wins, the other
//! is dropped), and an interrupted build leaves only a `.tmp-*` entry, swept
//! after an hour. Containers other than `Raw` are converted from the layout's
//! raw image, which is cached too. Backing files of `Qcow2Backed*` are the
//! layout's cached `Qcow2`/`Raw` images, named relatively: keep the overlay in
//! the cache directory (or copy both files together).
//!
//! Change [`BUILDER_VERSION`] whenever a change here changes the bytes of
//! images built from the same description.
//!
//! # How filesystems are made (no mounting, no loop devices)
//!
//! * ext2/ext4: `mke2fs -t ext4 -b 4096 -U uuid -E hash_seed=uuid -d TREE`
//!   (4 KiB blocks even on small filesystems, where mke2fs would otherwise
//!   pick 1 KiB), with `E2FSPROGS_FAKE_TIME` fixed.
//! * XFS: `mkfs.xfs -m uuid=… -L … -p PROTOFILE`, with the protofile
//!   generated from the tree (regular files, directories, symlinks, device
//!   nodes, fifos, modes incl. setuid/setgid, uid/gid; hard links become
//!   separate copies). The protofile has no
//!   sticky bit, so entries with one are fixed afterwards with
//!   `xfs_db -x -c 'path …' -c 'write core.mode …'`. Names (and the tree's host
//!   path) may not contain whitespace, `:` or `$`. mkfs.xfs 6.1 refuses
//!   filesystems under 300 MiB and logs under 64 MiB; at 300 MiB or more the
//!   defaults are used (the 64 MiB log is zeros, which the sparse copy into
//!   the disk skips, so a 300 MiB XFS costs well under 1 MiB on disk). Below
//!   300 MiB, mkfs.xfs is run with `TEST_DIR`, `TEST_DEV` and `QA_CHECK_FS`
//!   set, xfsprogs' own escape hatch for its test suite, which makes valid
//!   filesystems down to 16 MiB; a future xfsprogs may drop it, so prefer
//!   300 MiB.
//! * vfat: `mkfs.vfat --invariant -i SERIAL -n LABEL` then
//!   `mcopy -s -p -m` of the tree's top-level entries (no symlinks; owners and
//!   modes are dropped).
//! * swap: `mkswap -U uuid -L label`.
//!
//! Each filesystem is made in a file of its own and copied into the disk at its
//! partition's (or LV's) offset, skipping all-zero blocks, so images stay
//! sparse. Partition tables are written by `sfdisk` from a script. LVM: the PV
//! label, PV header, metadata area header and VG text metadata are written by
//! this crate in the layout `pvcreate` 2.03 uses (metadata area at 4 KiB,
//! `pe_start` 1 MiB, 4 MiB extents, linear LVs); `lvcreate` cannot be used here
//! because it needs device-mapper. lamlvm reads the result, and so does LVM
//! (`pvck`, `vgs`/`lvs` on a loop device).

mod cmd;
mod deadline;
mod disk;
mod hash;
mod host;
mod lvm;
mod mkfs;
mod qemu_img;
mod spec;
mod tree;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail, ensure};

pub use deadline::with_deadline;
pub use host::{CountingService, Phase, is_root, link_exists};
pub use qemu_img::{qcow2_naming_backing, qcow2_over_raw, qemu_img};
pub use spec::{Container, FsType, GptPart, Layout, PartTable, Volume};
pub use tree::Tree;

/// Part of every image's hash: bump it when the builder's output changes.
pub const BUILDER_VERSION: &str = "ibkit-test-utils/1";

/// The MBR disk identifier of every `Mbr`/`MbrExtended`/`Lvm{Mbr}` image
/// (so the PARTUUID of partition N is `1b1c0de5-0N`).
pub const MBR_DISK_ID: u32 = 0x1b1c_0de5;

/// The disk GUID of every GPT image.
pub const GPT_DISK_GUID: &str = "1B1C0DE5-0000-4000-8000-1B1C0DE50000";

/// The environment variable naming the cache directory.
pub const FIXTURE_DIR_ENV: &str = "IBKIT_FIXTURE_DIR";

/// The cache directory (see the crate docs); not created here.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(FIXTURE_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .filter(|t| t.is_absolute())
    {
        return t.join("ibkit-fixtures");
    }
    // crates/test-utils -> the workspace root.
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .and_then(Path::parent)
        .unwrap_or(manifest)
        .join("target")
        .join("ibkit-fixtures")
}

/// Builds (or finds in the cache) the image of `layout` in `container` and
/// returns its path in [`cache_dir`]. Treat the file as read-only: it is
/// shared by every test that asks for the same image (copy it to modify it).
pub fn build_image(layout: &Layout, container: Container) -> Result<PathBuf> {
    build_image_in(&cache_dir(), layout, container)
}

/// [`build_image`] with an explicit cache directory (created if missing).
pub fn build_image_in(dir: &Path, layout: &Layout, container: Container) -> Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let lh = hash::layout(layout)?;
    ensure_image(dir, layout, &lh, &container)
}

/// A qcow2 overlay whose guest view is `top`, on a backing file that is
/// `base`'s image in `base_container` (named relatively, with its backing
/// format): the overlay holds exactly the clusters where `top`'s raw image
/// differs from `base`'s, as `qemu-img rebase` computes them. Good for testing
/// that a reader merges a backing chain. With a `Qcow2Backed*` base
/// container, the chain is three files deep.
pub fn build_overlay(base: &Layout, base_container: Container, top: &Layout) -> Result<PathBuf> {
    build_overlay_in(&cache_dir(), base, base_container, top)
}

/// [`build_overlay`] with an explicit cache directory.
pub fn build_overlay_in(
    dir: &Path,
    base: &Layout,
    base_container: Container,
    top: &Layout,
) -> Result<PathBuf> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let blh = hash::layout(base)?;
    let tlh = hash::layout(top)?;
    let mut c = hash::Canon::new("ibkit-test-utils overlay");
    c.str(BUILDER_VERSION).bytes(&blh).bytes(&tlh);
    container_canon(&mut c, &base_container);
    let final_path = dir.join(format!("{}.qcow2", hash::hex(&c.finish())));
    if final_path.exists() {
        return Ok(final_path);
    }
    let base_path = ensure_image(dir, base, &blh, &base_container)?;
    let top_path = ensure_image(dir, top, &tlh, &Container::Raw)?;
    sweep(dir);
    let tmp = tmp_file(dir, "qcow2")?;
    run_in(
        dir,
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&top_path)
            .arg(tmp.as_os_str()),
    )?;
    run_in(
        dir,
        Command::new("qemu-img")
            .args([
                "rebase",
                "-q",
                "-f",
                "qcow2",
                "-F",
                backing_format(&base_container),
                "-b",
            ])
            .arg(file_name(&base_path)?)
            .arg(tmp.as_os_str()),
    )?;
    publish(&tmp, &final_path)?;
    Ok(final_path)
}

fn container_canon(c: &mut hash::Canon, container: &Container) {
    match container {
        Container::Raw => c.str("raw"),
        Container::Qcow2 => c.str("qcow2"),
        Container::Qcow2Zlib => c.str("qcow2-zlib"),
        Container::Qcow2Zstd => c.str("qcow2-zstd"),
        Container::Qcow2Backed => c.str("qcow2-backed"),
        Container::Qcow2BackedRaw => c.str("qcow2-backed-raw"),
        Container::Other(f) => c.str("other").str(f),
    };
}

fn backing_format(c: &Container) -> &str {
    match c {
        Container::Raw => "raw",
        Container::Other(f) => f,
        _ => "qcow2",
    }
}

fn file_name(p: &Path) -> Result<&str> {
    p.file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no file name", p.display()))
}

fn run_in(dir: &Path, cmd: &mut Command) -> Result<()> {
    cmd.current_dir(dir);
    cmd::run(cmd, None)?;
    Ok(())
}

fn tmp_file(dir: &Path, ext: &str) -> Result<tempfile::TempPath> {
    Ok(tempfile::Builder::new()
        .prefix(".tmp-")
        .suffix(&format!(".{ext}"))
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?
        .into_temp_path())
}

/// Puts the finished file `tmp` at `final_path` unless something is there
/// already (another process won the race): a hard link never replaces.
fn publish(tmp: &Path, final_path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let _ = fs::set_permissions(tmp, fs::Permissions::from_mode(0o444));
    match fs::hard_link(tmp, final_path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => {
            Err(e).with_context(|| format!("linking {} to {}", tmp.display(), final_path.display()))
        }
    }
}

/// Removes `.tmp-*` leftovers of interrupted builds older than an hour.
fn sweep(dir: &Path) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    let now = SystemTime::now();
    for e in rd.flatten() {
        if !e.file_name().to_string_lossy().starts_with(".tmp-") {
            continue;
        }
        let Ok(m) = e.path().symlink_metadata() else {
            continue;
        };
        let old = m
            .modified()
            .ok()
            .and_then(|t| now.duration_since(t).ok())
            .is_some_and(|age| age > Duration::from_secs(3600));
        if old {
            let _ = if m.is_dir() {
                fs::remove_dir_all(e.path())
            } else {
                fs::remove_file(e.path())
            };
        }
    }
}

fn ensure_image(
    dir: &Path,
    layout: &Layout,
    lh: &[u8; 32],
    container: &Container,
) -> Result<PathBuf> {
    let mut c = hash::Canon::new("ibkit-test-utils image");
    c.str(BUILDER_VERSION).bytes(lh);
    container_canon(&mut c, container);
    let final_path = dir.join(format!("{}.{}", hash::hex(&c.finish()), container.ext()));
    if final_path.exists() {
        return Ok(final_path);
    }
    match container {
        Container::Raw => {
            sweep(dir);
            let work = tempfile::Builder::new()
                .prefix(".tmp-build-")
                .tempdir_in(dir)
                .with_context(|| format!("creating a build directory in {}", dir.display()))?;
            let out = work.path().join("disk.raw");
            disk::build_raw(layout, lh, work.path(), &out)?;
            publish(&out, &final_path)?;
        }
        Container::Qcow2 | Container::Qcow2Zlib | Container::Qcow2Zstd | Container::Other(_) => {
            if let Container::Other(f) = container {
                ensure!(
                    !f.is_empty() && f.chars().all(|c| c.is_ascii_alphanumeric()),
                    "Container::Other({f:?}) is not a qemu-img format name"
                );
            }
            let raw = ensure_image(dir, layout, lh, &Container::Raw)?;
            sweep(dir);
            let tmp = tmp_file(dir, container.ext())?;
            let mut cmd = Command::new("qemu-img");
            cmd.args([
                "convert",
                "-q",
                "-f",
                "raw",
                "-O",
                backing_format(container),
            ]);
            match container {
                Container::Qcow2Zlib => {
                    cmd.args(["-c", "-o", "compression_type=zlib"]);
                }
                Container::Qcow2Zstd => {
                    cmd.args(["-c", "-o", "compression_type=zstd"]);
                }
                _ => {}
            }
            cmd.arg(&raw).arg(tmp.as_os_str());
            run_in(dir, &mut cmd)?;
            publish(&tmp, &final_path)?;
        }
        Container::Qcow2Backed | Container::Qcow2BackedRaw => {
            let base_c = if *container == Container::Qcow2Backed {
                Container::Qcow2
            } else {
                Container::Raw
            };
            let base = ensure_image(dir, layout, lh, &base_c)?;
            sweep(dir);
            let tmp = tmp_file(dir, "qcow2")?;
            run_in(
                dir,
                Command::new("qemu-img")
                    .args([
                        "create",
                        "-q",
                        "-f",
                        "qcow2",
                        "-F",
                        backing_format(&base_c),
                        "-b",
                    ])
                    .arg(file_name(&base)?)
                    .arg(tmp.as_os_str()),
            )?;
            publish(&tmp, &final_path)?;
        }
    }
    Ok(final_path)
}

/// The project's real Debian 12 image as (qcow2, zlib qcow2, raw): from the
/// environment `scripts/test.sh` sets (`IBKIT_DEBIAN_QCOW2`,
/// `IBKIT_DEBIAN_QCOW2_ZLIB`, `IBKIT_DEBIAN_RAW`), else built (or found in
/// its content cache) by `scripts/build-debian-image.sh`.
pub fn debian_images() -> Result<[PathBuf; 3]> {
    if let (Ok(a), Ok(b), Ok(c)) = (
        std::env::var("IBKIT_DEBIAN_QCOW2"),
        std::env::var("IBKIT_DEBIAN_QCOW2_ZLIB"),
        std::env::var("IBKIT_DEBIAN_RAW"),
    ) {
        return Ok([a.into(), b.into(), c.into()]);
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = manifest.join("../../scripts/build-debian-image.sh");
    let out = std::process::Command::new(&script)
        .output()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed:\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let lines: Vec<PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| PathBuf::from(l.trim()))
        .collect();
    match <[PathBuf; 3]>::try_from(lines) {
        Ok(paths) => Ok(paths),
        Err(lines) => bail!("{} printed {} paths, not 3", script.display(), lines.len()),
    }
}

/// Copies the directory tree `from` to `to` (files and directories; a
/// fixture to mutate in a test). Panics on I/O errors, like the rest of the
/// scaffolding.
pub fn copy_dir(from: &Path, to: &Path) {
    let fail = |what: &str, p: &Path, e: std::io::Error| -> ! {
        panic!("copy_dir: cannot {what} {}: {e}", p.display())
    };
    std::fs::create_dir_all(to).unwrap_or_else(|e| fail("create", to, e));
    let entries = std::fs::read_dir(from).unwrap_or_else(|e| fail("read", from, e));
    for e in entries {
        let e = e.unwrap_or_else(|e| fail("read", from, e));
        let dst = to.join(e.file_name());
        let is_dir = e
            .file_type()
            .unwrap_or_else(|err| fail("stat", &e.path(), err))
            .is_dir();
        if is_dir {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap_or_else(|err| fail("copy", &e.path(), err));
        }
    }
}
