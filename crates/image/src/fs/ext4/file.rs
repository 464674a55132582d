//! Streaming file contents. Nothing is allocated by `i_size`: data is read
//! on demand run by run, holes and uninitialized extents are produced as
//! zeros, and the stream ends exactly at `i_size`.

use std::io::{self, Read, Seek, SeekFrom};

use super::inode::{FLAG_INLINE_DATA, I_BLOCK_LEN, Inode};
use super::map::Run;
use super::{Ext4, FsError};

/// Where the bytes come from.
enum Content {
    /// Inline data (at most 60 bytes + the in-inode xattr value).
    Inline(Vec<u8>),
    /// Extent tree or block map.
    Mapped,
}

/// A regular file's contents: `Read` yields exactly `i_size` bytes (holes
/// and uninitialized extents as zeros); `Seek` moves anywhere (positions past
/// the end read nothing).
pub struct Ext4File<'a> {
    fs: &'a Ext4,
    inode: Inode,
    content: Content,
    pos: u64,
    size: u64,
    /// The last mapped run (sequential reads reuse it).
    run: Option<Run>,
}

fn to_io(e: FsError) -> io::Error {
    match e {
        FsError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

impl<'a> Ext4File<'a> {
    pub(super) fn new(fs: &'a Ext4, inode: Inode) -> Result<Self, FsError> {
        inode.check_not_encrypted()?;
        let content = if inode.has_flag(FLAG_INLINE_DATA) {
            let (iblock, xattr) = inode.inline_parts()?;
            let mut data = Vec::with_capacity(I_BLOCK_LEN + xattr.len());
            data.extend_from_slice(iblock);
            data.extend_from_slice(xattr);
            Content::Inline(data)
        } else {
            Content::Mapped
        };
        let size = inode.size;
        Ok(Ext4File {
            fs,
            inode,
            content,
            pos: 0,
            size,
            run: None,
        })
    }

    /// The file size (`i_size`, untrusted: may be huge on a hostile image).
    pub fn size(&self) -> u64 {
        self.size
    }

    fn read_mapped(&mut self, buf: &mut [u8]) -> Result<usize, FsError> {
        let bs = self.fs.sb.block_size;
        let lblk = self.pos / bs;
        let off = self.pos % bs;
        let run = match self.run {
            Some(r) if r.lblk <= lblk && lblk < r.end() => r,
            _ => {
                let r = self.fs.map_block(&self.inode, lblk)?;
                self.run = Some(r);
                r
            }
        };
        // Bytes left in the run from pos (saturating: runs can be huge).
        let avail = (run.end() - lblk).saturating_mul(bs).saturating_sub(off);
        let n = usize::try_from(avail).map_or(buf.len(), |a| a.min(buf.len()));
        let out = &mut buf[..n];
        match run.phys {
            None => out.fill(0),
            Some(phys) => self.fs.read_data(phys + (lblk - run.lblk), off, out)?,
        }
        Ok(n)
    }
}

impl Read for Ext4File<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.size.saturating_sub(self.pos);
        if buf.is_empty() || left == 0 {
            return Ok(0);
        }
        let want = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
        let buf = &mut buf[..want];
        let n = match &self.content {
            Content::Inline(data) => {
                // Bytes past the inline data (a lying i_size) read as zeros.
                let start = usize::try_from(self.pos).unwrap_or(usize::MAX);
                let src = data.get(start..).unwrap_or(&[]);
                let k = src.len().min(buf.len());
                buf[..k].copy_from_slice(&src[..k]);
                buf[k..].fill(0);
                buf.len()
            }
            Content::Mapped => self.read_mapped(buf).map_err(to_io)?,
        };
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Ext4File<'_> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(n) => {
                self.pos = n;
                Ok(n)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek to a negative or overflowing position",
            )),
        }
    }
}
