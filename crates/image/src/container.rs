//! Disk image containers: raw files and qcow2 (v2/v3, zlib- or
//! zstd-compressed clusters, backing chains) read by [`crate::qcow2`].
//!
//! Everything an image header names is untrusted. Backing files are opened
//! only when they stay inside the top image's directory (or a directory the
//! caller allows), with a depth limit and a loop check, and only when they
//! are regular files (a FIFO would hang the open, a device would be read as
//! the disk). External data files and names QEMU would take for a protocol
//! (`nbd:`, `json:`) are refused. The same walk decides what QEMU may open:
//! see [`crate::chain`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::ImageError;
use crate::limits::MAX_BACKING_DEPTH;
use crate::qcow2::{Header, HeaderError, Qcow2};
use crate::source::{RawFile, ReadAt, Source};

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
#[non_exhaustive]
pub struct Layer {
    /// Host path of the layer (canonical).
    pub path: PathBuf,
    /// Its format.
    pub format: Format,
    /// Guest-visible size: the file's size (raw) or the qcow2 header's.
    pub virtual_size: u64,
    /// The backing file name as the qcow2 header writes it (untrusted).
    pub backing_name: Option<String>,
    /// The backing file's format as the header declares it; `None` when
    /// the header does not say (the backing file's format was sniffed).
    pub backing_format: Option<Format>,
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

/// Bytes QEMU reads to probe a format (`BLOCK_PROBE_BUF_SIZE`).
const PROBE_BYTES: u64 = 512;

/// Sniff the container format from the first bytes of `file`. Formats we
/// recognise but cannot read are refused by name rather than misread as
/// raw; so is anything QEMU would probe as another format, so that ibkit
/// and QEMU never disagree about what a file is.
fn sniff(path: &Path, file: &RawFile) -> Result<Format, ImageError> {
    let mut head = vec![0u8; file.size().min(PROBE_BYTES) as usize];
    file.read_exact_at(&mut head, 0)
        .map_err(|e| ImageError::io(path, e))?;
    let head = &head[..];
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
    if head.starts_with(b"KDMV")
        || head.starts_with(b"COWD")
        || head.starts_with(b"# Disk DescriptorFile")
    {
        return refuse("VMDK");
    }
    if looks_like_vmdk_descriptor(head) {
        return Err(ImageError::Unsafe {
            path: path.to_owned(),
            what: "the first sector is a VMDK text descriptor (QEMU would probe it as VMDK and \
                   open the host files its extents name); VMDK images are not supported"
                .into(),
        });
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
    if head.starts_with(b"QED\0") {
        return refuse("QED");
    }
    if head.starts_with(b"LUKS\xba\xbe") {
        return refuse("LUKS");
    }
    if head.starts_with(b"WithoutFreeSpace") || head.starts_with(b"WithouFreSpacExt") {
        return refuse("Parallels");
    }
    if head.starts_with(b"Bochs Virtual HD Image") {
        return refuse("Bochs");
    }
    if head.starts_with(b"#!/bin/sh\n#V2.0 Format\n") {
        return refuse("cloop");
    }
    Ok(Format::Raw)
}

/// QEMU's VMDK probe for a text descriptor (`vmdk_probe` in
/// block/vmdk.c): comment lines and lines of spaces, then `version=1|2|3`.
/// The descriptor may be followed by anything, e.g. a real partition
/// table, so ibkit alone would read such a file as a raw disk.
pub(crate) fn looks_like_vmdk_descriptor(buf: &[u8]) -> bool {
    let mut p = 0;
    while p < buf.len() {
        match buf[p] {
            b'#' => {
                while p < buf.len() && buf[p] != b'\n' {
                    p += 1;
                }
                p += 1;
            }
            b' ' => {
                while p < buf.len() && buf[p] == b' ' {
                    p += 1;
                }
                if p < buf.len() && buf[p] == b'\r' {
                    p += 1;
                }
                if p == buf.len() || buf[p] != b'\n' {
                    return false;
                }
                p += 1;
            }
            _ => {
                let rest = &buf[p..];
                return [b'1', b'2', b'3'].iter().any(|v| {
                    let mut line = b"version=X".to_vec();
                    line[8] = *v;
                    rest.starts_with(&line)
                        && (rest[line.len()..].starts_with(b"\n")
                            || rest[line.len()..].starts_with(b"\r\n"))
                });
            }
        }
    }
    false
}

/// One layer, opened and checked: its file and, for qcow2, its validated
/// header.
struct Opened {
    layer: Layer,
    file: RawFile,
    header: Option<Header>,
}

/// The next layer to open: its canonical path, the format the layer above
/// declares for it, and (for a backing file) the image naming it and the
/// name as written.
struct Pending {
    path: PathBuf,
    declared: Option<Format>,
    named_by: Option<(PathBuf, String)>,
}

/// Open a disk image (raw or qcow2) read-only, following a qcow2 backing
/// chain under `policy`.
pub fn open_disk(path: &Path, policy: &BackingPolicy) -> Result<Disk, ImageError> {
    let chain = resolve(path, policy)?;
    let layers = chain.iter().map(|o| o.layer.clone()).collect();
    // Bottom up: each qcow2 layer reads unallocated ranges from the one below.
    let mut source: Option<Source> = None;
    for o in chain.into_iter().rev() {
        source = Some(match o.header {
            None => Arc::new(o.file),
            Some(header) => {
                let qcow2 = Qcow2::open(o.file, header, source.take())
                    .map_err(|e| ImageError::corrupt(&o.layer.path, &e.to_string()))?;
                Arc::new(qcow2)
            }
        });
    }
    let source = source.ok_or_else(|| ImageError::corrupt(path, "no layers"))?;
    Ok(Disk { source, layers })
}

/// The layers of a disk image, top first, checked as [`open_disk`] checks
/// them but reading headers only (no L1 tables).
pub(crate) fn resolve_layers(
    path: &Path,
    policy: &BackingPolicy,
) -> Result<Vec<Layer>, ImageError> {
    Ok(resolve(path, policy)?
        .into_iter()
        .map(|o| o.layer)
        .collect())
}

/// Walk the chain from `path`: open each layer (regular files only),
/// sniff or take its declared format, read its qcow2 header and gate the
/// backing file it names.
fn resolve(path: &Path, policy: &BackingPolicy) -> Result<Vec<Opened>, ImageError> {
    let top = path.canonicalize().map_err(|e| ImageError::io(path, e))?;
    let top_dir = top
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("/"));
    let mut allowed = vec![top_dir];
    for d in &policy.allowed_dirs {
        allowed.push(d.canonicalize().map_err(|e| ImageError::io(d, e))?);
    }
    let mut chain: Vec<Opened> = Vec::new();
    let mut next = Some(Pending {
        path: top,
        declared: None,
        named_by: None,
    });
    while let Some(Pending {
        path: canonical,
        declared,
        named_by,
    }) = next.take()
    {
        let naming = named_by
            .as_ref()
            .map(|(p, _)| p.clone())
            .unwrap_or_else(|| canonical.clone());
        if chain.iter().any(|o| o.layer.path == canonical) {
            return Err(ImageError::Unsafe {
                path: naming,
                what: format!(
                    "backing chain loops back to {} ({})",
                    canonical.display(),
                    chain_text(&chain)
                ),
            });
        }
        if chain.len() > MAX_BACKING_DEPTH {
            return Err(ImageError::Unsafe {
                path: naming,
                what: format!("backing chain deeper than {MAX_BACKING_DEPTH} layers"),
            });
        }
        let file = RawFile::open(&canonical).map_err(|e| match &named_by {
            None => ImageError::io(&canonical, e),
            Some((image, name)) => ImageError::Backing {
                path: image.clone(),
                backing: name.clone(),
                source: e,
            },
        })?;
        let sniffed = sniff(&canonical, &file)?;
        // A declared backing format wins over sniffing (a raw backing file
        // whose first bytes look like qcow2 must stay raw).
        let format = declared.unwrap_or(sniffed);
        let header = match format {
            Format::Raw => None,
            Format::Qcow2 => Some(read_header(&canonical, &file)?),
        };
        let mut layer = Layer {
            path: canonical.clone(),
            format,
            virtual_size: header.as_ref().map_or(file.size(), |h| h.size),
            backing_name: None,
            backing_format: None,
        };
        if let Some(name) = header.as_ref().and_then(|h| h.backing_name.clone()) {
            let backing_path = gate_backing(&canonical, &name, &allowed)?;
            let declared = declared_format(
                &canonical,
                header.as_ref().and_then(|h| h.backing_format.as_deref()),
            )?;
            layer.backing_format = declared;
            layer.backing_name = Some(name.clone());
            next = Some(Pending {
                path: backing_path,
                declared,
                named_by: Some((canonical.clone(), name)),
            });
        }
        chain.push(Opened {
            layer,
            file,
            header,
        });
    }
    Ok(chain)
}

fn read_header(path: &Path, file: &RawFile) -> Result<Header, ImageError> {
    Header::read(file).map_err(|e| match e {
        HeaderError::Corrupt(what) => ImageError::corrupt(path, &format!("qcow2: {what}")),
        HeaderError::Unsupported(what) => ImageError::Unsupported {
            path: path.to_owned(),
            what,
        },
        HeaderError::Unsafe(what) => ImageError::Unsafe {
            path: path.to_owned(),
            what,
        },
        HeaderError::Io(e) => ImageError::io(path, e),
    })
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

fn chain_text(chain: &[Opened]) -> String {
    chain
        .iter()
        .map(|o| o.layer.path.display().to_string())
        .collect::<Vec<_>>()
        .join(" -> ")
}

/// Whether QEMU would take `name` for a protocol (`nbd:…`, `json:{…}`,
/// `http:…`) rather than a file name: a `:` before any `/`
/// (`path_has_protocol` in QEMU's block.c).
fn has_protocol(name: &str) -> bool {
    name.find([':', '/'])
        .is_some_and(|i| name.as_bytes()[i] == b':')
}

/// Resolve a backing file name relative to the image that names it and
/// refuse it unless it lies in an allowed directory.
fn gate_backing(image: &Path, name: &str, allowed: &[PathBuf]) -> Result<PathBuf, ImageError> {
    if has_protocol(name) {
        // Whether or not such a file exists here, QEMU would reach out
        // (NBD, HTTP) or read options from the name (json:).
        return Err(ImageError::Unsafe {
            path: image.to_owned(),
            what: format!("backing file {name:?} names a QEMU protocol, not a local file"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vmdk_descriptor_probe_matches_qemu() {
        assert!(looks_like_vmdk_descriptor(b"version=1\n"));
        assert!(looks_like_vmdk_descriptor(b"# Disk\n   \nversion=3\r\nx"));
        assert!(looks_like_vmdk_descriptor(
            b"#\n#\nversion=2\ncreateType=\"x\"\0\x55\xaa"
        ));
        assert!(!looks_like_vmdk_descriptor(b"version=4\n"));
        assert!(!looks_like_vmdk_descriptor(b"\nversion=1\n"));
        assert!(!looks_like_vmdk_descriptor(b"  x\nversion=1\n"));
        assert!(!looks_like_vmdk_descriptor(b"version=1"));
        assert!(!looks_like_vmdk_descriptor(b"\xeb\x63\x90version=1\n"));
        assert!(!looks_like_vmdk_descriptor(&[0u8; 512]));
        // A comment longer than the buffer ends the probe.
        assert!(!looks_like_vmdk_descriptor(b"# no newline"));
    }

    #[test]
    fn protocol_names() {
        for p in [
            "nbd:localhost:10809",
            "json:{}",
            "http://x/y",
            "file:/etc/passwd",
        ] {
            assert!(has_protocol(p), "{p}");
        }
        for f in ["base.raw", "./a:b", "/abs/a:b", "dir/x"] {
            assert!(!has_protocol(f), "{f}");
        }
    }
}
