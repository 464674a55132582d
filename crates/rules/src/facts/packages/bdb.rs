//! RPM's BerkeleyDB backend (`/var/lib/rpm/Packages`, rpm < 4.16): a
//! BerkeleyDB hash database whose values are header blobs. Walked the way
//! rpm's own read-only reader (`bdb_ro`) walks it: the meta page gives the
//! page size, the buckets and the split-point table; each bucket is a chain
//! of hash pages whose items are key/value pairs stored on the page or, when
//! larger than a page (most headers), in a chain of overflow pages.
//!
//! Both byte orders are handled. Every page number, offset and length is
//! checked; pages are visited at most once; a broken bucket or overflow
//! chain loses those records and is reported as an incomplete list.

use ibkit_image::Guest;

use super::{DbRead, RPMDB_READ_CAP, rpmhdr};

const HASH_MAGIC: u32 = 0x0006_1561;
const PAGE_HEADER: usize = 26;
const P_HASH_UNSORTED: u8 = 2;
const P_OVERFLOW: u8 = 7;
const P_HASHMETA: u8 = 8;
const P_HASH: u8 = 13;
const H_KEYDATA: u8 = 1;
const H_OFFPAGE: u8 = 3;

struct Db<'a> {
    file: &'a [u8],
    big_endian: bool,
    page_size: usize,
    last_page: u32,
}

impl<'a> Db<'a> {
    fn u32_at(&self, b: &[u8], off: usize) -> Option<u32> {
        let s: [u8; 4] = b.get(off..off.checked_add(4)?)?.try_into().ok()?;
        Some(if self.big_endian {
            u32::from_be_bytes(s)
        } else {
            u32::from_le_bytes(s)
        })
    }
    fn u16_at(&self, b: &[u8], off: usize) -> Option<usize> {
        let s: [u8; 2] = b.get(off..off.checked_add(2)?)?.try_into().ok()?;
        Some(if self.big_endian {
            u16::from_be_bytes(s)
        } else {
            u16::from_le_bytes(s)
        } as usize)
    }

    /// Page `n`, checked to be inside the file and to carry its own number.
    fn page(&self, n: u32) -> Result<&'a [u8], String> {
        if n == 0 || n > self.last_page {
            return Err(format!(
                "page number {n} out of range (last page {})",
                self.last_page
            ));
        }
        let start = (n as usize)
            .checked_mul(self.page_size)
            .ok_or_else(|| format!("page {n} out of range"))?;
        let page = self
            .file
            .get(start..start + self.page_size)
            .ok_or_else(|| format!("page {n} lies beyond the end of the file"))?;
        if self.u32_at(page, 8) != Some(n) {
            return Err(format!("page {n} does not carry its own number"));
        }
        Ok(page)
    }
}

/// Walks buckets and overflow chains, with a work bound.
struct Walker<'a> {
    db: Db<'a>,
    visited: Vec<bool>,
    /// Bytes of values still allowed to be assembled (guards against
    /// overflow chains shared by many items).
    budget: usize,
}

