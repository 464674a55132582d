//! qcow2 container: header, extensions, L1/L2 tables, refcounts and
//! compressed clusters (our qcow2 reader), behind our own gate (version, compression
//! type, external data files, backing-file names).
//!
//! The input goes to a scratch file (one path per process, rewritten each
//! time) because `open_disk` takes a host path; then a few reads cross the
//! interesting places: the first clusters, cluster boundaries, the middle and
//! the end of the virtual disk.
#![no_main]
use libfuzzer_sys::fuzz_target;

use ibkit_image::container::{BackingPolicy, open_disk};

fuzz_target!(|data: &[u8]| {
    // Without the magic the input is a raw image, whose reads are plain file
    // reads: keep every execution on the qcow2 path.
    let mut input = b"QFI\xfb".to_vec();
    input.extend_from_slice(data.get(4..).unwrap_or_default());
    let path = ibkit_fuzz::scratch_file("input.qcow2", &input);
    let Ok(disk) = open_disk(path, &BackingPolicy::default()) else {
        return;
    };
    let src = disk.source;
    let size = src.size();
    let mut buf = vec![0u8; 4096];
    for off in [
        0u64,
        512,
        65536 - 512,
        1 << 20,
        (1 << 21) - 2048,
        size / 2,
        size.saturating_sub(4096),
    ] {
        let len = (size.saturating_sub(off)).min(buf.len() as u64) as usize;
        let _ = src.read_exact_at(&mut buf[..len], off);
    }
    // Past the end must fail, never panic.
    let _ = src.read_exact_at(&mut buf[..1], size);
});
