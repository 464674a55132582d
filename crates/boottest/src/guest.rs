//! Parsers for what the guest prints: `ss -Hltunp`, `/etc/shadow`,
//! `/proc/cmdline`, `/proc/meminfo`, the serial console log. Pure
//! functions, so the checks can be tested on recorded output. Guest output
//! is untrusted: nothing here panics or trusts a length.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A listening socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listener {
    /// `tcp` or `udp`.
    pub proto: String,
    /// Local address as printed (`0.0.0.0`, `::`, `*`, `127.0.0.53`).
    pub address: String,
    /// Interface scope (`%lo`, `%ens3`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Port.
    pub port: u16,
    /// Process names from `users:(("sshd",pid=..))`.
    pub processes: Vec<String>,
}

impl Listener {
    /// Reachable only from the guest itself.
    pub fn is_loopback(&self) -> bool {
        let a = self.address.as_str();
        self.interface.as_deref() == Some("lo")
            || a.starts_with("127.")
            || a == "::1"
            || a.starts_with("::ffff:127.")
    }

    /// `8080/tcp on 0.0.0.0 (python3)`.
    pub fn describe(&self) -> String {
        let procs = if self.processes.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.processes.join(", "))
        };
        let iface = self
            .interface
            .as_deref()
            .map(|i| format!("%{i}"))
            .unwrap_or_default();
        format!(
            "{}/{} on {}{}{}",
            self.port, self.proto, self.address, iface, procs
        )
    }
}

/// Parse `ss -Hltunp` (or `-Hltun`) output. Lines that do not parse are
/// returned separately so the report can show them.
pub fn parse_ss(output: &str) -> (Vec<Listener>, Vec<String>) {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    for line in output.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match parse_ss_line(line) {
            Some(l) => out.push(l),
            None => bad.push(line.to_string()),
        }
    }
    (out, bad)
}

fn parse_ss_line(line: &str) -> Option<Listener> {
    let cols: Vec<&str> = line.split_whitespace().collect();
    // Netid State Recv-Q Send-Q Local Peer [Process]
    if cols.len() < 6 {
        return None;
    }
    let proto = match cols[0] {
        "tcp" | "tcp6" => "tcp",
        "udp" | "udp6" => "udp",
        _ => return None,
    };
    let (addr, port) = cols[4].rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let addr = addr.trim_start_matches('[');
    let (addr, interface) = match addr.split_once('%') {
        Some((a, i)) => (a, Some(i.trim_end_matches(']').to_string())),
        None => (addr, None),
    };
    let address = addr.trim_end_matches(']').to_string();
    let processes = cols
        .get(6..)
        .map(|rest| process_names(&rest.join(" ")))
        .unwrap_or_default();
    Some(Listener {
        proto: proto.into(),
        address,
        interface,
        port,
        processes,
    })
}

/// `users:(("sshd",pid=1,fd=3),("sshd",pid=2,fd=3))` -> ["sshd"].
fn process_names(s: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find("((\"").or_else(|| rest.find("(\"")) {
        let after = &rest[i..];
        let Some(q) = after.find('"') else { break };
        let after = &after[q + 1..];
        let Some(end) = after.find('"') else { break };
        let name = after[..end].to_string();
        if !names.contains(&name) {
            names.push(name);
        }
        rest = &after[end + 1..];
    }
    names
}

/// A password problem in the live `/etc/shadow`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowIssue {
    /// Account.
    pub user: String,
    /// `empty` (no password needed), `well-known`, or `preset` (a usable
    /// hash that came with the image and first boot did not replace).
    pub kind: String,
    /// What the hash is (`usable SHA-512 crypt ($6$) hash`), never the hash.
    pub detail: String,
    /// Redacted password for `well-known` (`t**r`), never the hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redacted: Option<String>,
}

/// What `/etc/shadow` says after first boot: accounts with a usable
/// password, which of them first boot replaced, and problems.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowSummary {
    /// Accounts whose hash is usable (not locked), problems or not.
    pub with_password: Vec<String>,
    /// Accounts with a usable hash that differs from the image's (set at
    /// first boot, e.g. cloud-init `chpasswd` with RANDOM).
    pub replaced: Vec<String>,
    /// Empty, well-known or preset passwords.
    pub issues: Vec<ShadowIssue>,
}

