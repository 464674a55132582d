//! A small read-only qcow2 reader for what imago does not read: images with
//! zstd-compressed clusters (`compression_type=zstd`, qcow2 v3). Every header
//! number and table entry is checked before use; unallocated clusters read
//! from the backing source or as zeros.

use std::io::{self, Read};
use std::path::Path;
use std::sync::Mutex;

use crate::source::{RawFile, ReadAt, Source, check_bounds};

/// Most L1 entries we accept (covers 2 PiB of virtual disk at 64 KiB clusters).
const MAX_L1_ENTRIES: u64 = 32 << 20;
/// L2 tables kept in memory.
const L2_CACHE: usize = 32;

/// A qcow2 v3 image with zstd-compressed clusters.
pub struct Qcow2Zstd {
    file: RawFile,
    cluster_bits: u32,
    size: u64,
    l1: Vec<u64>,
    backing: Option<Source>,
    l2_cache: Mutex<Vec<(u64, std::sync::Arc<Vec<u64>>)>>,
}

fn bad(what: impl Into<String>) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("qcow2: {}", what.into()),
    )
}

fn be32(h: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]])
}
fn be64(h: &[u8], o: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&h[o..o + 8]);
    u64::from_be_bytes(b)
}

impl Qcow2Zstd {
    /// Open `path`; `backing` supplies unallocated clusters.
    pub fn open(path: &Path, backing: Option<Source>) -> io::Result<Self> {
        let file = RawFile::open(path)?;
        let mut h = [0u8; 112];
        if file.size() < 112 {
            return Err(bad("header is truncated"));
        }
        file.read_exact_at(&mut h, 0)?;
        if &h[0..4] != b"QFI\xfb" || be32(&h, 4) != 3 {
            return Err(bad("not a qcow2 v3 image"));
        }
        let cluster_bits = be32(&h, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(bad(format!(
                "cluster_bits {cluster_bits} out of range 9..=21"
            )));
        }
        if be32(&h, 32) != 0 {
            return Err(bad("encrypted images are not supported"));
        }
        let incompatible = be64(&h, 72);
        // Bits: 0 dirty (fine read-only), 1 corrupt, 2 external data file,
        // 3 compression type, 4 extended L2.
        if incompatible & 0b10 != 0 {
            return Err(bad("the image is marked corrupt"));
        }
        if incompatible & 0b100 != 0 {
            return Err(bad("external data files are refused"));
        }
        if incompatible & !0b1001 != 0 {
            return Err(bad(format!(
                "unsupported incompatible features {incompatible:#x}"
            )));
        }
        let size = be64(&h, 24);
        let l1_size = u64::from(be32(&h, 36));
        let l1_offset = be64(&h, 40);
        let cluster = 1u64 << cluster_bits;
        let l2_entries = cluster / 8;
        let needed = size.div_ceil(cluster).div_ceil(l2_entries);
        if l1_size > MAX_L1_ENTRIES || l1_size < needed {
            return Err(bad(format!(
                "L1 table of {l1_size} entries does not fit a {size}-byte disk"
            )));
        }
        check_bounds(l1_offset, (l1_size * 8) as usize, file.size())
            .map_err(|_| bad("L1 table lies past the end of the file"))?;
        let mut raw = vec![0u8; (l1_size * 8) as usize];
        file.read_exact_at(&mut raw, l1_offset)?;
        let l1 = raw.chunks_exact(8).map(|c| be64(c, 0)).collect();
        Ok(Qcow2Zstd {
            file,
            cluster_bits,
            size,
            l1,
            backing,
            l2_cache: Mutex::new(Vec::new()),
        })
    }

    fn cluster(&self) -> u64 {
        1u64 << self.cluster_bits
    }

