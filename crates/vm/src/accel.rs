//! KVM or TCG? Decided by really booting a kernel under KVM, because on some
//! hosts (nested virtualisation) `/dev/kvm` opens fine but a guest kernel
//! hangs early ("Probing EDD") and never finishes booting.

use std::fs::OpenOptions;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ibkit_support::clock::{format_utc, unix_secs};
use ibkit_support::text::tail_lines;
use serde::{Deserialize, Serialize};

use crate::binary::qemu_binary;
use crate::procs::ChildProc;

/// Console lines showing that the kernel finished booting.
const BOOTED_MARKERS: [&str; 2] = ["Run /init as init process", "Freeing unused kernel image"];
const CACHE_FILE: &str = "kvm-probe.json";
const CACHE_VALIDITY: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// "kvm" or "tcg", as QEMU spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The accelerator to use and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccelChoice {
    pub accel: Accel,
    /// e.g. "KVM probe boot stalled: no 'Run /init' within 10 s (last console
    /// line: 'Probing EDD ...')", "/dev/kvm: permission denied", "requested".
    pub reason: String,
}

impl AccelChoice {
    /// A choice the user made (`--accel tcg`): reason "requested".
    pub fn requested(accel: Accel) -> AccelChoice {
        AccelChoice {
            accel,
            reason: "requested".into(),
        }
    }
    fn tcg(reason: impl Into<String>) -> AccelChoice {
        AccelChoice {
            accel: Accel::Tcg,
            reason: reason.into(),
        }
    }
}

/// Can `/dev/kvm` be opened read-write? `Err` carries the reason for TCG.
pub fn kvm_device_usable() -> Result<(), String> {
    match OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => Ok(()),
        Err(e) => Err(match e.kind() {
            std::io::ErrorKind::NotFound => {
                "/dev/kvm: not found (no KVM on this host, or not passed into the container)".into()
            }
            std::io::ErrorKind::PermissionDenied => {
                "/dev/kvm: permission denied (add the user to group 'kvm')".into()
            }
            _ => format!("/dev/kvm: {e}"),
        }),
    }
}

/// Remove ANSI escape sequences (the kernel and SeaBIOS clear the screen with
/// them) and other control characters except newlines.
fn strip_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // Parameters, then one final byte in '@'..='~'.
                    for n in chars.by_ref() {
                        if ('@'..='~').contains(&n) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\n' => out.push('\n'),
            '\r' => out.push('\n'),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

fn last_line(text: &str) -> String {
    let text = strip_escapes(text);
    let line = text
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap_or("");
    if line.is_empty() {
        return "(no console output)".into();
    }
    let mut s: String = line.chars().take(160).collect();
    if s.len() < line.len() {
        s.push_str("...");
    }
    format!("'{s}'")
}

/// Boot `kernel` (+ `initrd`) under KVM and wait up to `timeout` for the
/// console to show that the kernel finished booting. QEMU is killed in every
/// case. Falls back to TCG with a reason when `/dev/kvm` cannot be opened
/// read-write, QEMU fails, or the boot stalls.
pub async fn probe_kvm(kernel: &Path, initrd: Option<&Path>, timeout: Duration) -> AccelChoice {
    if let Err(reason) = kvm_device_usable() {
        return AccelChoice::tcg(reason);
    }
    boot_probe(kernel, initrd, timeout).await
}

async fn boot_probe(kernel: &Path, initrd: Option<&Path>, timeout: Duration) -> AccelChoice {
    for (what, p) in [("kernel", Some(kernel)), ("initrd", initrd)] {
        if let Some(p) = p
            && !p.is_file()
        {
            return AccelChoice::tcg(format!(
                "KVM probe not run: {what} {} not found",
                p.display()
            ));
        }
    }
    let dir = std::env::temp_dir().join(format!(
        "ibkit-kvm-probe-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        return AccelChoice::tcg(format!(
            "KVM probe not run: cannot create {}: {e}",
            dir.display()
        ));
    }
    let choice = boot_probe_in(&dir, kernel, initrd, timeout).await;
    let _ = std::fs::remove_dir_all(&dir);
    tracing::info!(accel = %choice.accel, reason = %choice.reason, "KVM probe");
    choice
}