/// Judge each account of the live shadow file with `ibkit check`'s own
/// judgement ([`ibkit_rules::facts::password::judge`]), against the image's
/// shadow file (`image_shadow`, name → hash): a usable hash is a default
/// password when it is the one the image shipped. The hashes never leave
/// this function.
pub fn judge_shadow(text: &str, image_shadow: &BTreeMap<String, String>) -> ShadowSummary {
    use ibkit_rules::facts::password::{PasswordState, judge, shadow_lines};
    let mut s = ShadowSummary::default();
    for l in shadow_lines(text) {
        let j = judge(l.hash, l.user);
        let issue = |kind: &str| ShadowIssue {
            user: l.user.into(),
            kind: kind.into(),
            detail: j.describe(),
            redacted: j.well_known.clone(),
        };
        match j.state {
            PasswordState::Locked => {}
            PasswordState::Empty => {
                s.with_password.push(l.user.into());
                s.issues.push(issue("empty"));
            }
            PasswordState::Usable(_) => {
                s.with_password.push(l.user.into());
                let shipped = image_shadow.get(l.user).is_some_and(|h| h == l.hash);
                if j.well_known.is_some() {
                    s.issues.push(issue("well-known"));
                } else if shipped {
                    s.issues.push(issue("preset"));
                }
                if !shipped {
                    s.replaced.push(l.user.into());
                }
            }
        }
    }
    s
}

/// The image's `/etc/shadow` as name → hash, for [`judge_shadow`].
pub fn shadow_hashes(text: &str) -> BTreeMap<String, String> {
    ibkit_rules::facts::password::shadow_lines(text)
        .map(|l| (l.user.to_string(), l.hash.to_string()))
        .collect()
}

/// The device of the last `console=` on a kernel command line (`ttyS0`
/// from `console=ttyS0,115200`): the one `/dev/console` is.
pub fn last_console(cmdline: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("console="))
        .next_back()
        .map(|c| c.split(',').next().unwrap_or(c).to_string())
}

/// Every `console=` device on a kernel command line, in order.
pub fn consoles(cmdline: &str) -> Vec<String> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("console="))
        .map(|c| c.split(',').next().unwrap_or(c).to_string())
        .collect()
}

/// `MemTotal` in KiB.
pub fn mem_total_kib(meminfo: &str) -> Option<u64> {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// What the serial console showed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialSummary {
    /// Bytes captured.
    pub bytes: u64,
    /// Lines that look like kernel messages (`[    1.234567] ...`).
    pub kernel_lines: usize,
    /// The `Linux version ...` banner, if the kernel printed it here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linux_version: Option<String>,
    /// The last lines (control characters removed), for failure reports.
    pub tail: Vec<String>,
}

/// Summarise a serial log: kernel lines, banner, the last `tail` lines.
pub fn summarize_serial(log: &str, tail: usize) -> SerialSummary {
    let mut s = SerialSummary {
        bytes: log.len() as u64,
        ..Default::default()
    };
    let mut lines: Vec<String> = Vec::new();
    for raw in log.split(['\n', '\r']) {
        let line = clean_line(raw);
        if line.trim().is_empty() {
            continue;
        }
        if is_kernel_line(&line) {
            s.kernel_lines += 1;
        }
        if s.linux_version.is_none()
            && let Some(i) = line.find("Linux version ")
        {
            s.linux_version = Some(line[i..].chars().take(120).collect());
        }
        lines.push(line);
    }
    let from = lines.len().saturating_sub(tail);
    s.tail = lines.split_off(from);
    s
}

fn is_kernel_line(line: &str) -> bool {
    let t = line.trim_start();
    let Some(rest) = t.strip_prefix('[') else {
        return false;
    };
    let Some(end) = rest.find(']') else {
        return false;
    };
    let stamp = rest[..end].trim();
    match stamp.split_once('.') {
        Some((a, b)) => {
            !a.is_empty()
                && a.chars().all(|c| c.is_ascii_digit())
                && b.len() == 6
                && b.chars().all(|c| c.is_ascii_digit())
        }
        None => false,
    }
}

