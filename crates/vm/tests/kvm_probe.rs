//! The real KVM probe: boots the Debian image's kernel and initrd (taken from
//! the root-filesystem tarball recorded in the image's `.info` file, or from
//! `IBKIT_PROBE_KERNEL`/`IBKIT_PROBE_INITRD`) under KVM. Whatever the host
//! does (boots, stalls in nested KVM, no /dev/kvm), the probe must come back
//! within its timeout with a reason, leave no QEMU behind, and the cached
//! variant must return the same choice from its cache file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ibkit_vm::accel::{probe_kvm, probe_kvm_cached};
use ibkit_vm::procs;

fn kernel_and_initrd(tmp: &Path) -> (PathBuf, Option<PathBuf>) {
    if let Some(k) = std::env::var_os("IBKIT_PROBE_KERNEL") {
        return (
            PathBuf::from(k),
            std::env::var_os("IBKIT_PROBE_INITRD").map(PathBuf::from),
        );
    }
    let image = std::env::var_os("IBKIT_DEBIAN_QCOW2")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let out = Command::new("bash")
                .arg(
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join("../../scripts/build-debian-image.sh"),
                )
                .output()
                .expect("run build-debian-image.sh");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            PathBuf::from(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .next()
                    .expect("image path")
                    .trim(),
            )
        });
    let info = std::fs::read_to_string(image.with_extension("info")).expect("image .info file");
    let field = |k: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k}= in .info"))
            .to_string()
    };
    let tarball = field("rootfs_tarball");
    let release = field("kernel");
    let k = format!("./boot/vmlinuz-{release}");
    let i = format!("./boot/initrd.img-{release}");
    let st = Command::new("tar")
        .args(["--zstd", "-xf", &tarball, "-C"])
        .arg(tmp)
        .args([&k, &i])
        .status()
        .expect("tar");
    assert!(st.success(), "extracting {k} {i} from {tarball}");
    (tmp.join(&k), Some(tmp.join(&i)))
}

#[tokio::test]
async fn kvm_probe_returns_a_reasoned_choice_and_caches_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (kernel, initrd) = kernel_and_initrd(tmp.path());
    let timeout = Duration::from_secs(10);
    let t0 = Instant::now();
    let choice = probe_kvm(&kernel, initrd.as_deref(), timeout).await;
    let took = t0.elapsed();
    eprintln!(
        "[kvm probe] {:?}: {} ({:.1} s)",
        choice.accel,
        choice.reason,
        took.as_secs_f64()
    );
    assert!(!choice.reason.is_empty());
    assert!(took < timeout + Duration::from_secs(5));
    assert!(procs::registered().is_empty(), "{:?}", procs::registered());

    let cache = tmp.path().join("cache");
    let first = probe_kvm_cached(&kernel, initrd.as_deref(), timeout, &cache).await;
    let t1 = Instant::now();
    let second = probe_kvm_cached(&kernel, initrd.as_deref(), timeout, &cache).await;
    eprintln!(
        "[kvm probe] cached: {:?}: {} ({:.1} s)",
        second.accel,
        second.reason,
        t1.elapsed().as_secs_f64()
    );
    assert_eq!(first.accel, second.accel);
    if cache.join("kvm-probe.json").exists() {
        assert!(
            second.reason.starts_with("cached probe from "),
            "{}",
            second.reason
        );
        assert!(t1.elapsed() < Duration::from_secs(3));
    } else {
        // /dev/kvm unusable: nothing is cached, the reason says why.
        assert!(second.reason.starts_with("/dev/kvm"), "{}", second.reason);
    }
}
