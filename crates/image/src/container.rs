//! Disk image containers: raw files and qcow2 (v2/v3, zlib-compressed
//! clusters, backing chains) read through imago.
//!
//! Everything an image header names is untrusted. imago is asked to open
//! nothing implicitly; we open backing files ourselves, only when they stay
//! inside the top image's directory (or a directory the caller allows), with
//! a depth limit and a loop check. External data files are refused.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use imago::FormatAccess;
use imago::file::File as ImagoFile;
use imago::qcow2::Qcow2;
use imago::raw::Raw;

use crate::ImageError;
use crate::limits::MAX_BACKING_DEPTH;
use crate::source::{ChunkCache, RawFile, ReadAt, Source, check_bounds};

/// The container format of one layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A plain disk image.
    Raw,
    /// QEMU copy-on-write v2/v3.
    Qcow2,
}

impl Format {
    /// `raw` or `qcow2`, as `qemu-img` names it.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        }
    }
}

/// One layer of an opened image: the top file and each backing file.
#[derive(Clone, Debug)]
pub struct Layer {
    /// Host path of the layer.
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
}

/// An opened disk: its bytes and where they come from.
pub struct Disk {
    /// The guest-visible disk contents.
    pub source: Source,
    /// Top layer first, then each backing file.
    pub layers: Vec<Layer>,
}

/// Which backing files may be opened.
#[derive(Clone, Debug, Default)]
pub struct BackingPolicy {
    /// Directories (besides the top image's own) that backing files may live in.
    pub allowed_dirs: Vec<PathBuf>,
}

const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";

/// Sniff the container format from the first bytes. Formats we recognise
/// but cannot read are refused by name rather than misread as raw.
fn sniff(path: &Path) -> Result<Format, ImageError> {
    use std::io::Read;
    let mut head = [0u8; 512];
    let mut f = std::fs::File::open(path).map_err(|e| ImageError::io(path, e))?;
    let mut got = 0;
    while got < head.len() {
        match f.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => return Err(ImageError::io(path, e)),
        }
    }
    let head = &head[..got];
    if head.starts_with(QCOW2_MAGIC) {
        return Ok(Format::Qcow2);
    }
    let refuse = |name: &str| {
        Err(ImageError::Unsupported {
            path: path.to_owned(),
            what: format!(
                "{name} images are not supported; convert with `qemu-img convert -O qcow2 IN OUT`"
            ),
        })
    };
    if head.starts_with(b"KDMV") || head.starts_with(b"# Disk DescriptorFile") {
        return refuse("VMDK");
    }
    if head.starts_with(b"vhdxfile") {
        return refuse("VHDX");
    }
    if head.starts_with(b"conectix") {
        return refuse("VHD");
    }
    if head.starts_with(b"<<< ")
        && head.len() >= 0x44
        && head[0x40..0x44] == [0x7f, 0x10, 0xda, 0xbe]
    {
        return refuse("VDI");
    }
    if head.starts_with(b"QFI") {
        return refuse("qcow v1");
    }
    Ok(Format::Raw)
}

/// Read the qcow2 header fields imago would otherwise act on silently.
struct Qcow2HeaderFacts {
    version: u32,
    compression_type: u8,
    backing_name: Option<String>,
    backing_format: Option<String>,
}

fn qcow2_header_facts(path: &Path) -> Result<Qcow2HeaderFacts, ImageError> {
    let f = RawFile::open(path).map_err(|e| ImageError::io(path, e))?;
    // The header and its extensions live in the first cluster; 64 KiB is
    // enough for any extension list qemu writes.
    let len = (f.size() as usize).min(65536);
    let mut h = vec![0u8; len];
    f.read_exact_at(&mut h, 0)
        .map_err(|e| ImageError::io(path, e))?;
    if len < 72 {
        return Err(ImageError::corrupt(path, "qcow2 header is truncated"));
    }
    let be32 = |o: usize| u32::from_be_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let be64 = |o: usize| (u64::from(be32(o)) << 32) | u64::from(be32(o + 4));
    let version = be32(4);
    let mut compression_type = 0;
    let mut header_length = 72usize;
    if version >= 3 && len >= 104 {
        header_length = be32(100) as usize;
        if header_length > 104 && len > 104 {
            compression_type = h[104];
        }
    }
    let backing_offset = be64(8) as usize;
    let backing_size = be32(16) as usize;
    let backing_name = if backing_offset == 0 || backing_size == 0 {
        None
    } else {
        let end = backing_offset
            .checked_add(backing_size)
            .filter(|&e| e <= len && backing_size <= 1023)
            .ok_or_else(|| {
                ImageError::corrupt(
                    path,
                    "qcow2 backing file name lies outside the header cluster",
                )
            })?;
        Some(String::from_utf8_lossy(&h[backing_offset..end]).into_owned())
    };
    // Header extensions: (type, length, data padded to 8) until type 0.
    let mut backing_format = None;
    let mut at = header_length;
    while at + 8 <= len {
        let (kind, elen) = (be32(at), be32(at + 4) as usize);
        if kind == 0 {
            break;
        }
        let data = at + 8;
        let Some(end) = data.checked_add(elen).filter(|&e| e <= len) else {
            return Err(ImageError::corrupt(
                path,
                "qcow2 header extension runs past the header cluster",
            ));
        };
        // imago panics on a feature name table that is not whole 48-byte
        // entries (found by fuzzing): refuse it here, named.
        if kind == 0x6803_f857 && elen % 48 != 0 {
            return Err(ImageError::corrupt(
                path,
                &format!("qcow2 feature name table of {elen} bytes is not a multiple of 48"),
            ));
        }
        if kind == 0xe279_2aca {
            backing_format = Some(String::from_utf8_lossy(&h[data..end]).into_owned());
        }
        at = data + elen.div_ceil(8) * 8;
    }
    Ok(Qcow2HeaderFacts {
        version,
        compression_type,
        backing_name,
        backing_format,
    })
}

