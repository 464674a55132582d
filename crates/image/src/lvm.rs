//! LVM2 physical volumes: list the logical volumes on one PV and expose each
//! linear LV as a byte source (via lamlvm). Multi-PV volume groups are read
//! as far as the LV's extents live on the PV we have.

use std::io;
use std::sync::{Arc, Mutex};

use embedded_io::{ErrorType, Read as EmbRead, Seek as EmbSeek, SeekFrom};
use lamlvm::{Lvm2, OwnedLvReader};

use crate::source::{ReadAt, Source, check_bounds, read_vec};

/// True if `src` carries an LVM2 PV label in one of its first four sectors.
pub fn probe(src: &dyn ReadAt) -> bool {
    if src.size() < 2048 {
        return false;
    }
    let Ok(head) = read_vec(src, 0, 2048) else {
        return false;
    };
    (0..4).any(|s| {
        let sec = &head[s * 512..(s + 1) * 512];
        &sec[0..8] == b"LABELONE" && &sec[24..32] == b"LVM2 001"
    })
}

/// One logical volume found on a PV.
pub struct LogicalVolume {
    /// Volume group name.
    pub vg: String,
    /// LV name.
    pub name: String,
    /// Its bytes.
    pub source: Source,
}

/// A `ReadAt` seen through embedded-io's `Read + Seek`, as lamlvm wants.
struct Cursor {
    src: Source,
    pos: u64,
}

#[derive(Debug)]
struct CursorError(io::ErrorKind);

impl embedded_io::Error for CursorError {
    fn kind(&self) -> embedded_io::ErrorKind {
        match self.0 {
            io::ErrorKind::UnexpectedEof => embedded_io::ErrorKind::Other,
            _ => embedded_io::ErrorKind::Other,
        }
    }
}

impl ErrorType for Cursor {
    type Error = CursorError;
}

impl EmbRead for Cursor {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let size = self.src.size();
        if self.pos >= size {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(size - self.pos) as usize;
        self.src
            .read_exact_at(&mut buf[..n], self.pos)
            .map_err(|e| CursorError(e.kind()))?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl EmbSeek for Cursor {
    fn seek(&mut self, pos: SeekFrom) -> Result<u64, Self::Error> {
        let size = self.src.size() as i128;
        let new = match pos {
            SeekFrom::Start(p) => i128::from(p),
            SeekFrom::End(d) => size + i128::from(d),
            SeekFrom::Current(d) => i128::from(self.pos) + i128::from(d),
        };
        if new < 0 || new > i128::from(u64::MAX) {
            return Err(CursorError(io::ErrorKind::InvalidInput));
        }
        self.pos = new as u64;
        Ok(self.pos)
    }
}

/// Open the PV on `pv` and return its logical volumes. Errors are returned
/// as text for the inspection's notes.
pub fn logical_volumes(pv: &Source) -> Result<Vec<LogicalVolume>, String> {
    let lvm = Lvm2::open(Cursor {
        src: pv.clone(),
        pos: 0,
    })
    .map_err(|e| format!("LVM2 metadata: {e:?}"))?;
    let vg = lvm.vg_name().to_owned();
    let names: Vec<String> = lvm.lvs().map(|lv| lv.name().to_owned()).collect();
    let mut out = Vec::new();
    for name in names {
        let reader = lvm
            .open_lv_owned_by_name(
                &name,
                Cursor {
                    src: pv.clone(),
                    pos: 0,
                },
            )
            .map_err(|e| format!("LV {vg}/{name}: {e:?}"))?;
        let Some(reader) = reader else { continue };
        let len = reader.len();
        out.push(LogicalVolume {
            vg: vg.clone(),
            name,
            source: Arc::new(LvSource {
                reader: Mutex::new(reader),
                len,
            }),
        });
    }
    Ok(out)
}

struct LvSource {
    reader: Mutex<OwnedLvReader<Cursor>>,
    len: u64,
}

impl ReadAt for LvSource {
    fn size(&self) -> u64 {
        self.len
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_bounds(offset, buf.len(), self.len)?;
        let mut r = self
            .reader
            .lock()
            .map_err(|_| io::Error::other("LV reader lock poisoned"))?;
        r.seek(SeekFrom::Start(offset))
            .map_err(|e| io::Error::other(format!("LV seek: {e:?}")))?;
        let mut done = 0;
        while done < buf.len() {
            let n = r
                .read(&mut buf[done..])
                .map_err(|e| io::Error::other(format!("LV read: {e:?}")))?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "LV read past its end",
                ));
            }
            done += n;
        }
        Ok(())
    }
}
