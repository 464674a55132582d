//! XFS (lamxfs behind our adapter): open the filesystem on the input and walk
//! it (bounded).
#![no_main]
use libfuzzer_sys::fuzz_target;

use std::sync::Arc;

use ibkit_image::inspect::open_filesystem;
use ibkit_image::probe::VolumeKind;
use ibkit_image::source::Source;

fuzz_target!(|data: &[u8]| {
    let src: Source = Arc::new(data.to_vec());
    if let Ok(fs) = open_filesystem(VolumeKind::Xfs, src) {
        ibkit_fuzz::walk_fs(&*fs);
    }
});