/// Open a disk image (raw or qcow2) read-only, following a qcow2 backing
/// chain under `policy`.
pub fn open_disk(path: &Path, policy: &BackingPolicy) -> Result<Disk, ImageError> {
    let mut layers = Vec::new();
    let top_dir = path
        .canonicalize()
        .map_err(|e| ImageError::io(path, e))?
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("/"));
    let mut allowed = vec![top_dir];
    for d in &policy.allowed_dirs {
        allowed.push(d.canonicalize().map_err(|e| ImageError::io(d, e))?);
    }
    let source: Source = match open_layer(path, None, &allowed, &mut layers)? {
        Opened::TopRaw => Arc::new(RawFile::open(path).map_err(|e| ImageError::io(path, e))?),
        Opened::Imago(access) => Arc::new(ChunkCache::new(Arc::new(Qcow2Source { access }))),
        Opened::Own(source) => Arc::new(ChunkCache::new(source)),
    };
    Ok(Disk { source, layers })
}

type Access = FormatAccess<ImagoFile>;

/// An opened layer.
enum Opened {
    /// The top layer is raw: read the file directly.
    TopRaw,
    /// A layer imago reads (and can use as another imago layer's backing).
    Imago(Access),
    /// A layer our own reader reads (zstd-compressed qcow2).
    Own(Source),
}

impl Opened {
    /// As a byte source, for our own reader's backing.
    fn into_source(self, path: &Path) -> Result<Source, ImageError> {
        match self {
            Opened::TopRaw => Ok(Arc::new(
                RawFile::open(path).map_err(|e| ImageError::io(path, e))?,
            )),
            Opened::Imago(access) => Ok(Arc::new(Qcow2Source { access })),
            Opened::Own(s) => Ok(s),
        }
    }
}

