//! Issue 12, item 8: `ibkit check` on an image whose ext4 directories are
//! hard-linked to themselves and to their ancestors must finish quickly,
//! with bounded memory, and say what it skipped; a wide but finite tree
//! must stop at the directory budget and say so.
//!
//! Before the fix, IMG-NO-SECRETS walked `/etc/a` (16 links to itself)
//! 16^12 times and the guest's lookup cache grew without bound: the check
//! never finished.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ibkit_image::fs::dir::DirFs;
use ibkit_image::{Guest, InspectOptions, inspect};
use ibkit_rules::{CheckOptions, Context, Report, Status, check};
use ibkit_test_utils::with_deadline;
use support::{KVER, clean_tree};

/// Longest a check of the crafted image may take (a hang fails the test).
const DEADLINE: Duration = Duration::from_secs(120);

/// Peak resident set of this process in KiB (`VmHWM`).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The clean fixture tree as a bare ext4 (qcow2), then directory hard links
/// added with `debugfs ln` (which, unlike link(2), links directories):
/// `/etc/a` holds 16 links to itself, one to `/etc` and one to `/`; the
/// kernel's module directory holds a link to itself.
fn looping_image(dir: &Path) -> PathBuf {
    let mut tree = clean_tree();
    // Without modules.dep the kernel facts walk the modules directory.
    tree.remove(&format!("usr/lib/modules/{KVER}/modules.dep"));
    tree.file("etc/a/b/app.conf", "name = demo\n").file(
        "etc/a/deploy.pem",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
    );
    let raw = dir.join("loops.raw");
    run(Command::new("mke2fs")
        .args(["-q", "-F", "-t", "ext4", "-b", "1024", "-d"])
        .arg(tree.path())
        .arg(&raw)
        .arg("4M")
        .env("E2FSPROGS_FAKE_TIME", "1700000000"));
    let mut cmds = String::new();
    for i in 0..16 {
        cmds.push_str(&format!("ln /etc/a /etc/a/self{i:02}\n"));
    }
    cmds.push_str("ln /etc /etc/a/b/up\nln / /etc/a/b/root\n");
    let moddir = format!("/usr/lib/modules/{KVER}/kernel");
    cmds.push_str(&format!("ln {moddir} {moddir}/drivers/again\n"));
    let script = dir.join("debugfs.cmds");
    std::fs::write(&script, cmds).unwrap();
    run(Command::new("debugfs")
        .arg("-w")
        .arg("-f")
        .arg(&script)
        .arg(&raw));
    // The links really are there (debugfs reports failures on stderr only).
    let ls = Command::new("debugfs")
        .args(["-R", "ls -l /etc/a"])
        .arg(&raw)
        .output()
        .unwrap();
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(ls.contains("self15"), "debugfs ln failed: {ls}");
    let qcow2 = dir.join("loops.qcow2");
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2));
    qcow2
}

fn check_all(image: &Path) -> Report {
    let insp = inspect(image, &InspectOptions::default()).expect("crafted image inspects");
    check(&insp, &CheckOptions::default())
}

/// Everything a result says, for "does it mention X" assertions.
fn said(r: &ibkit_rules::RuleResult) -> String {
    let mut s = vec![r.summary.clone()];
    s.extend(r.evidence.iter().map(|e| e.detail.clone()));
    s.extend(
        r.findings
            .iter()
            .map(|f| format!("{} {}", f.message, f.evidence.detail)),
    );
    s.extend(r.unverified.iter().cloned());
    s.join("\n")
}