async fn boot_probe_in(
    dir: &Path,
    kernel: &Path,
    initrd: Option<&Path>,
    timeout: Duration,
) -> AccelChoice {
    let serial = dir.join("serial.log");
    let log = dir.join("qemu.log");
    let qemu = qemu_binary();
    let mut cmd = Command::new(&qemu);
    cmd.args(["-accel", "kvm", "-kernel"]).arg(kernel);
    if let Some(i) = initrd {
        cmd.arg("-initrd").arg(i);
    }
    cmd.args([
        "-append",
        "console=ttyS0 panic=-1",
        "-no-reboot",
        "-nographic",
        "-monitor",
        "none",
        "-m",
        "256",
        "-serial",
    ])
    .arg(format!("file:{}", serial.display()));
    let log_file = match std::fs::File::create(&log) {
        Ok(f) => f,
        Err(e) => return AccelChoice::tcg(format!("KVM probe not run: {}: {e}", log.display())),
    };
    let log_err = match log_file.try_clone() {
        Ok(f) => f,
        Err(e) => return AccelChoice::tcg(format!("KVM probe not run: {}: {e}", log.display())),
    };
    cmd.stdin(Stdio::null()).stdout(log_file).stderr(log_err);
    let mut child = match ChildProc::spawn(&mut cmd, "kvm-probe") {
        Ok(c) => c,
        Err(e) => {
            return AccelChoice::tcg(format!(
                "KVM probe not run: cannot start {}: {e}",
                qemu.display()
            ));
        }
    };
    let start = Instant::now();
    let choice = loop {
        let console =
            String::from_utf8_lossy(&std::fs::read(&serial).unwrap_or_default()).into_owned();
        if let Some(m) = BOOTED_MARKERS.iter().find(|m| console.contains(**m)) {
            break AccelChoice {
                accel: Accel::Kvm,
                reason: format!(
                    "KVM probe boot reached '{m}' in {:.1} s",
                    start.elapsed().as_secs_f64()
                ),
            };
        }
        if let Ok(Some(status)) = child.try_wait() {
            let err = std::fs::read_to_string(&log).unwrap_or_default();
            break AccelChoice::tcg(format!(
                "KVM probe: QEMU exited ({status}) before the kernel booted: {} (last console line: {})",
                tail_lines(err.trim(), 3).replace('\n', " | "),
                last_line(&console)
            ));
        }
        if start.elapsed() >= timeout {
            break AccelChoice::tcg(format!(
                "KVM probe boot stalled: no 'Run /init' within {} s (last console line: {})",
                timeout.as_secs_f64().round(),
                last_line(&console)
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    child.kill_and_reap();
    choice
}

#[derive(Serialize, Deserialize)]
struct CacheEntry {
    key: String,
    probed_at_unix: u64,
    choice: AccelChoice,
}

/// The cache key: QEMU's version line and the host kernel release.
pub async fn probe_cache_key() -> String {
    let qemu = qemu_binary();
    let version = match tokio::process::Command::new(&qemu)
        .arg("--version")
        .kill_on_drop(true)
        .output()
        .await
    {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_string(),
        Err(e) => format!("{} unavailable: {e}", qemu.display()),
    };
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    format!("{version} | kernel {release}")
}

fn read_cache(path: &Path, key: &str, now: u64) -> Option<AccelChoice> {
    let text = std::fs::read_to_string(path).ok()?;
    let entry: CacheEntry = serde_json::from_str(&text).ok()?;
    let age = now.checked_sub(entry.probed_at_unix)?;
    if entry.key != key || age >= CACHE_VALIDITY.as_secs() {
        return None;
    }
    Some(AccelChoice {
        accel: entry.choice.accel,
        reason: format!(
            "cached probe from {}: {}",
            format_utc(entry.probed_at_unix),
            entry.choice.reason
        ),
    })
}

fn write_cache(path: &Path, entry: &CacheEntry) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let text = serde_json::to_string_pretty(entry).map_err(std::io::Error::other)?;
    ibkit_support::fs::write_atomic(path, text.as_bytes(), 0o644)
}

/// [`probe_kvm`] with a cache (`cache_dir/kvm-probe.json`) keyed by the QEMU
/// version and the host kernel release, valid 24 h. `/dev/kvm` is checked
/// every time (it is cheap); only the boot probe's result is cached.
pub async fn probe_kvm_cached(
    kernel: &Path,
    initrd: Option<&Path>,
    timeout: Duration,
    cache_dir: &Path,
) -> AccelChoice {
    if let Err(reason) = kvm_device_usable() {
        return AccelChoice::tcg(reason);
    }
    let path = cache_dir.join(CACHE_FILE);
    let key = probe_cache_key().await;
    let now = unix_secs();
    if let Some(c) = read_cache(&path, &key, now) {
        tracing::debug!(path = %path.display(), "using cached KVM probe");
        return c;
    }
    let choice = boot_probe(kernel, initrd, timeout).await;
    let entry = CacheEntry {
        key,
        probed_at_unix: now,
        choice: choice.clone(),
    };
    if let Err(e) = write_cache(&path, &entry) {
        tracing::warn!(path = %path.display(), "cannot write the KVM probe cache: {e}");
    }
    choice
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_console_line_without_escapes() {
        let console = "Booting from ROM...\r\nProbing EDD (edd=off to disable)... ok\r\n\u{1b}c\u{1b}[?7l\u{1b}[2J";
        assert_eq!(
            last_line(console),
            "'Probing EDD (edd=off to disable)... ok'"
        );
        assert_eq!(last_line("\u{1b}[2J"), "(no console output)");
    }

    #[test]
    fn serde_names() {
        let c = AccelChoice::requested(Accel::Kvm);
        let j = serde_json::to_string(&c).expect("json");
        assert_eq!(j, r#"{"accel":"kvm","reason":"requested"}"#);
    }

    #[test]
    fn cache_validity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(CACHE_FILE);
        let entry = CacheEntry {
            key: "QEMU emulator version 10.0.2 | kernel 6.1".into(),
            probed_at_unix: 1_795_752_000,
            choice: AccelChoice::tcg("KVM probe boot stalled"),
        };
        write_cache(&path, &entry).expect("write");
        let hit = read_cache(&path, &entry.key, 1_795_752_000 + 3600).expect("valid");
        assert_eq!(hit.accel, Accel::Tcg);
        assert_eq!(
            hit.reason,
            "cached probe from 2026-11-27T04:00:00Z: KVM probe boot stalled"
        );
        assert!(read_cache(&path, "other key", 1_795_752_000 + 3600).is_none());
        assert!(read_cache(&path, &entry.key, 1_795_752_000 + 25 * 3600).is_none());
        std::fs::write(&path, "garbage").expect("write");
        assert!(read_cache(&path, &entry.key, 1_795_752_000).is_none());
    }

    #[tokio::test]
    async fn probe_with_a_missing_kernel_falls_back_to_tcg() {
        let c = probe_kvm(
            Path::new("/nonexistent/vmlinuz"),
            None,
            Duration::from_secs(2),
        )
        .await;
        assert_eq!(c.accel, Accel::Tcg);
        assert!(
            c.reason.contains("/dev/kvm") || c.reason.contains("/nonexistent/vmlinuz"),
            "{}",
            c.reason
        );
    }

    #[tokio::test]
    async fn probe_with_a_kernel_that_is_not_one() {
        // A file that is not a kernel: QEMU refuses it and exits; the reason quotes it.
        if kvm_device_usable().is_err() {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let k = dir.path().join("vmlinuz");
        std::fs::write(&k, b"not a kernel").expect("write");
        let c = probe_kvm(&k, None, Duration::from_secs(20)).await;
        assert_eq!(c.accel, Accel::Tcg);
        assert!(c.reason.contains("QEMU exited"), "{}", c.reason);
        assert!(
            crate::procs::registered()
                .iter()
                .all(|(_, n)| n != "kvm-probe")
        );
    }
}