/// Open one layer, recursively opening its backing chain. Returns the format
/// and, for qcow2 layers or when called for a backing file, an imago access.
fn open_layer(
    path: &Path,
    declared: Option<Format>,
    allowed: &[PathBuf],
    layers: &mut Vec<Layer>,
) -> Result<Opened, ImageError> {
    let canonical = path.canonicalize().map_err(|e| ImageError::io(path, e))?;
    if layers.iter().any(|l| l.path == canonical) {
        return Err(ImageError::Unsafe {
            path: path.to_owned(),
            what: format!(
                "backing chain loops back to {} ({})",
                canonical.display(),
                chain_text(layers)
            ),
        });
    }
    if layers.len() > MAX_BACKING_DEPTH {
        return Err(ImageError::Unsafe {
            path: path.to_owned(),
            what: format!("backing chain deeper than {MAX_BACKING_DEPTH} layers"),
        });
    }
    let sniffed = sniff(&canonical)?;
    // A declared backing format wins over sniffing (a raw backing file whose
    // first bytes look like qcow2 must stay raw).
    let format = declared.unwrap_or(sniffed);
    layers.push(Layer {
        path: canonical.clone(),
        format,
    });
    let is_backing = layers.len() > 1;
    match format {
        Format::Raw => {
            if !is_backing {
                return Ok(Opened::TopRaw);
            }
            let raw = Raw::<ImagoFile>::open_path(&canonical, false)
                .map_err(|e| ImageError::io(&canonical, e))?;
            Ok(Opened::Imago(FormatAccess::new(raw)))
        }
        Format::Qcow2 => {
            let facts = qcow2_header_facts(&canonical)?;
            if facts.version < 2 || facts.version > 3 {
                return Err(ImageError::Unsupported {
                    path: canonical,
                    what: format!("qcow2 version {}", facts.version),
                });
            }
            if facts.compression_type > 1 {
                return Err(ImageError::Unsupported {
                    path: canonical,
                    what: format!("qcow2 compression type {}", facts.compression_type),
                });
            }
            if facts.compression_type == 1 {
                // zstd: imago refuses it, our own reader handles it.
                let backing = match &facts.backing_name {
                    None => None,
                    Some(name) => {
                        let backing_path = gate_backing(&canonical, name, allowed)?;
                        let declared =
                            declared_format(&canonical, facts.backing_format.as_deref())?;
                        let opened = open_layer(&backing_path, declared, allowed, layers)?;
                        Some(opened.into_source(&backing_path)?)
                    }
                };
                let own = crate::qcow2_zstd::Qcow2Zstd::open(&canonical, backing)
                    .map_err(|e| ImageError::corrupt(&canonical, &e.to_string()))?;
                return Ok(Opened::Own(Arc::new(own)));
            }
            // Defence in depth: a panic inside imago on a hostile header we
            // did not pre-validate becomes an error, not an abort.
            let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Qcow2::<ImagoFile>::open_path(&canonical, false)
            }))
            .map_err(|_| {
                ImageError::corrupt(&canonical, "qcow2 metadata is malformed (reader panicked)")
            })?;
            let mut qcow2 =
                opened.map_err(|e| ImageError::corrupt(&canonical, &format!("qcow2: {e}")))?;
            if qcow2.requires_external_data_file() {
                return Err(ImageError::Unsafe {
                    path: canonical,
                    what: format!(
                        "qcow2 uses an external data file ({}); refusing to read a host file the image names",
                        qcow2
                            .implicit_external_data_file()
                            .map(String::as_str)
                            .unwrap_or("unnamed")
                    ),
                });
            }
            qcow2.set_data_file(None);
            let backing = match qcow2.implicit_backing_file() {
                None => None,
                Some(name) => {
                    let backing_path = gate_backing(&canonical, name, allowed)?;
                    let declared = declared_format(
                        &canonical,
                        qcow2.implicit_backing_format().map(String::as_str),
                    )?;
                    match open_layer(&backing_path, declared, allowed, layers)? {
                        Opened::Imago(access) => Some(access),
                        Opened::TopRaw => None,
                        Opened::Own(_) => {
                            return Err(ImageError::Unsupported {
                                path: canonical,
                                what: format!(
                                    "backing file {} has zstd-compressed clusters under a qcow2 that has not; \
                                     convert the chain with `qemu-img convert -O qcow2 IN OUT`",
                                    backing_path.display()
                                ),
                            });
                        }
                    }
                }
            };
            qcow2.set_backing(backing);
            Ok(Opened::Imago(FormatAccess::new(qcow2)))
        }
    }
}

/// The backing format a header declares, if any.
fn declared_format(image: &Path, name: Option<&str>) -> Result<Option<Format>, ImageError> {
    match name {
        None => Ok(None),
        Some("qcow2") => Ok(Some(Format::Qcow2)),
        Some("raw") | Some("file") => Ok(Some(Format::Raw)),
        Some(other) => Err(ImageError::Unsupported {
            path: image.to_owned(),
            what: format!("backing file format {other:?}"),
        }),
    }
}

fn chain_text(layers: &[Layer]) -> String {
    layers
        .iter()
        .map(|l| l.path.display().to_string())
        .collect::<Vec<_>>()
        .join(" -> ")
}

/// Resolve a backing file name relative to the image that names it and
/// refuse it unless it lies in an allowed directory.
fn gate_backing(image: &Path, name: &str, allowed: &[PathBuf]) -> Result<PathBuf, ImageError> {
    if name.contains(':') && !Path::new(name).exists() {
        // Protocol prefixes (nbd:, http:, json:) would make QEMU reach out.
        return Err(ImageError::Unsafe {
            path: image.to_owned(),
            what: format!("backing file {name:?} is not a local file name"),
        });
    }
    let dir = image.parent().unwrap_or(Path::new("/"));
    let candidate = dir.join(name);
    let resolved = candidate.canonicalize().map_err(|e| ImageError::Backing {
        path: image.to_owned(),
        backing: name.to_owned(),
        source: e,
    })?;
    if !allowed.iter().any(|d| resolved.starts_with(d)) {
        return Err(ImageError::Unsafe {
            path: image.to_owned(),
            what: format!(
                "backing file {name:?} resolves to {} outside the image's directory; \
                 pass --allow-backing-dir to permit it",
                resolved.display()
            ),
        });
    }
    Ok(resolved)
}

/// A qcow2 chain as a [`ReadAt`].
struct Qcow2Source {
    access: Access,
}

impl ReadAt for Qcow2Source {
    fn size(&self) -> u64 {
        self.access.size()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_bounds(offset, buf.len(), self.access.size())?;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.access.read(&mut *buf, offset)
        }))
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "qcow2 read failed: malformed metadata",
            ))
        })
    }
}