/// Drop ANSI escape sequences and control characters; cap the length.
fn clean_line(raw: &str) -> String {
    let mut out = String::new();
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ ... final byte in @..~
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            } else {
                chars.next();
            }
            continue;
        }
        if c.is_control() && c != '\t' {
            continue;
        }
        out.push(c);
        if out.len() > 300 {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    // `ss -Hltunp` on the example Debian 12 image (plus an extra listener).
    const SS: &str = "\
udp   UNCONN 0      0            0.0.0.0%ens3:68        0.0.0.0:*    users:((\"dhclient\",pid=321,fd=9))
udp   UNCONN 0      0          127.0.0.1:323        0.0.0.0:*    users:((\"chronyd\",pid=400,fd=5))
tcp   LISTEN 0      128          0.0.0.0:22         0.0.0.0:*    users:((\"sshd\",pid=500,fd=3))
tcp   LISTEN 0      5            0.0.0.0:8080       0.0.0.0:*    users:((\"python3\",pid=501,fd=3))
tcp   LISTEN 0      128             [::]:22            [::]:*    users:((\"sshd\",pid=500,fd=4))
tcp   LISTEN 0      4096   127.0.0.53%lo:53         0.0.0.0:*    users:((\"systemd-resolve\",pid=300,fd=14))
tcp   LISTEN 0      5                  *:9090             *:*
garbage line
";

    #[test]
    fn parses_ss() {
        let (l, bad) = parse_ss(SS);
        assert_eq!(bad, vec!["garbage line".to_string()]);
        assert_eq!(l.len(), 7);
        assert_eq!(l[0].proto, "udp");
        assert_eq!(l[0].port, 68);
        assert_eq!(l[0].interface.as_deref(), Some("ens3"));
        assert_eq!(l[0].processes, vec!["dhclient".to_string()]);
        assert!(l[1].is_loopback());
        assert_eq!(l[4].address, "::");
        assert!(!l[4].is_loopback());
        assert!(l[5].is_loopback());
        assert_eq!(l[6].address, "*");
        assert_eq!(l[6].port, 9090);
        assert!(l[6].processes.is_empty());
        assert_eq!(l[3].describe(), "8080/tcp on 0.0.0.0 (python3)");
    }

    #[test]
    fn shadow_judgement_never_leaks_hashes() {
        // sha512crypt of "toor" (openssl passwd -6 -salt abcdefgh toor).
        let toor = "$6$abcdefgh$hEHJCSqyNGISD5ir9k725MA80Nt8ygDruqp/Agk3yTj6ApoajAxcPht9xoaDMO2.mjiDimXcD6z3anRFYBXz40";
        // A vendor's preset password, DES (13 characters, no `$`) and not
        // in the well-known list: python3 -c 'import crypt; print(crypt.crypt("Vend0r-2024","xy"))'.
        let des = "xyttPwF8l4IQg";
        // Set at first boot (differs from the image's hash).
        let fresh = "$6$q1w2e3r4$Kx9vQe2y0v0Xb1Yz3nZqL8y6mQm1nOeJ3aTqL2wUuQ0Yz1Lm2Nn3Oo4Pp5Qq6Rr7Ss8Tt9Uu0Vv1Ww2Xx3Yy4";
        let image = shadow_hashes(&format!(
            "root:{toor}:1::::::\nvendor:{des}:1::::::\napp:$6$old$old:1::::::\n"
        ));
        let text = format!(
            "root:{toor}:19000:0:99999:7:::\ndaemon:*:19000::::::\nguest::19000::::::\nibkit:!:1::::::\nvendor:{des}:1::::::\napp:{fresh}:1::::::\n"
        );
        let s = judge_shadow(&text, &image);
        assert_eq!(s.with_password, vec!["root", "guest", "vendor", "app"]);
        let kinds: Vec<(&str, &str)> = s
            .issues
            .iter()
            .map(|i| (i.user.as_str(), i.kind.as_str()))
            .collect();
        assert_eq!(
            kinds,
            vec![
                ("root", "well-known"),
                ("guest", "empty"),
                ("vendor", "preset")
            ]
        );
        assert_eq!(s.replaced, vec!["app"]);
        let red = s.issues[0].redacted.clone().unwrap_or_default();
        assert!(red.starts_with('t') && red != "toor", "{red}");
        assert!(s.issues[2].detail.contains("DES"), "{:?}", s.issues[2]);
        let json = serde_json::to_string(&s).unwrap_or_default();
        assert!(
            !json.contains(toor) && !json.contains(des) && !json.contains(fresh),
            "{json}"
        );
    }

    #[test]
    fn consoles_and_meminfo() {
        let c = "BOOT_IMAGE=/boot/vmlinuz root=UUID=x ro console=tty0 console=ttyS0,115200";
        assert_eq!(last_console(c).as_deref(), Some("ttyS0"));
        assert_eq!(consoles(c), vec!["tty0", "ttyS0"]);
        assert_eq!(last_console("root=/dev/vda1"), None);
        assert_eq!(
            mem_total_kib("MemTotal:        4026532 kB\nMemFree: 1 kB"),
            Some(4026532)
        );
        assert_eq!(mem_total_kib("garbage"), None);
    }

    #[test]
    fn serial_summary() {
        let log = "\u{1b}[2J\u{1b}[01;01HGRUB loading\r\n[    0.000000] Linux version 6.1.0-40-cloud-amd64 (debian-kernel@lists.debian.org)\r\n[    1.234567] virtio_blk virtio1: [vda] 4194304 512-byte logical blocks\r\nDebian GNU/Linux 12 debian ttyS0\r\n";
        let s = summarize_serial(log, 2);
        assert_eq!(s.kernel_lines, 2);
        assert!(
            s.linux_version
                .as_deref()
                .is_some_and(|v| v.starts_with("Linux version 6.1.0"))
        );
        assert_eq!(s.tail.len(), 2);
        assert_eq!(s.tail[1], "Debian GNU/Linux 12 debian ttyS0");
        let none = summarize_serial("GRUB loading\nWelcome\n[abc] x\n", 5);
        assert_eq!(none.kernel_lines, 0);
        assert!(none.linux_version.is_none());
    }
}
