//! XFS (lamxfs behind our adapter): open the filesystem and walk it
//! (bounded), path by path and as a guest (the rules' walker). The input is a [`ibkit_fuzz::SparseDisk`]: records of a block
//! number and 4 KiB of content on a 64 MiB disk of zeros, since even a
//! minimal XFS spreads its metadata over several megabytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

use std::sync::Arc;

use ibkit_fuzz::SparseDisk;
use ibkit_image::Guest;
use ibkit_image::inspect::open_filesystem;
use ibkit_image::probe::{VolumeKind, probe};
use ibkit_image::source::Source;

fuzz_target!(|data: &[u8]| {
    let src: Source = Arc::new(SparseDisk::new(data));
    let _ = probe(&*src);
    if let Ok(fs) = open_filesystem(VolumeKind::Xfs, src) {
        ibkit_fuzz::walk_fs(&*fs);
        // The rules' walk: an entry naming its own directory or an
        // ancestor (a changed inode number) is listed once.
        ibkit_fuzz::walk_guest(&Guest::new(fs, "fuzz input".into()));
    }
});
