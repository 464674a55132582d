//! Helpers shared by the fuzz targets in `fuzz_targets/`: a per-process
//! scratch file for the targets that must go through a host path (qcow2,
//! inspect), and bounded walks over a filesystem or an assembled guest.
//!
//! Every walk is bounded (entries, depth, bytes per file) so that a slow
//! input is the code under test's fault, never the harness's.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ibkit_image::fs::{FileKind, FileSystem};
use ibkit_image::Guest;

/// Entries visited by one walk.
pub const WALK_BUDGET: usize = 2_000;
/// Deepest directory a walk descends into.
pub const WALK_DEPTH: usize = 32;
/// Bytes read from each regular file.
pub const READ_CAP: u64 = 64 * 1024;

/// The per-process scratch directory: `$IBKIT_FUZZ_SCRATCH` if set (the
/// script points it at a temporary directory it removes), else
/// `/dev/shm/ibkit-fuzz-PID` (or the same under the temp dir).
///
/// Each process gets a directory of its own holding nothing but the input,
/// so a qcow2 backing-file name in a fuzz input can only ever name the
/// input itself (refused as a loop) or something outside (refused by the
/// gate).
pub fn scratch_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = std::env::var_os("IBKIT_FUZZ_SCRATCH")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                let shm = Path::new("/dev/shm");
                if shm.is_dir() {
                    shm.to_owned()
                } else {
                    std::env::temp_dir()
                }
            });
        let dir = base.join(format!("ibkit-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the fuzz scratch directory");
        dir
    })
}

/// Write `data` to this process's scratch file `name` (the same path on
/// every call, truncated and rewritten) and return its path.
pub fn scratch_file(name: &str, data: &[u8]) -> &'static Path {
    static FILES: OnceLock<std::sync::Mutex<Vec<(String, &'static Path)>>> = OnceLock::new();
    let files = FILES.get_or_init(Default::default);
    let path = {
        let mut files = files.lock().expect("scratch file table");
        match files.iter().find(|(n, _)| n == name) {
            Some((_, p)) => *p,
            None => {
                let p: &'static Path = Box::leak(scratch_dir().join(name).into_boxed_path());
                files.push((name.to_owned(), p));
                p
            }
        }
    };
    std::fs::write(path, data).expect("write the fuzz input to the scratch file");
    path
}

fn drain(mut r: impl Read) {
    let mut sink = [0u8; 8192];
    let mut left = READ_CAP as usize;
    while left > 0 {
        let n = sink.len().min(left);
        match r.read(&mut sink[..n]) {
            Ok(0) | Err(_) => break,
            Ok(got) => left -= got,
        }
    }
}

fn child(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = dir.to_vec();
    if path.last() != Some(&b'/') {
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
}

/// Walk one filesystem from `/`: list directories, stat every entry, read
/// the head of every regular file, read every symlink. Errors are ignored.
pub fn walk_fs(fs: &dyn FileSystem) {
    let _ = (fs.type_name(), fs.uuid(), fs.label());
    let mut budget = WALK_BUDGET;
    let mut stack: Vec<(Vec<u8>, usize)> = vec![(b"/".to_vec(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = fs.read_dir(&dir) else { continue };
        for e in entries {
            if budget == 0 {
                return;
            }
            budget -= 1;
            let path = child(&dir, &e.name);
            let Ok(Some(meta)) = fs.lstat(&path) else { continue };
            match meta.kind {
                FileKind::Dir if depth < WALK_DEPTH => stack.push((path, depth + 1)),
                FileKind::File => {
                    if let Ok(r) = fs.open(&path) {
                        drain(r);
                    }
                }
                FileKind::Symlink => {
                    let _ = fs.read_link(&path);
                }
                _ => {}
            }
        }
    }
}

/// Files every rule reads first; read through the guest so that symlinks
/// and mount points resolve as in `ibkit check`.
const GUEST_FILES: &[&str] = &[
    "/etc/os-release",
    "/usr/lib/os-release",
    "/etc/fstab",
    "/etc/passwd",
    "/etc/shadow",
    "/etc/hostname",
    "/boot/grub/grub.cfg",
    "/etc/default/grub",
    "/var/lib/dpkg/status",
];

/// Walk an assembled guest: well-known files, then a bounded tree walk that
/// follows symlinks the way the guest layer does (inside the guest root).
pub fn walk_guest(guest: &Guest) {
    for f in GUEST_FILES {
        let _ = guest.read_capped(f, READ_CAP);
        let _ = guest.read_link(f);
    }
    let mut budget = WALK_BUDGET;
    let mut stack: Vec<(Vec<u8>, usize)> = vec![(b"/".to_vec(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(Some(entries)) = guest.read_dir(&dir) else { continue };
        for e in entries {
            if budget == 0 {
                return;
            }
            budget -= 1;
            let path = child(&dir, &e.name);
            let Ok(Some(meta)) = guest.lstat(&path) else { continue };
            match meta.kind {
                FileKind::Dir if depth < WALK_DEPTH => stack.push((path, depth + 1)),
                FileKind::File => {
                    let _ = guest.read_head(&path, READ_CAP);
                }
                FileKind::Symlink => {
                    let _ = guest.read_link(&path);
                    // Resolving follows the link inside the guest (and
                    // across mounts): hop limits and loops live there.
                    let _ = guest.stat(&path);
                }
                _ => {}
            }
        }
    }
}
