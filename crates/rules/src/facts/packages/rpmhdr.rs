//! RPM header blobs as stored in every rpmdb backend: no 8-byte magic, then
//! big-endian `il` (index entries) and `dl` (data bytes), `il` 16-byte
//! entries (`tag`, `type`, `offset`, `count`), then `dl` bytes of data.
//! Everything is bounds-checked; a bad blob is an `Err`, never a panic.

use super::Package;

/// rpm's own limits (`HEADER_TAGS_MAX`, `HEADER_DATA_MAX`).
pub const MAX_INDEX_ENTRIES: u32 = 0xffff;
/// Largest data section accepted (256 MiB).
pub const MAX_DATA_LEN: u32 = 0x0fff_ffff;
/// Most `PROVIDENAME` strings kept per package.
const MAX_PROVIDES: u32 = 100_000;

const TAG_NAME: u32 = 1000;
const TAG_VERSION: u32 = 1001;
const TAG_RELEASE: u32 = 1002;
const TAG_EPOCH: u32 = 1003;
const TAG_ARCH: u32 = 1022;
const TAG_SOURCERPM: u32 = 1044;
const TAG_PROVIDENAME: u32 = 1047;

const TYPE_INT32: u32 = 4;
const TYPE_STRING: u32 = 6;
const TYPE_STRING_ARRAY: u32 = 8;
const TYPE_I18NSTRING: u32 = 9;

fn be32(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

#[derive(Clone, Copy)]
struct Entry {
    ty: u32,
    offset: u32,
    count: u32,
}

struct Header<'a> {
    data: &'a [u8],
    found: [Option<Entry>; 7],
}

const WANTED: [u32; 7] = [
    TAG_NAME,
    TAG_VERSION,
    TAG_RELEASE,
    TAG_EPOCH,
    TAG_ARCH,
    TAG_SOURCERPM,
    TAG_PROVIDENAME,
];

impl<'a> Header<'a> {
    fn parse(blob: &'a [u8]) -> Result<Self, String> {
        if blob.len() < 8 {
            return Err(format!("header blob of {} bytes is too short", blob.len()));
        }
        let il = be32(blob, 0).unwrap_or(0);
        let dl = be32(blob, 4).unwrap_or(0);
        if il == 0 || il > MAX_INDEX_ENTRIES {
            return Err(format!(
                "header has {il} index entries (limit {MAX_INDEX_ENTRIES})"
            ));
        }
        if dl > MAX_DATA_LEN {
            return Err(format!("header data length {dl} exceeds {MAX_DATA_LEN}"));
        }
        let index_end = 8 + 16 * il as usize;
        let need = index_end + dl as usize;
        if blob.len() < need {
            return Err(format!(
                "header blob of {} bytes is truncated (needs {need})",
                blob.len()
            ));
        }
        let index = &blob[8..index_end];
        let data = &blob[index_end..need];
        let mut found = [None; 7];
        for e in index.chunks_exact(16) {
            let tag = be32(e, 0).unwrap_or(0);
            let Some(slot) = WANTED.iter().position(|&t| t == tag) else {
                continue;
            };
            if found[slot].is_none() {
                found[slot] = Some(Entry {
                    ty: be32(e, 4).unwrap_or(0),
                    offset: be32(e, 8).unwrap_or(0),
                    count: be32(e, 12).unwrap_or(0),
                });
            }
        }
        Ok(Header { data, found })
    }

    fn entry(&self, tag: u32) -> Option<Entry> {
        WANTED
            .iter()
            .position(|&t| t == tag)
            .and_then(|i| self.found[i])
    }

