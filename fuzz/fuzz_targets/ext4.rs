//! ext2/3/4: our own reader (superblock, group descriptors, extents, block
//! maps, htree, inline data, meta_bg, journal), through its fuzzing entry
//! point, which opens the image and walks the whole tree (bounded).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ibkit_image::fs::ext4::fuzz_one(data);
});
