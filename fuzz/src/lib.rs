//! Helpers shared by the fuzz targets in `fuzz_targets/`: a per-process
//! scratch file for the targets that must go through a host path (qcow2,
//! inspect), and bounded walks over a filesystem or an assembled guest.
//!
//! Every walk is bounded (entries, depth, bytes per file) so that a slow
//! input is the code under test's fault, never the harness's.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ibkit_image::Guest;
use ibkit_image::fs::{FileKind, FileSystem};
use ibkit_image::guest::{Visit, WalkLimits, Walker};

/// Entries visited by one walk.
pub const WALK_BUDGET: usize = 2_000;
/// Deepest directory a walk descends into.
pub const WALK_DEPTH: usize = 32;
/// Bytes read from each regular file.
pub const READ_CAP: u64 = 64 * 1024;

/// The per-process scratch directory: `$IBKIT_FUZZ_SCRATCH` if set (the
/// script points it at a temporary directory it removes), else
/// `/dev/shm/ibkit-fuzz-PID` (or the same under the temp dir); directories
/// of dead processes are removed on the way.
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
        remove_stale(&base);
        let dir = base.join(format!("ibkit-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the fuzz scratch directory");
        dir
    })
}

/// Remove the scratch directories of processes that are gone (a crash
/// aborts without cleaning up; so does every libFuzzer exit).
fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("ibkit-fuzz-")) else {
            continue;
        };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
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
    // Each directory inode once: a hard-linked directory or a loop would
    // only burn the budget.
    let mut listed = std::collections::HashSet::new();
    if let Ok(Some(root)) = fs.lstat(b"/") {
        listed.insert(root.ino);
    }
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = fs.read_dir(&dir) else {
            continue;
        };
        for e in entries {
            if budget == 0 {
                return;
            }
            budget -= 1;
            let path = child(&dir, &e.name);
            let Ok(Some(meta)) = fs.lstat(&path) else {
                continue;
            };
            match meta.kind {
                FileKind::Dir
                    if depth < WALK_DEPTH && (meta.ino == 0 || listed.insert(meta.ino)) =>
                {
                    stack.push((path, depth + 1))
                }
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

/// Walk an assembled guest: well-known files, then the tree walk every rule
/// uses ([`Walker`]: each directory listed once, even through directory hard
/// links and loops, within budgets), reading files and following symlinks
/// the way the guest layer does (inside the guest root).
pub fn walk_guest(guest: &Guest) {
    for f in GUEST_FILES {
        let _ = guest.read_capped(f, READ_CAP);
        let _ = guest.read_link(f);
    }
    let limits = WalkLimits {
        max_dirs: WALK_BUDGET,
        max_entries: WALK_BUDGET,
        max_depth: WALK_DEPTH,
    };
    let mut walker = Walker::new(guest, limits);
    walker.walk("/", |e| {
        match e.kind {
            FileKind::File => {
                let _ = guest.read_head(e.path, READ_CAP);
            }
            FileKind::Symlink => {
                let _ = guest.read_link(e.path);
                // Resolving follows the link inside the guest (and across
                // mounts): hop limits and loops live there.
                let _ = guest.stat(e.path);
            }
            _ => {}
        }
        Visit::Descend
    });
    // The budgets hold whatever the tree looks like.
    assert!(walker.dirs() <= limits.max_dirs && walker.entries() <= limits.max_entries);
    let _ = (
        walker.exhausted_note(),
        walker.revisit_note(),
        walker.too_deep_note(),
    );
}

/// Block size of a [`SparseDisk`] record.
pub const SPARSE_BLOCK: usize = 4096;
/// Size of every [`SparseDisk`].
pub const SPARSE_SIZE: u64 = 64 << 20;

/// A 64 MiB disk of zeros described by a fuzz input made of records: a
/// little-endian `u16` block number, then up to 4096 bytes for that block
/// (the last record may be short; a later record for the same block wins;
/// blocks past 64 MiB are dropped).
///
/// Filesystems like XFS keep metadata megabytes apart (the root inode sits
/// after a log of at least 5 MiB), so a raw prefix under 1 MiB cannot hold
/// one; as records, a 16 MiB XFS with a populated tree is about 450 KiB.
/// `fuzz/seeds.sh` writes seeds in this form.
pub struct SparseDisk {
    data: Vec<u8>,
    /// (block number, start of its bytes in `data`, their length), sorted
    /// by block number, one per block.
    blocks: Vec<(u64, usize, usize)>,
}

impl SparseDisk {
    /// Decode `input` (see the type's documentation).
    pub fn new(input: &[u8]) -> SparseDisk {
        let mut blocks = Vec::new();
        let mut at = 0;
        while at + 2 <= input.len() {
            let block = u64::from(u16::from_le_bytes([input[at], input[at + 1]]));
            let start = at + 2;
            let len = (input.len() - start).min(SPARSE_BLOCK);
            if (block + 1) * SPARSE_BLOCK as u64 <= SPARSE_SIZE {
                blocks.push((block, start, len));
            }
            at = start + len;
        }
        // Stable sort, then keep the last record of each block.
        blocks.sort_by_key(|b| b.0);
        let mut dedup: Vec<(u64, usize, usize)> = Vec::with_capacity(blocks.len());
        for b in blocks {
            match dedup.last_mut() {
                Some(last) if last.0 == b.0 => *last = b,
                _ => dedup.push(b),
            }
        }
        SparseDisk {
            data: input.to_vec(),
            blocks: dedup,
        }
    }
}

impl ibkit_image::source::ReadAt for SparseDisk {
    fn size(&self) -> u64 {
        SPARSE_SIZE
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|&e| e <= SPARSE_SIZE)
            .ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "past the end")
            })?;
        buf.fill(0);
        let bs = SPARSE_BLOCK as u64;
        let first = offset / bs;
        let i = self.blocks.partition_point(|b| b.0 < first);
        for &(block, start, len) in &self.blocks[i..] {
            let b_start = block * bs;
            if b_start >= end {
                break;
            }
            let b_end = b_start + len as u64;
            let from = offset.max(b_start);
            let to = end.min(b_end);
            if from < to {
                let src = start + (from - b_start) as usize;
                let n = (to - from) as usize;
                let dst = (from - offset) as usize;
                buf[dst..dst + n].copy_from_slice(&self.data[src..src + n]);
            }
        }
        Ok(())
    }
}
