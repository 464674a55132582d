//! FAT12/16/32 (the EFI system partition), read-only, with long file names.
//! Small enough to write ourselves, and every on-disk number is checked:
//! cluster chains are bounded by the cluster count, so a loop ends.

use std::io::Read;
use std::sync::Mutex;

use super::{DirEntry, FileKind, FileSystem, FsError, Metadata};
use crate::source::Source;

/// Largest FAT we load into memory (FAT32 with 4 M clusters).
const MAX_FAT_BYTES: u64 = 16 << 20;
/// Most entries in one directory.
const MAX_DIR_ENTRIES: usize = 65_536;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Fat12,
    Fat16,
    Fat32,
}

/// A FAT filesystem.
pub struct Vfat {
    src: Source,
    kind: Kind,
    cluster_bytes: u64,
    data_start: u64,
    clusters: u32,
    /// FAT12/16 fixed root directory: (offset, bytes).
    root_region: Option<(u64, u64)>,
    root_cluster: u32,
    fat: Vec<u8>,
    label: Option<String>,
    cache: Mutex<Option<(Vec<u8>, Vec<Entry>)>>,
}

#[derive(Clone, Debug)]
struct Entry {
    name: String,
    dir: bool,
    cluster: u32,
    size: u32,
}

fn le16(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn corrupt(what: &str) -> FsError {
    FsError::Corrupt(format!("vfat: {what}"))
}

impl Vfat {
    /// Open the FAT filesystem on `src`.
    pub fn open(src: Source) -> Result<Self, FsError> {
        let mut bs = [0u8; 512];
        src.read_exact_at(&mut bs, 0)?;
        let bps = u64::from(le16(&bs, 11));
        let spc = u64::from(bs[13]);
        let reserved = u64::from(le16(&bs, 14));
        let nfats = u64::from(bs[16]);
        let root_entries = u64::from(le16(&bs, 17));
        let total = if le16(&bs, 19) != 0 {
            u64::from(le16(&bs, 19))
        } else {
            u64::from(le32(&bs, 32))
        };
        let fat_sectors = if le16(&bs, 22) != 0 {
            u64::from(le16(&bs, 22))
        } else {
            u64::from(le32(&bs, 36))
        };
        if !bps.is_power_of_two() || !(512..=4096).contains(&bps) {
            return Err(corrupt(&format!("bytes per sector {bps}")));
        }
        if spc == 0 || !spc.is_power_of_two() || nfats == 0 || reserved == 0 || fat_sectors == 0 {
            return Err(corrupt("boot sector geometry is invalid"));
        }
        let root_bytes = root_entries * 32;
        let root_sectors = root_bytes.div_ceil(bps);
        let meta = reserved + nfats * fat_sectors + root_sectors;
        if total <= meta || total.saturating_mul(bps) > src.size().saturating_add(bps) {
            return Err(corrupt("sector counts exceed the volume"));
        }
        let clusters = (total - meta) / spc;
        let kind = if clusters < 4085 {
            Kind::Fat12
        } else if clusters < 65525 {
            Kind::Fat16
        } else {
            Kind::Fat32
        };
        let clusters = u32::try_from(clusters).map_err(|_| corrupt("too many clusters"))?;
        let fat_bytes = fat_sectors * bps;
        let needed = match kind {
            Kind::Fat12 => (u64::from(clusters) + 2) * 3 / 2 + 1,
            Kind::Fat16 => (u64::from(clusters) + 2) * 2,
            Kind::Fat32 => (u64::from(clusters) + 2) * 4,
        };
        let load = fat_bytes.min(needed);
        if load > MAX_FAT_BYTES {
            return Err(FsError::Limit(format!("vfat: FAT of {load} bytes")));
        }
        let mut fat = vec![0u8; load as usize];
        src.read_exact_at(&mut fat, reserved * bps)?;
        let (label_at, root_region, root_cluster) = match kind {
            Kind::Fat32 => (71, None, le32(&bs, 44)),
            _ => (
                43,
                Some(((reserved + nfats * fat_sectors) * bps, root_bytes)),
                0,
            ),
        };
        let label = std::str::from_utf8(&bs[label_at..label_at + 11])
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty() && s != "NO NAME");
        Ok(Vfat {
            src,
            kind,
            cluster_bytes: spc * bps,
            data_start: meta * bps,
            clusters,
            root_region,
            root_cluster,
            fat,
            label,
            cache: Mutex::new(None),
        })
    }

    fn next_cluster(&self, c: u32) -> Option<u32> {
        let c = c as usize;
        let v = match self.kind {
            Kind::Fat12 => {
                let o = c + c / 2;
                let raw = u16::from_le_bytes([*self.fat.get(o)?, *self.fat.get(o + 1)?]);
                let v = if c.is_multiple_of(2) {
                    raw & 0x0fff
                } else {
                    raw >> 4
                };
                if v >= 0xff8 {
                    return None;
                }
                u32::from(v)
            }
            Kind::Fat16 => {
                let v = u16::from_le_bytes([*self.fat.get(c * 2)?, *self.fat.get(c * 2 + 1)?]);
                if v >= 0xfff8 {
                    return None;
                }
                u32::from(v)
            }
            Kind::Fat32 => {
                let b = self.fat.get(c * 4..c * 4 + 4)?;
                let v = le32(b, 0) & 0x0fff_ffff;
                if v >= 0x0fff_fff8 {
                    return None;
                }
                v
            }
        };
        (v >= 2 && v < self.clusters + 2).then_some(v)
    }

    /// The cluster chain from `first`, bounded by the cluster count.
    fn chain(&self, first: u32) -> Result<Vec<u32>, FsError> {
        let mut out = Vec::new();
        let mut c = first;
        if c < 2 || c >= self.clusters + 2 {
            return Ok(out);
        }
        loop {
            out.push(c);
            if out.len() > self.clusters as usize {
                return Err(corrupt(&format!("cluster chain from {first} loops")));
            }
            match self.next_cluster(c) {
                Some(n) => c = n,
                None => break,
            }
        }
        Ok(out)
    }

    fn cluster_offset(&self, c: u32) -> u64 {
        self.data_start + u64::from(c - 2) * self.cluster_bytes
    }

    fn read_dir_raw(&self, cluster: Option<u32>) -> Result<Vec<Entry>, FsError> {
        let mut data = Vec::new();
        match (cluster, self.root_region) {
            (None, Some((off, len))) => {
                data.resize(len as usize, 0);
                self.src.read_exact_at(&mut data, off)?;
            }
            (c, _) => {
                let first = c.unwrap_or(self.root_cluster);
                for cl in self.chain(first)? {
                    let start = data.len();
                    if start as u64 + self.cluster_bytes > (MAX_DIR_ENTRIES as u64) * 32 {
                        return Err(FsError::Limit("vfat: directory too large".into()));
                    }
                    data.resize(start + self.cluster_bytes as usize, 0);
                    self.src
                        .read_exact_at(&mut data[start..], self.cluster_offset(cl))?;
                }
            }
        }
        let mut out = Vec::new();
        let mut lfn: Vec<(u8, [u16; 13])> = Vec::new();
        for e in data.chunks_exact(32) {
            match e[0] {
                0x00 => break,
                0xe5 => {
                    lfn.clear();
                    continue;
                }
                _ => {}
            }
            let attr = e[11];
            if attr == 0x0f {
                let mut units = [0u16; 13];
                for (i, o) in [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30]
                    .iter()
                    .enumerate()
                {
                    units[i] = le16(e, *o);
                }
                lfn.push((e[0] & 0x1f, units));
                continue;
            }
            if attr & 0x08 != 0 {
                lfn.clear();
                continue;
            }
            let short = {
                let base = String::from_utf8_lossy(&e[0..8]).trim_end().to_owned();
                let ext = String::from_utf8_lossy(&e[8..11]).trim_end().to_owned();
                let base = if e[12] & 0x08 != 0 {
                    base.to_lowercase()
                } else {
                    base
                };
                let ext = if e[12] & 0x10 != 0 {
                    ext.to_lowercase()
                } else {
                    ext
                };
                if ext.is_empty() {
                    base
                } else {
                    format!("{base}.{ext}")
                }
            };
            let name = if lfn.is_empty() {
                short
            } else {
                lfn.sort_by_key(|(n, _)| *n);
                let units: Vec<u16> = lfn
                    .iter()
                    .flat_map(|(_, u)| u.iter().copied())
                    .take_while(|&u| u != 0 && u != 0xffff)
                    .collect();
                lfn.clear();
                String::from_utf16_lossy(&units)
            };
            if name == "." || name == ".." {
                continue;
            }
            let cluster = (u32::from(le16(e, 20)) << 16) | u32::from(le16(e, 26));
            out.push(Entry {
                name,
                dir: attr & 0x10 != 0,
                cluster,
                size: le32(e, 28),
            });
            if out.len() > MAX_DIR_ENTRIES {
                return Err(FsError::Limit("vfat: directory too large".into()));
            }
        }
        Ok(out)
    }

    /// Walk `path`; `None` for the root.
    fn lookup(&self, path: &[u8]) -> Result<Option<Entry>, FsError> {
        let mut cur: Option<Entry> = None;
        for comp in path
            .split(|&b| b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
        {
            let dir = match &cur {
                None => None,
                Some(e) if e.dir => Some(e.cluster),
                Some(_) => return Err(FsError::NotADirectory),
            };
            let entries = self.dir_cached(path_key(path, comp), dir)?;
            let want = String::from_utf8_lossy(comp);
            cur = Some(
                entries
                    .into_iter()
                    .find(|e| e.name.eq_ignore_ascii_case(&want))
                    .ok_or(FsError::NotFound)?,
            );
        }
        Ok(cur)
    }

    /// [`Metadata::ino`] of the root: its first cluster on FAT32; the fixed
    /// root area of FAT12/16 has none, so a value no cluster number takes.
    fn root_identity(&self) -> u64 {
        match self.root_region {
            Some(_) => 1 << 32,
            None => u64::from(self.root_cluster),
        }
    }

    fn dir_cached(&self, key: Vec<u8>, cluster: Option<u32>) -> Result<Vec<Entry>, FsError> {
        if let Ok(c) = self.cache.lock()
            && let Some((k, v)) = c.as_ref()
            && *k == key
        {
            return Ok(v.clone());
        }
        let v = self.read_dir_raw(cluster)?;
        if let Ok(mut c) = self.cache.lock() {
            *c = Some((key, v.clone()));
        }
        Ok(v)
    }
}

/// Cache key: the directory part of `path` up to `comp`.
fn path_key(path: &[u8], comp: &[u8]) -> Vec<u8> {
    let end = comp.as_ptr() as usize - path.as_ptr() as usize;
    path[..end].to_vec()
}

impl FileSystem for Vfat {
    fn type_name(&self) -> &'static str {
        "vfat"
    }
    fn uuid(&self) -> Option<[u8; 16]> {
        None
    }
    fn label(&self) -> Option<String> {
        self.label.clone()
    }
    fn lstat(&self, path: &[u8]) -> Result<Option<Metadata>, FsError> {
        match self.lookup(path) {
            Ok(None) => Ok(Some(Metadata {
                kind: FileKind::Dir,
                size: 0,
                mode: 0o755,
                uid: 0,
                gid: 0,
                ino: self.root_identity(),
            })),
            Ok(Some(e)) => Ok(Some(Metadata {
                kind: if e.dir { FileKind::Dir } else { FileKind::File },
                size: if e.dir { 0 } else { u64::from(e.size) },
                mode: if e.dir { 0o755 } else { 0o644 },
                uid: 0,
                gid: 0,
                // A directory is its cluster chain: a subdirectory entry
                // pointing at an ancestor's first cluster is that ancestor
                // again (a loop). 0 (an empty file) means unknown.
                ino: u64::from(e.cluster),
            })),
            Err(FsError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }
    fn read_dir(&self, path: &[u8]) -> Result<Vec<DirEntry>, FsError> {
        let cluster = match self.lookup(path)? {
            None => None,
            Some(e) if e.dir => Some(e.cluster),
            Some(_) => return Err(FsError::NotADirectory),
        };
        Ok(self
            .read_dir_raw(cluster)?
            .into_iter()
            .map(|e| DirEntry {
                name: e.name.into_bytes(),
                kind: if e.dir { FileKind::Dir } else { FileKind::File },
            })
            .collect())
    }
    fn read_link(&self, _path: &[u8]) -> Result<Vec<u8>, FsError> {
        Err(FsError::WrongKind)
    }
    fn open(&self, path: &[u8]) -> Result<Box<dyn Read + Send + '_>, FsError> {
        match self.lookup(path)? {
            Some(e) if !e.dir => {
                let chain = self.chain(e.cluster)?;
                let need = u64::from(e.size).div_ceil(self.cluster_bytes);
                if (chain.len() as u64) < need {
                    return Err(corrupt(&format!(
                        "file {} is shorter than its size",
                        String::from_utf8_lossy(path)
                    )));
                }
                Ok(Box::new(FatReader {
                    fs: self,
                    chain,
                    pos: 0,
                    size: u64::from(e.size),
                }))
            }
            _ => Err(FsError::WrongKind),
        }
    }
}

struct FatReader<'a> {
    fs: &'a Vfat,
    chain: Vec<u32>,
    pos: u64,
    size: u64,
}

impl Read for FatReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let cb = self.fs.cluster_bytes;
        let idx = (self.pos / cb) as usize;
        let within = self.pos % cb;
        let n = (buf.len() as u64)
            .min(cb - within)
            .min(self.size - self.pos) as usize;
        let Some(&cl) = self.chain.get(idx) else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "vfat chain ends early",
            ));
        };
        self.fs
            .src
            .read_exact_at(&mut buf[..n], self.fs.cluster_offset(cl) + within)?;
        self.pos += n as u64;
        Ok(n)
    }
}
