//! The whole pipeline, as `ibkit inspect`/`ibkit check` run it on an image
//! file: container (raw or qcow2) -> partition table -> probe -> LVM ->
//! ext4/XFS -> root by os-release -> /etc/fstab mounts -> guest view. Then a
//! bounded walk of the assembled guest (symlinks resolved inside the guest,
//! across mount points).
#![no_main]
use libfuzzer_sys::fuzz_target;

use ibkit_image::inspect::{InspectOptions, inspect};

fuzz_target!(|data: &[u8]| {
    let path = ibkit_fuzz::scratch_file("input.img", data);
    let Ok(insp) = inspect(path, &InspectOptions::default()) else {
        return;
    };
    let _ = (
        &insp.volumes,
        &insp.mounts,
        &insp.notes,
        insp.table,
        insp.root,
    );
    ibkit_fuzz::walk_guest(&insp.guest);
});