    /// The NUL-terminated string at `off`, and the offset after its NUL.
    fn cstr(&self, off: usize) -> Result<(&'a [u8], usize), String> {
        let rest = self.data.get(off..).ok_or_else(|| {
            format!(
                "string offset {off} beyond the {}-byte data",
                self.data.len()
            )
        })?;
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| format!("string at offset {off} is not NUL-terminated"))?;
        Ok((&rest[..end], off + end + 1))
    }

    /// A string tag (`STRING`, or the first of a `STRING_ARRAY` /
    /// `I18NSTRING`); `Ok(None)` if absent.
    fn string(&self, tag: u32) -> Result<Option<String>, String> {
        let Some(e) = self.entry(tag) else {
            return Ok(None);
        };
        if !matches!(e.ty, TYPE_STRING | TYPE_STRING_ARRAY | TYPE_I18NSTRING) {
            return Err(format!("tag {tag} has type {} instead of a string", e.ty));
        }
        if e.count == 0 {
            return Err(format!("tag {tag} has no value"));
        }
        let (s, _) = self
            .cstr(e.offset as usize)
            .map_err(|m| format!("tag {tag}: {m}"))?;
        Ok(Some(String::from_utf8_lossy(s).into_owned()))
    }

    /// All strings of a `STRING_ARRAY` tag; empty if absent.
    fn strings(&self, tag: u32) -> Result<Vec<String>, String> {
        let Some(e) = self.entry(tag) else {
            return Ok(Vec::new());
        };
        if !matches!(e.ty, TYPE_STRING | TYPE_STRING_ARRAY | TYPE_I18NSTRING) {
            return Err(format!(
                "tag {tag} has type {} instead of a string array",
                e.ty
            ));
        }
        // Each string takes at least its NUL: a count above the data left
        // is a lie.
        let left = self.data.len().saturating_sub(e.offset as usize);
        if e.count as usize > left || e.count > MAX_PROVIDES {
            return Err(format!("tag {tag} claims {} strings", e.count));
        }
        let mut off = e.offset as usize;
        let mut out = Vec::with_capacity(e.count as usize);
        for _ in 0..e.count {
            let (s, next) = self.cstr(off).map_err(|m| format!("tag {tag}: {m}"))?;
            out.push(String::from_utf8_lossy(s).into_owned());
            off = next;
        }
        Ok(out)
    }

    /// The first value of an `INT32` tag; `Ok(None)` if absent.
    fn int32(&self, tag: u32) -> Result<Option<u32>, String> {
        let Some(e) = self.entry(tag) else {
            return Ok(None);
        };
        if e.ty != TYPE_INT32 || e.count == 0 {
            return Err(format!(
                "tag {tag} has type {} count {} instead of an INT32",
                e.ty, e.count
            ));
        }
        be32(self.data, e.offset as usize).map(Some).ok_or_else(|| {
            format!(
                "tag {tag}: offset {} beyond the {}-byte data",
                e.offset,
                self.data.len()
            )
        })
    }
}

/// `gdb-12.1-1.el9.src.rpm` → `gdb`.
fn source_name(srpm: &str) -> String {
    let base = srpm
        .strip_suffix(".src.rpm")
        .or_else(|| srpm.strip_suffix(".nosrc.rpm"))
        .unwrap_or(srpm);
    let mut parts = base.rsplitn(3, '-');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_release), Some(_version), Some(name)) if !name.is_empty() => name.to_owned(),
        _ => base.to_owned(),
    }
}

/// Parse one header blob (as stored in the rpmdb: without the 8-byte header
/// magic) into a package. `NAME`, `VERSION` and `RELEASE` must be valid
/// NUL-terminated strings inside the data; `ARCH` may be absent (as for
/// `gpg-pubkey`); `EPOCH`, if present, must be a valid `INT32`.
pub fn parse_header(blob: &[u8]) -> Result<Package, String> {
    let h = Header::parse(blob)?;
    let name = h.string(TAG_NAME)?.ok_or("header has no NAME")?;
    if name.is_empty() {
        return Err("header has an empty NAME".into());
    }
    let version = h.string(TAG_VERSION)?.ok_or("header has no VERSION")?;
    let release = h.string(TAG_RELEASE)?.ok_or("header has no RELEASE")?;
    let epoch = h.int32(TAG_EPOCH)?;
    let arch = h.string(TAG_ARCH)?.unwrap_or_default();
    // Optional extras: a broken one is dropped, not fatal.
    let source = h
        .string(TAG_SOURCERPM)
        .ok()
        .flatten()
        .map(|s| source_name(&s));
    let provides = h.strings(TAG_PROVIDENAME).unwrap_or_default();
    let version = match epoch {
        Some(e) if e != 0 => format!("{e}:{version}-{release}"),
        _ => format!("{version}-{release}"),
    };
    Ok(Package {
        name,
        version,
        arch,
        state: "installed".into(),
        source,
        provides,
    })
}
