//! initramfs listing: concatenated cpio archives (newc/odc/...), each raw or
//! gzip/zstd/xz/lz4/bzip2 compressed, with the default limits.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ibkit_rules::facts::initramfs::scan(data);
});
