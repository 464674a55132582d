//! Disk image containers: raw files and qcow2 (v2/v3, zlib- or
//! zstd-compressed clusters, backing chains) read by [`crate::qcow2`].
//!
//! Everything an image header names is untrusted. Backing files are opened
//! only when they stay inside the top image's directory (or a directory the
//! caller allows), with a depth limit and a loop check. External data files
//! are refused.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::ImageError;
use crate::limits::MAX_BACKING_DEPTH;
use crate::qcow2::{HeaderError, Qcow2};
use crate::source::{RawFile, Source};

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
    let source = open_layer(path, None, &allowed, &mut layers)?;
    Ok(Disk { source, layers })
}

/// Open one layer, recursively opening its backing chain.
fn open_layer(
    path: &Path,
    declared: Option<Format>,
    allowed: &[PathBuf],
    layers: &mut Vec<Layer>,
) -> Result<Source, ImageError> {
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
    let file = RawFile::open(&canonical).map_err(|e| ImageError::io(&canonical, e))?;
    if format == Format::Raw {
        return Ok(Arc::new(file));
    }
    let header = crate::qcow2::Header::read(&file).map_err(|e| match e {
        HeaderError::Corrupt(what) => ImageError::corrupt(&canonical, &format!("qcow2: {what}")),
        HeaderError::Unsupported(what) => ImageError::Unsupported {
            path: canonical.clone(),
            what,
        },
        HeaderError::Unsafe(what) => ImageError::Unsafe {
            path: canonical.clone(),
            what,
        },
        HeaderError::Io(e) => ImageError::io(&canonical, e),
    })?;
    let backing = match &header.backing_name {
        None => None,
        Some(name) => {
            let backing_path = gate_backing(&canonical, name, allowed)?;
            let declared = declared_format(&canonical, header.backing_format.as_deref())?;
            Some(open_layer(&backing_path, declared, allowed, layers)?)
        }
    };
    let qcow2 = Qcow2::open(file, header, backing)
        .map_err(|e| ImageError::corrupt(&canonical, &e.to_string()))?;
    Ok(Arc::new(qcow2))
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
