//! The image gate (`qemu-img info` agreeing with ibkit's reading of the
//! image), the overlay (`qemu-img create`) and QEMU's `-blockdev` nodes.

use std::path::{Path, PathBuf};

use ibkit_image::chain::{ApprovedChain, approve};
use ibkit_image::container::{BackingPolicy, Format};
use serde_json::{Value, json};

use super::{VmError, set_private};
use crate::binary::qemu_img_binary;

/// Runs a host tool to completion; a failure is an error of the VM `name`.
async fn run_tool(
    name: &str,
    program: &Path,
    args: &[String],
) -> Result<std::process::Output, VmError> {
    crate::command::run(program, args)
        .await
        .map_err(|e| VmError::command(name, e))
}

// ---------------------------------------------------------------- the image gate

/// An error with its causes, one line: `cannot read X: is a FIFO, …`.
fn error_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// The gate every VM disk passes before QEMU or qemu-img opens it
/// (`ibkit boot-test`, `ibkit deploy`): ibkit decides the format (raw or
/// qcow2) and the whole backing chain ([`ibkit_image::chain::approve`]:
/// regular files only, backing files beside the image with their format
/// declared, no data file, no VMDK or other format QEMU would probe), then
/// runs `qemu-img info` with ibkit's format ([`qemu_img_info_args`]) and
/// refuses when QEMU sees anything else. QEMU is then given exactly the
/// approved files ([`disk_args`], [`overlay_create_args`]).
pub async fn approve_image(name: &str, image: &Path) -> Result<ApprovedChain, VmError> {
    let refused = |reason: String| VmError::Image {
        name: name.to_string(),
        image: image.to_path_buf(),
        reason,
    };
    let path = image.to_path_buf();
    // Blocking reads of headers (never of a FIFO: those are refused unopened).
    let chain = tokio::task::spawn_blocking(move || approve(&path, &BackingPolicy::default()))
        .await
        .map_err(|e| refused(format!("image reader task: {e}")))?
        .map_err(|e| refused(error_text(&e)))?;
    let args = qemu_img_info_args(&chain);
    let out = run_tool(name, &qemu_img_binary(), &args).await?;
    let info: Value = serde_json::from_slice(&out.stdout).map_err(|e| VmError::Command {
        name: name.to_string(),
        command: format!("qemu-img {}", args.join(" ")),
        status: "unparsable output".into(),
        stderr: e.to_string(),
    })?;
    chain
        .check_qemu_info(&info)
        .map_err(|e| refused(error_text(&e)))?;
    tracing::debug!(vm = %name, image = %image.display(), layers = chain.layers().len(), "image approved");
    Ok(chain)
}

/// `qemu-img info` of an approved chain: ibkit's format for the top layer
/// (`-f`), the backing chain (whose formats [`approve`] required the
/// headers to declare, so nothing is probed), JSON, without taking locks
/// (`-U`: a running VM may use the image).
pub fn qemu_img_info_args(chain: &ApprovedChain) -> Vec<String> {
    let top = chain.top();
    vec![
        "info".into(),
        "-U".into(),
        "--output=json".into(),
        "--backing-chain".into(),
        "-f".into(),
        top.format.name().into(),
        top.path.display().to_string(),
    ]
}

/// `qemu-img create` of a qcow2 overlay over an approved chain: the top
/// layer's format given (`-F`), and `-u` so that qemu-img does not open
/// the chain (it would follow the names in the headers) — the size is
/// given instead: the image's, or `disk_size` when larger, in whole sectors.
pub fn overlay_create_args(
    chain: &ApprovedChain,
    overlay: &Path,
    disk_size: Option<u64>,
) -> Vec<String> {
    let top = chain.top();
    let size = disk_size
        .unwrap_or(0)
        .max(chain.virtual_size())
        .div_ceil(512)
        * 512;
    vec![
        "create".into(),
        "-q".into(),
        "-u".into(),
        "-f".into(),
        "qcow2".into(),
        "-F".into(),
        top.format.name().into(),
        "-b".into(),
        top.path.display().to_string(),
        overlay.display().to_string(),
        size.to_string(),
    ]
}

