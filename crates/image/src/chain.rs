//! The approved chain: which host files QEMU may open for one disk, and the
//! format of each, decided by ibkit and never by QEMU.
//!
//! An image is untrusted: QEMU left to itself probes a file's format (a
//! "raw" disk whose first sector is a VMDK text descriptor becomes a VMDK
//! whose extents name host files) and follows the backing file names and
//! data files a qcow2 header writes. So:
//!
//! - [`approve`] walks the chain with the policy of
//!   [`open_disk`](crate::container::open_disk) (raw or qcow2 only, regular
//!   files only, backing files inside the image's directory, no data file,
//!   no protocol names) and, because QEMU must not guess either, requires
//!   every backing link to declare its format in the header;
//! - callers pass each approved layer to QEMU with its format and path
//!   (`-blockdev` nodes, `qemu-img create -u -F`), so nothing is read from
//!   the image's header by QEMU to decide what to open;
//! - [`ApprovedChain::check_qemu_info`] compares ibkit's answer with what
//!   `qemu-img info -f FMT --backing-chain --output=json` reports and
//!   refuses any difference: another format, size or backing file, or any
//!   file QEMU would open that was not approved (extents, a data file).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::ImageError;
use crate::container::{BackingPolicy, Format, Layer, resolve_layers};

/// One approved file of a disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovedLayer {
    /// Canonical host path (a regular file when approved).
    pub path: PathBuf,
    /// The format QEMU must open it with.
    pub format: Format,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
}

/// A disk's approved files, top layer first; never empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApprovedChain {
    layers: Vec<ApprovedLayer>,
}

/// Decide the format and the whole backing chain of `path` under `policy`.
/// Refuses (naming the file) anything ibkit would not read itself, and a
/// backing link whose format the header leaves QEMU to guess.
pub fn approve(path: &Path, policy: &BackingPolicy) -> Result<ApprovedChain, ImageError> {
    let layers = resolve_layers(path, policy)?;
    for pair in layers.windows(2) {
        let (upper, lower): (&Layer, &Layer) = (&pair[0], &pair[1]);
        if upper.backing_format.is_none() {
            let name = upper.backing_name.as_deref().unwrap_or("?");
            return Err(ImageError::Unsafe {
                path: upper.path.clone(),
                what: format!(
                    "the header does not declare the format of backing file {name:?} ({}), so QEMU \
                     would guess it; record it with `qemu-img rebase -u -F {} -b {name} {}`",
                    lower.path.display(),
                    lower.format.name(),
                    upper.path.display()
                ),
            });
        }
    }
    let layers: Vec<ApprovedLayer> = layers
        .into_iter()
        .map(|l| ApprovedLayer {
            path: l.path,
            format: l.format,
            virtual_size: l.virtual_size,
        })
        .collect();
    if layers.is_empty() {
        return Err(ImageError::corrupt(path, "no layers"));
    }
    Ok(ApprovedChain { layers })
}

/// QEMU counts sizes in 512-byte sectors: a raw file of 1000 bytes is a
/// 1024-byte disk to it.
fn sectors(bytes: u64) -> u64 {
    bytes.div_ceil(512)
}

impl ApprovedChain {
    /// Top layer first, then each backing file.
    pub fn layers(&self) -> &[ApprovedLayer] {
        &self.layers
    }

    /// The top layer (the file the caller named).
    pub fn top(&self) -> &ApprovedLayer {
        // `approve` never builds an empty chain.
        &self.layers[0]
    }

    /// The disk's guest-visible size.
    pub fn virtual_size(&self) -> u64 {
        self.top().virtual_size
    }