    fn l2_table(&self, offset: u64) -> io::Result<std::sync::Arc<Vec<u64>>> {
        if let Ok(c) = self.l2_cache.lock()
            && let Some((_, t)) = c.iter().find(|(o, _)| *o == offset)
        {
            return Ok(t.clone());
        }
        let cluster = self.cluster();
        if !offset.is_multiple_of(cluster) {
            return Err(bad(format!("unaligned L2 table at {offset}")));
        }
        check_bounds(offset, cluster as usize, self.file.size()).map_err(|_| {
            bad(format!(
                "L2 table at {offset} lies past the end of the file"
            ))
        })?;
        let mut raw = vec![0u8; cluster as usize];
        self.file.read_exact_at(&mut raw, offset)?;
        let table =
            std::sync::Arc::new(raw.chunks_exact(8).map(|c| be64(c, 0)).collect::<Vec<_>>());
        if let Ok(mut c) = self.l2_cache.lock() {
            if c.len() >= L2_CACHE {
                c.remove(0);
            }
            c.push((offset, table.clone()));
        }
        Ok(table)
    }

    /// Read the guest cluster `index` (whole) into `out`.
    fn read_cluster(&self, index: u64, out: &mut [u8]) -> io::Result<()> {
        let cluster = self.cluster();
        let l2_entries = cluster / 8;
        let l1_index = (index / l2_entries) as usize;
        let l1e = self.l1.get(l1_index).copied().unwrap_or(0);
        let l2_offset = l1e & 0x00ff_ffff_ffff_fe00;
        let entry = if l2_offset == 0 {
            0
        } else {
            self.l2_table(l2_offset)?[(index % l2_entries) as usize]
        };
        let guest = index * cluster;
        if entry & (1 << 62) != 0 {
            // Compressed: offset in the low x bits, extra sectors above.
            let x = 62 - (self.cluster_bits - 8);
            let host = entry & ((1u64 << x) - 1);
            let sectors = (entry & ((1u64 << 62) - 1)) >> x;
            let len = (sectors + 1) * 512 - (host % 512);
            let len = len.min(self.file.size().saturating_sub(host));
            check_bounds(host, len as usize, self.file.size()).map_err(|_| {
                bad(format!(
                    "compressed cluster at {host} lies past the end of the file"
                ))
            })?;
            let mut comp = vec![0u8; len as usize];
            self.file.read_exact_at(&mut comp, host)?;
            let mut dec = zstd::stream::read::Decoder::new(&comp[..])
                .map_err(|e| bad(format!("zstd: {e}")))?
                .single_frame();
            dec.read_exact(out)
                .map_err(|e| bad(format!("compressed cluster for guest offset {guest}: {e}")))?;
            return Ok(());
        }
        let host = entry & 0x00ff_ffff_ffff_fe00;
        if entry & 1 != 0 {
            out.fill(0);
            return Ok(());
        }
        if host == 0 {
            return match &self.backing {
                Some(b) if guest < b.size() => {
                    let n = (out.len() as u64).min(b.size() - guest) as usize;
                    b.read_exact_at(&mut out[..n], guest)?;
                    out[n..].fill(0);
                    Ok(())
                }
                _ => {
                    out.fill(0);
                    Ok(())
                }
            };
        }
        if host % cluster != 0 {
            return Err(bad(format!("unaligned data cluster at {host}")));
        }
        check_bounds(host, out.len(), self.file.size()).map_err(|_| {
            bad(format!(
                "data cluster at {host} lies past the end of the file"
            ))
        })?;
        self.file.read_exact_at(out, host)
    }
}

impl ReadAt for Qcow2Zstd {
    fn size(&self) -> u64 {
        self.size
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_bounds(offset, buf.len(), self.size)?;
        let cluster = self.cluster();
        let mut scratch = vec![0u8; cluster as usize];
        let mut done = 0usize;
        while done < buf.len() {
            let pos = offset + done as u64;
            let index = pos / cluster;
            let within = (pos % cluster) as usize;
            let n = (buf.len() - done).min(cluster as usize - within);
            self.read_cluster(index, &mut scratch)?;
            buf[done..done + n].copy_from_slice(&scratch[within..within + n]);
            done += n;
        }
        Ok(())
    }
}