impl<'a> Walker<'a> {
    fn visit(&mut self, n: u32) -> Result<&'a [u8], String> {
        let page = self.db.page(n)?;
        let seen = &mut self.visited[n as usize];
        if *seen {
            return Err(format!("page {n} is reached twice (a loop)"));
        }
        *seen = true;
        Ok(page)
    }

    /// Assemble a value stored in overflow pages starting at `pgno`.
    fn overflow(&mut self, mut pgno: u32, len: usize) -> Result<Vec<u8>, String> {
        if len == 0 || len > self.budget {
            return Err(format!("overflow item of {len} bytes is implausible"));
        }
        self.budget -= len;
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let page = self.visit(pgno)?;
            if page[25] != P_OVERFLOW {
                return Err(format!(
                    "page {pgno} in an overflow chain has type {}",
                    page[25]
                ));
            }
            let plen = self.db.u16_at(page, 22).unwrap_or(0);
            if plen == 0 || PAGE_HEADER + plen > self.db.page_size || plen > len - out.len() {
                return Err(format!("overflow page {pgno} holds a bad length {plen}"));
            }
            out.extend_from_slice(&page[PAGE_HEADER..PAGE_HEADER + plen]);
            pgno = self.db.u32_at(page, 16).unwrap_or(0);
        }
        Ok(out)
    }

    /// The value of the item at `off` spanning `len` bytes on `page`.
    fn item(&mut self, page: &[u8], off: usize, len: usize) -> Result<Option<Vec<u8>>, String> {
        if len == 0 || off + len > self.db.page_size {
            return Err(format!("item at {off}+{len} overruns the page"));
        }
        match page[off] {
            H_KEYDATA => Ok(Some(page[off + 1..off + len].to_vec())),
            H_OFFPAGE => {
                if len != 12 {
                    return Err(format!("off-page item of {len} bytes"));
                }
                let pgno = self.db.u32_at(page, off + 4).unwrap_or(0);
                let tlen = self.db.u32_at(page, off + 8).unwrap_or(0) as usize;
                self.overflow(pgno, tlen).map(Some)
            }
            // Duplicates never occur in rpm's Packages: skip them.
            _ => Ok(None),
        }
    }
}

/// Records read: (key as a number, value).
type Records = Vec<(u32, Vec<u8>)>;

