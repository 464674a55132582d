//! RPM's ndb backend (`Packages.db`, SUSE's default for rpm 4.14-4.16):
//! a 32-byte file header (`RpmP`), slot pages of 16-byte slots (`Slot`,
//! package index, block offset, block count), and header blobs at
//! 16-byte-block offsets, each framed by a `BlbS` head (magic, package
//! index, timestamp, length) and a `BlbE` tail (adler32, length, magic).

use ibkit_image::Guest;

use super::{DbRead, RPMDB_READ_CAP, rpmhdr};

const PKGDB_MAGIC: &[u8; 4] = b"RpmP";
const SLOT_MAGIC: &[u8; 4] = b"Slot";
const BLOB_HEAD_MAGIC: &[u8; 4] = b"BlbS";
const BLOB_TAIL_MAGIC: &[u8; 4] = b"BlbE";
const PAGE: usize = 4096;
const SLOT: usize = 16;
const BLK: usize = 16;
const HEAD: usize = 16;
const TAIL: usize = 12;

fn le32(b: &[u8], off: usize) -> u32 {
    match b.get(off..off + 4) {
        Some(s) => u32::from_le_bytes([s[0], s[1], s[2], s[3]]),
        None => 0,
    }
}

/// The header blobs of a `Packages.db` in package index (install) order, and
/// the problems met (each loses one package).
pub(super) fn blobs(file: &[u8]) -> Result<(Vec<&[u8]>, Vec<String>), String> {
    if file.len() < 32 || &file[..4] != PKGDB_MAGIC {
        return Err("not an rpm ndb database (bad magic)".into());
    }
    let version = le32(file, 4);
    if version != 0 {
        return Err(format!("unsupported ndb version {version}"));
    }
    let slot_pages = le32(file, 12) as usize;
    if slot_pages == 0 || slot_pages.saturating_mul(PAGE) > file.len() {
        return Err(format!("{slot_pages} slot pages do not fit in the file"));
    }
    let file_blocks = file.len() / BLK;
    let min_block = slot_pages * (PAGE / BLK);
    let mut slots = Vec::new();
    let mut problems = Vec::new();
    // The first two slots of page 0 hold the file header.
    for off in (32..slot_pages * PAGE).step_by(SLOT) {
        let s = &file[off..off + SLOT];
        if &s[..4] != SLOT_MAGIC {
            return Err(format!("slot at byte {off} is damaged"));
        }
        let (pkgidx, blkoff, blkcnt) = (le32(s, 4), le32(s, 8) as usize, le32(s, 12) as usize);
        if blkoff == 0 {
            continue;
        }
        if pkgidx == 0
            || blkcnt == 0
            || blkoff < min_block
            || blkoff.saturating_add(blkcnt) > file_blocks
        {
            problems.push(format!("slot for package {pkgidx} points outside the file"));
            continue;
        }
        slots.push((pkgidx, blkoff, blkcnt));
    }
    slots.sort_unstable();
    let mut out = Vec::with_capacity(slots.len());
    for (pkgidx, blkoff, blkcnt) in slots {
        let area = &file[blkoff * BLK..(blkoff + blkcnt) * BLK];
        let len = le32(area, 12) as usize;
        let ok = area.len() >= HEAD + TAIL
            && &area[..4] == BLOB_HEAD_MAGIC
            && le32(area, 4) == pkgidx
            && blkcnt == (HEAD + len + TAIL).div_ceil(BLK)
            && &area[area.len() - 4..] == BLOB_TAIL_MAGIC
            && le32(area, area.len() - 8) as usize == len;
        if !ok {
            problems.push(format!("blob of package {pkgidx} is damaged"));
            continue;
        }
        out.push(&area[HEAD..HEAD + len]);
    }
    Ok((out, problems))
}

/// Read an ndb `Packages.db`.
pub(super) fn read(guest: &Guest, path: &str) -> DbRead {
    let file = match guest.read_capped(path, RPMDB_READ_CAP) {
        Ok(Some(d)) => d,
        Ok(None) => return DbRead::failed(format!("{path} is not a regular file")),
        Err(e) => return DbRead::failed(format!("cannot read {path}: {e}")),
    };
    if file.is_empty() {
        return DbRead::default();
    }
    let (values, mut problems) = match blobs(&file) {
        Ok(v) => v,
        Err(e) => return DbRead::failed(format!("{path}: {e}")),
    };
    let mut read = DbRead::default();
    for v in values {
        match rpmhdr::parse_header(v) {
            Ok(p) => read.packages.push(p),
            // LZO-compressed blobs (an rpm build option SUSE does not use)
            // end up here too.
            Err(e) => problems.push(format!("bad header: {e}")),
        }
    }
    if let Some(first) = problems.first() {
        read.error = Some(format!(
            "{path}: {} damaged package record(s) ({first}); {} package(s) read, the list is incomplete",
            problems.len(),
            read.packages.len()
        ));
    }
    read
}
