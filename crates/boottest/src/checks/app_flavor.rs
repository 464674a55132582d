//! APP-FLAVOR live: a second VM from the same image with another flavor
//! (more vCPUs and RAM than the first) and a larger disk sees all of it
//! (`nproc`, `MemTotal`), grows its root filesystem to the new disk
//! (growpart/resizefs at first boot) and passes the app's health check. The
//! first VM already proved the small flavor.

use ibkit_rules::{Evidence, Outcome};

use super::{health_evidence, health_failure, no_health};
use crate::observe::Observations;

pub fn check(o: &Observations) -> Outcome {
    let Some(b) = &o.flavor else {
        return Outcome::unknown("the flavor VM did not start");
    };
    let Some(g) = &b.guest else {
        return Outcome::unknown(format!(
            "could not log in to the flavor VM: {}",
            b.ssh_error.as_deref().unwrap_or("no SSH")
        ));
    };
    let mut out = Outcome::default();
    match g.nproc {
        Some(n) if n == b.vcpus => out.proof(Evidence::note(format!("flavor boot: nproc = {n}"))),
        Some(n) => out.fail(
            "vcpus",
            format!("flavor boot: the guest uses {n} of {} vCPUs", b.vcpus),
            Evidence::note("nproc"),
        ),
        None => out.unverified("nproc could not be read"),
    }
    match g.mem_total_kib {
        // The kernel keeps some memory for itself: 85 % is plenty.
        Some(kib) if kib * 100 >= b.memory_mib * 1024 * 85 => out.proof(Evidence::at(
            "/proc/meminfo",
            format!(
                "flavor boot: MemTotal {} MiB of {} MiB",
                kib / 1024,
                b.memory_mib
            ),
        )),
        Some(kib) => out.fail(
            "memory",
            format!(
                "flavor boot: the guest sees {} MiB of {} MiB",
                kib / 1024,
                b.memory_mib
            ),
            Evidence::at("/proc/meminfo", "MemTotal"),
        ),
        None => out.unverified("MemTotal could not be read"),
    }
    let first_disk = o.first.as_ref().map(|f| f.disk_bytes).unwrap_or(0);
    let first_root = o
        .first
        .as_ref()
        .and_then(|f| f.guest.as_ref())
        .and_then(|g| g.root_size);
    match (g.root_size, first_root) {
        (Some(big), Some(small)) if b.disk_bytes > first_disk => {
            let extra = b.disk_bytes - first_disk;
            if big >= small + extra / 2 {
                out.proof(Evidence::note(format!(
                    "root filesystem grew with the disk: {:.2} GiB on the {:.1} GiB disk vs {:.2} GiB on {:.1} GiB",
                    gib(big), gib(b.disk_bytes), gib(small), gib(first_disk)
                )));
            } else {
                out.fail(
                    "root-not-grown",
                    format!(
                        "the root filesystem did not grow with the disk: {:.2} GiB on a {:.1} GiB disk ({:.2} GiB on {:.1} GiB)",
                        gib(big), gib(b.disk_bytes), gib(small), gib(first_disk)
                    ),
                    Evidence::note("df -B1 / (cloud-init growpart and resizefs should grow the last partition)"),
                );
            }
        }
        _ => out.unverified("the root filesystem size could not be compared between the two boots"),
    }
    if no_health(o).is_none() {
        match &b.health {
            Some(h) if h.passed => out.proof(health_evidence(
                &format!("flavor boot ({})", b.describe()),
                h,
            )),
            Some(h) => out.fail(
                "unhealthy",
                health_failure("flavor boot", h),
                Evidence::note(b.describe()),
            ),
            None => out.unverified("the health check did not run on the flavor boot"),
        }
    }
    out
}

fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}