/// The records of a BerkeleyDB hash `Packages` file in key (rpm's install
/// instance number) order, and the problems met (each loses one record or
/// one bucket chain).
pub(super) fn blobs(file: &[u8]) -> Result<(Records, Vec<String>), String> {
    if file.len() < 512 {
        return Err(format!(
            "file of {} bytes is too small for a BerkeleyDB database",
            file.len()
        ));
    }
    let big_endian = match (
        u32::from_le_bytes([file[12], file[13], file[14], file[15]]),
        u32::from_be_bytes([file[12], file[13], file[14], file[15]]),
    ) {
        (HASH_MAGIC, _) => false,
        (_, HASH_MAGIC) => true,
        _ => return Err("not a BerkeleyDB hash database (bad magic)".into()),
    };
    let mut db = Db {
        file,
        big_endian,
        page_size: 0,
        last_page: 0,
    };
    let meta = &file[..512];
    let version = db.u32_at(meta, 16).unwrap_or(0);
    if !(8..=10).contains(&version) {
        return Err(format!("unsupported BerkeleyDB hash version {version}"));
    }
    if meta[25] != P_HASHMETA {
        return Err(format!("meta page has type {}", meta[25]));
    }
    let page_size = db.u32_at(meta, 20).unwrap_or(0) as usize;
    if !page_size.is_power_of_two() || !(512..=65536).contains(&page_size) {
        return Err(format!("bad page size {page_size}"));
    }
    db.page_size = page_size;
    let pages_in_file = (file.len() / page_size) as u32;
    let last_page = db.u32_at(meta, 32).unwrap_or(0);
    // Never trust the meta page beyond what the file holds.
    db.last_page = last_page.min(pages_in_file.saturating_sub(1));
    let max_bucket = db.u32_at(meta, 72).unwrap_or(0);
    if max_bucket > db.last_page {
        return Err(format!(
            "meta page claims {max_bucket} buckets in {} pages",
            db.last_page
        ));
    }
    let mut spares = [0u32; 32];
    for (i, s) in spares.iter_mut().enumerate() {
        *s = db.u32_at(meta, 96 + 4 * i).unwrap_or(0);
    }
    let mut problems = Vec::new();
    if last_page > db.last_page {
        problems.push(format!(
            "the file is truncated: the meta page counts {} pages, the file holds {pages_in_file}",
            last_page as u64 + 1
        ));
    }
    let mut w = Walker {
        visited: vec![false; db.last_page as usize + 1],
        db,
        budget: file.len().saturating_mul(2).saturating_add(1 << 20),
    };
    let mut out = Vec::new();
    for bucket in 0..=max_bucket {
        // bdb's split points: bucket b lives at page b + spares[log2(b)+1].
        let bits = (32 - bucket.leading_zeros()) as usize;
        let Some(mut pgno) = bucket.checked_add(spares[bits.min(31)]) else {
            problems.push(format!("bucket {bucket}: bad split-point table"));
            continue;
        };
        while pgno != 0 {
            let page = match w.visit(pgno) {
                Ok(p) => p,
                Err(e) => {
                    problems.push(format!("bucket {bucket}: {e}"));
                    break;
                }
            };
            if !matches!(page[25], P_HASH | P_HASH_UNSORTED) {
                problems.push(format!(
                    "bucket {bucket}: page {pgno} has type {}",
                    page[25]
                ));
                break;
            }
            let entries = w.db.u16_at(page, 20).unwrap_or(0);
            let max_entries = (page_size - PAGE_HEADER) / 2;
            if entries > max_entries {
                problems.push(format!(
                    "bucket {bucket}: page {pgno} claims {entries} items"
                ));
                break;
            }
            let mut idx = 0;
            while idx + 1 < entries {
                let koff =
                    w.db.u16_at(page, PAGE_HEADER + 2 * idx)
                        .unwrap_or(usize::MAX);
                let voff =
                    w.db.u16_at(page, PAGE_HEADER + 2 * idx + 2)
                        .unwrap_or(usize::MAX);
                // Items are laid out from the end of the page backwards: the
                // value ends where its key starts.
                if koff >= page_size || voff >= koff || voff < PAGE_HEADER + 2 * entries {
                    problems.push(format!(
                        "bucket {bucket}: page {pgno} item {idx} has bad offsets"
                    ));
                    idx += 2;
                    continue;
                }
                // rpm's keys are 4-byte instance numbers in the writer's byte
                // order (that of the file); anything else sorts last.
                let kend = if idx == 0 {
                    page_size
                } else {
                    w.db.u16_at(page, PAGE_HEADER + 2 * idx - 2).unwrap_or(0)
                };
                let key = match page.get(koff..kend) {
                    Some([H_KEYDATA, k @ ..]) if k.len() == 4 => {
                        w.db.u32_at(k, 0).unwrap_or(u32::MAX)
                    }
                    _ => u32::MAX,
                };
                match w.item(page, voff, koff - voff) {
                    Ok(Some(v)) => out.push((key, v)),
                    Ok(None) => {}
                    Err(e) => {
                        problems.push(format!("bucket {bucket}: page {pgno} item {idx}: {e}"))
                    }
                }
                idx += 2;
            }
            pgno = w.db.u32_at(page, 16).unwrap_or(0);
        }
    }
    out.sort_by_key(|&(k, _)| k);
    Ok((out, problems))
}

/// Read a BerkeleyDB `Packages` file.
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
    drop(file);
    let mut read = DbRead::default();
    let mut bad = 0usize;
    for (key, v) in values {
        // rpm keeps its next-instance counter under key 0: a 4-byte value.
        if key == 0 || v.len() <= 8 {
            continue;
        }
        match rpmhdr::parse_header(&v) {
            Ok(p) => read.packages.push(p),
            Err(e) => {
                bad += 1;
                if bad == 1 {
                    problems.push(format!("bad header: {e}"));
                }
            }
        }
    }
    if !problems.is_empty() || bad > 0 {
        let extra = problems.len().saturating_sub(1);
        read.error = Some(format!(
            "{path}: the BerkeleyDB database is damaged ({}{}); {} package(s) read, the list may be incomplete",
            problems.first().map(String::as_str).unwrap_or(""),
            if extra > 0 {
                format!(", and {extra} more problem(s)")
            } else {
                String::new()
            },
            read.packages.len()
        ));
    }
    read
}
