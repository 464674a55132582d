//! Partition tables (MBR with extended/logical chains, GPT at 512 and 4096
//! byte sectors), then what `inspect` does with each volume: probe it,
//! descend into an LVM2 PV (lamlvm: label, metadata area, VG text metadata)
//! and probe each logical volume, and open and walk whatever filesystem the
//! probe names.
#![no_main]
use libfuzzer_sys::fuzz_target;

use std::sync::Arc;

use ibkit_image::inspect::open_filesystem;
use ibkit_image::partition::read_table;
use ibkit_image::probe::{VolumeKind, probe};
use ibkit_image::source::{Source, Window};

fn volume(src: Source, lvm_depth: usize) {
    let p = probe(&*src);
    let _ = (p.kind.name(), &p.uuid, &p.label);
    if ibkit_image::lvm::probe(&*src) && lvm_depth == 0 {
        if let Ok(lvs) = ibkit_image::lvm::logical_volumes(&src) {
            for lv in lvs {
                let _ = (&lv.vg, &lv.name);
                volume(lv.source, lvm_depth + 1);
            }
        }
    }
    if matches!(p.kind, VolumeKind::Ext | VolumeKind::Xfs) {
        if let Ok(fs) = open_filesystem(p.kind, src) {
            ibkit_fuzz::walk_fs(&*fs);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let disk: Source = Arc::new(data.to_vec());
    match read_table(&*disk) {
        Ok(Some(table)) => {
            let _ = (table.kind.name(), table.sector_size, &table.warnings);
            for p in table.partitions {
                volume(Arc::new(Window::new(disk.clone(), p.offset, p.len)), 0);
            }
        }
        Ok(None) => volume(disk, 0),
        Err(_) => {}
    }
});