/// Create the overlay `overlay` (mode 0600: the guest's writes) over an
/// approved chain.
pub async fn create_overlay(
    name: &str,
    chain: &ApprovedChain,
    overlay: &Path,
    disk_size: Option<u64>,
) -> Result<(), VmError> {
    let args = overlay_create_args(chain, overlay, disk_size);
    run_tool(name, &qemu_img_binary(), &args).await?;
    set_private(overlay).map_err(|source| VmError::Io {
        name: name.to_string(),
        what: "cannot make private".into(),
        path: overlay.to_path_buf(),
        source,
    })?;
    tracing::debug!(vm = %name, image = %chain.top().path.display(), format = chain.top().format.name(), "overlay created");
    Ok(())
}

/// `-blockdev` cache options and whether the guest sees a volatile write
/// cache, for a `-drive cache=` mode.
pub(super) fn cache_mode(mode: &str) -> Option<(Value, bool)> {
    let (direct, no_flush, write_cache) = match mode {
        "writeback" => (false, false, true),
        "writethrough" => (false, false, false),
        "none" => (true, false, true),
        "directsync" => (true, false, false),
        "unsafe" => (false, true, true),
        _ => return None,
    };
    Some((json!({"direct": direct, "no-flush": no_flush}), write_cache))
}

fn utf8_path(p: &Path) -> Result<&str, String> {
    p.to_str()
        .ok_or_else(|| format!("{} is not UTF-8; QEMU cannot be given it", p.display()))
}

/// QEMU's disks: the approved `chain` under the writable `overlay` (the
/// root disk), then read-only raw `drives` (seeds). Every node is a
/// `-blockdev` with its driver and file named, the bottom layer first, and
/// each qcow2 node is given its backing node (the last one `null`), so
/// QEMU reads neither a format nor a file name from an image. The
/// `virtio-blk-pci` devices come last (after the NIC and the RNG, where
/// `-drive if=virtio` put them: the guest's PCI slots stay the same).
pub fn disk_args(
    chain: &ApprovedChain,
    overlay: &Path,
    cache: &str,
    drives: &[PathBuf],
) -> Result<Vec<String>, String> {
    let (cache_opts, write_cache) =
        cache_mode(cache).ok_or_else(|| format!("unknown disk cache mode {cache:?}"))?;
    let mut nodes: Vec<Value> = Vec::new();
    let layers = chain.layers();
    for (i, l) in layers.iter().enumerate().rev() {
        let file = format!("disk{i}-file");
        nodes.push(json!({
            "driver": "file",
            "filename": utf8_path(&l.path)?,
            "node-name": file,
            "read-only": true,
            "cache": cache_opts,
        }));
        let mut node = json!({
            "driver": l.format.name(),
            "file": file,
            "node-name": format!("disk{i}"),
            "read-only": true,
            "cache": cache_opts,
        });
        if l.format == Format::Qcow2 {
            node["backing"] = match layers.get(i + 1) {
                Some(_) => Value::String(format!("disk{}", i + 1)),
                None => Value::Null,
            };
        }
        nodes.push(node);
    }
    nodes.push(json!({
        "driver": "file",
        "filename": utf8_path(overlay)?,
        "node-name": "root-file",
        "cache": cache_opts,
    }));
    nodes.push(json!({
        "driver": "qcow2",
        "file": "root-file",
        "node-name": "root",
        "backing": "disk0",
        "cache": cache_opts,
    }));
    let mut devices = vec![format!(
        "virtio-blk-pci,drive=root{}",
        if write_cache { "" } else { ",write-cache=off" }
    )];
    for (i, d) in drives.iter().enumerate() {
        nodes.push(json!({
            "driver": "file",
            "filename": utf8_path(d)?,
            "node-name": format!("seed{i}-file"),
            "read-only": true,
        }));
        nodes.push(json!({
            "driver": "raw",
            "file": format!("seed{i}-file"),
            "node-name": format!("seed{i}"),
            "read-only": true,
        }));
        devices.push(format!("virtio-blk-pci,drive=seed{i}"));
    }
    let mut args = Vec::new();
    for n in nodes {
        args.push("-blockdev".to_string());
        args.push(n.to_string());
    }
    for d in devices {
        args.push("-device".to_string());
        args.push(d);
    }
    Ok(args)
}