// Reproduces item 8: the check hung (IMG-NO-SECRETS walked /etc/a 16^12
// times, the guest's lstat cache grew without bound).
#[test]
fn check_finishes_on_directories_hard_linked_to_themselves_and_ancestors() {
    let dir = tempfile::tempdir().unwrap();
    let image = looping_image(dir.path());
    let size = std::fs::metadata(&image).unwrap().len();
    let rss_before = peak_rss_kib();
    let t = Instant::now();
    let report = with_deadline(DEADLINE, "ibkit check on the looping image", {
        let image = image.clone();
        move || check_all(&image)
    });
    let took = t.elapsed();
    let rss_after = peak_rss_kib();
    eprintln!(
        "check of a {size}-byte qcow2 with directory loops: {took:?}, peak RSS {rss_before} -> {rss_after} KiB"
    );
    assert!(
        rss_after.saturating_sub(rss_before) < 256 * 1024,
        "the check grew the process by {} KiB",
        rss_after - rss_before
    );

    let secrets = report.result("IMG-NO-SECRETS").unwrap();
    let text = said(secrets);
    eprintln!("IMG-NO-SECRETS said:\n{text}");
    // The key under the looping directory is found, once.
    assert_eq!(secrets.status, Status::Fail, "{secrets:#?}");
    let keys: Vec<_> = secrets
        .findings
        .iter()
        .filter(|f| {
            f.evidence
                .path
                .as_deref()
                .is_some_and(|p| p.ends_with("/deploy.pem"))
        })
        .collect();
    assert_eq!(keys.len(), 1, "the key is reported once: {keys:#?}");
    assert_eq!(keys[0].evidence.path.as_deref(), Some("/etc/a/deploy.pem"));
    // And the verdict says that directories were reached twice.
    assert!(
        text.contains("hard link or loop (first: /etc/a/"),
        "IMG-NO-SECRETS does not mention the loop:\n{text}"
    );
    assert!(
        secrets.findings.iter().any(|f| f.kind == "directory-loop"),
        "{secrets:#?}"
    );

    // The module walk (no modules.dep) went through the loop under
    // /usr/lib/modules once, found the modules, and says so.
    let virtio = report.result("KERNEL-VIRTIO").unwrap();
    eprintln!("KERNEL-VIRTIO unverified: {:?}", virtio.unverified);
    assert_eq!(virtio.status, Status::Pass, "{virtio:#?}");
    assert!(
        virtio
            .unverified
            .iter()
            .any(|u| u.contains("hard link or loop") && u.contains("/drivers/again")),
        "{virtio:#?}"
    );
}

/// A host directory as a guest (no image needed for a wide tree).
fn dir_guest(root: &Path) -> Guest {
    Guest::new(Arc::new(DirFs::new(root)), "test tree".into())
}

// Reproduces the other half of item 8: directories were not budgeted (only
// files were), so a tree of empty directories was walked in full however
// wide; now the walk stops at the directory budget and the verdict says so.
#[test]
fn img_no_secrets_stops_at_the_directory_budget_and_says_so() {
    let budget = ibkit_rules::rules::img_no_secrets::MAX_DIRS;
    // tmpfs when there is one: 20 000 mkdirs on a disk take half a minute.
    let shm = Path::new("/dev/shm");
    let tmp = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    let root = tmp.path();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
    // budget + 100 empty directories in /srv, 100 per parent.
    for i in 0..(budget + 100) {
        std::fs::create_dir_all(root.join(format!("srv/d{:04}/e{:03}", i / 100, i % 100))).unwrap();
    }
    let guest = dir_guest(root);
    let t = Instant::now();
    let cx = Context::new(&guest, None, None);
    let outcome = (ibkit_rules::rules::img_no_secrets::RULE.check)(&cx);
    eprintln!(
        "IMG-NO-SECRETS on {} directories: {:?}",
        budget + 100,
        t.elapsed()
    );
    let all = outcome
        .unverified
        .iter()
        .chain(outcome.evidence.iter().map(|e| &e.detail))
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!("{all}");
    assert!(
        outcome
            .unverified
            .iter()
            .any(|u| u.contains("directory budget") && u.contains(&budget.to_string())),
        "no word of the directory budget: {all}"
    );
    assert!(
        outcome
            .evidence
            .iter()
            .any(|e| e.detail.contains("directory budget")),
        "the verdict's summary must say the scan stopped early: {all}"
    );
    assert!(
        cx.notes().iter().any(|n| n.contains("directory budget")),
        "the report must be marked incomplete: {:?}",
        cx.notes()
    );
}