    /// Compare `qemu-img info -f FMT --backing-chain --output=json TOP`
    /// (an array, top first; a single object is taken as a one-layer chain)
    /// with the approval. Any difference is refused, naming the layer.
    pub fn check_qemu_info(&self, info: &Value) -> Result<(), ImageError> {
        let entries: Vec<&Value> = match info {
            Value::Array(a) => a.iter().collect(),
            Value::Object(_) => vec![info],
            _ => return Err(self.disagree(0, "it printed neither an object nor an array".into())),
        };
        if entries.len() != self.layers.len() {
            let seen: Vec<&str> = entries
                .iter()
                .map(|e| e["filename"].as_str().unwrap_or("?"))
                .collect();
            let ours: Vec<String> = self
                .layers
                .iter()
                .map(|l| l.path.display().to_string())
                .collect();
            return Err(self.disagree(
                0,
                format!(
                    "QEMU sees {} layer(s) ({}), ibkit approved {} ({})",
                    entries.len(),
                    seen.join(" -> "),
                    self.layers.len(),
                    ours.join(" -> ")
                ),
            ));
        }
        for (i, (layer, e)) in self.layers.iter().zip(entries).enumerate() {
            let filename = e["filename"].as_str().unwrap_or("");
            if !same_file(filename, &layer.path) {
                return Err(self.disagree(i, format!("QEMU opened {filename:?}")));
            }
            let format = e["format"].as_str().unwrap_or("");
            if format != layer.format.name() {
                return Err(self.disagree(
                    i,
                    format!(
                        "QEMU reads it as {format:?}, ibkit as {}",
                        layer.format.name()
                    ),
                ));
            }
            match e["virtual-size"].as_u64() {
                Some(n) if sectors(n) == sectors(layer.virtual_size) => {}
                other => {
                    return Err(self.disagree(
                        i,
                        format!(
                            "QEMU's virtual size is {}, ibkit's {}",
                            other.map_or("missing".to_string(), |n| n.to_string()),
                            layer.virtual_size
                        ),
                    ));
                }
            }
            let data = &e["format-specific"]["data"];
            for key in ["data-file", "extents"] {
                if let Some(v) = data.get(key) {
                    return Err(self.disagree(
                        i,
                        format!("QEMU would open its {key} {v}, which ibkit did not approve"),
                    ));
                }
            }
            // Every file QEMU opened below this layer: only the layer itself.
            for c in e["children"].as_array().into_iter().flatten() {
                let name = c["name"].as_str().unwrap_or("?");
                let file = c["info"]["filename"].as_str().unwrap_or("?");
                if name != "file" || !same_file(file, &layer.path) {
                    return Err(self.disagree(
                        i,
                        format!(
                            "QEMU would also open {file:?} (as {name}), which ibkit did not approve"
                        ),
                    ));
                }
            }
            let backing = e
                .get("full-backing-filename")
                .or_else(|| e.get("backing-filename"))
                .and_then(Value::as_str);
            match (self.layers.get(i + 1), backing) {
                (None, None) => {}
                (None, Some(b)) => {
                    return Err(
                        self.disagree(i, format!("QEMU sees a backing file {b:?}, ibkit none"))
                    );
                }
                (Some(next), None) => {
                    return Err(self.disagree(
                        i,
                        format!("QEMU sees no backing file, ibkit {}", next.path.display()),
                    ));
                }
                (Some(next), Some(b)) => {
                    if !same_file(b, &next.path) {
                        return Err(self.disagree(
                            i,
                            format!(
                                "QEMU's backing file is {b:?}, ibkit's {}",
                                next.path.display()
                            ),
                        ));
                    }
                    let bf = e["backing-filename-format"].as_str().unwrap_or("");
                    if bf != next.format.name() {
                        return Err(self.disagree(
                            i,
                            format!(
                                "QEMU's backing format is {bf:?}, ibkit's {}",
                                next.format.name()
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    fn disagree(&self, layer: usize, what: String) -> ImageError {
        let l = &self.layers[layer.min(self.layers.len() - 1)];
        ImageError::Unsafe {
            path: l.path.clone(),
            what: format!(
                "qemu-img info disagrees with ibkit ({} layer {layer}): {what}",
                l.format.name()
            ),
        }
    }
}

/// Whether QEMU's file name is the approved file. QEMU prints names as
/// given or as resolved from a header (relative names against the image's
/// directory); both must lead to the same canonical path. A `json:` or
/// protocol name never does.
fn same_file(qemu_name: &str, approved: &Path) -> bool {
    !qemu_name.is_empty()
        && Path::new(qemu_name).is_absolute()
        && Path::new(qemu_name)
            .canonicalize()
            .is_ok_and(|p| p == approved)
}
