//! The package database reader against real artefacts: dpkg status files
//! checked against `dpkg-query` itself, RPM databases written by the real
//! `rpm` (sqlite), by BerkeleyDB's `db_load` from rpm's own headers (and
//! cross-checked with rpm's `bdb_ro` reader), and hostile variants of each.
//!
//! Needs `dpkg-query`, `rpm`, `rpmbuild`, `gpg` and `db5.3_load` (installed
//! by scripts/setup.sh).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ibkit_image::Guest;
use ibkit_rules::facts::packages::{self, Package, PackageDbKind, Packages};

// ---------------------------------------------------------------- helpers

fn guest(dir: &Path) -> Guest {
    Guest::new(
        Arc::new(ibkit_image::fs::dir::DirFs::new(dir)),
        "dir".into(),
    )
}

fn put(root: &Path, guest_path: &str, data: impl AsRef<[u8]>) {
    let p = root.join(guest_path.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, data).unwrap();
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("packages-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap()
}

/// Run a command, panicking with its stderr (and a setup hint) on failure.
fn run(cmd: &mut Command) -> Vec<u8> {
    let line = format!("{cmd:?}");
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {line}: {e} (run scripts/setup.sh)"));
    assert!(
        out.status.success(),
        "{line} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// (name, version, arch) of every instance, sorted.
fn nva(p: &Packages) -> Vec<(String, String, String)> {
    let mut v: Vec<_> = p
        .iter()
        .map(|p| (p.name.clone(), p.version.clone(), p.arch.clone()))
        .collect();
    v.sort();
    v
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

/// Best of `n` runs (the first warms the page cache).
fn best_of(n: usize, mut f: impl FnMut()) -> Duration {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .min()
        .unwrap()
}

/// A tiny deterministic PRNG for the corruption loops.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

// ---------------------------------------------------------------- dpkg

/// A realistic status file: multi-line descriptions, conffiles, removed
/// packages with only conffiles left, multi-arch instances, every state.
const STATUS: &str = "\
Package: adduser
Status: install ok installed
Priority: important
Section: admin
Installed-Size: 849
Maintainer: Debian Adduser Developers <adduser@packages.debian.org>
Architecture: all
Multi-Arch: foreign
Version: 3.134
Depends: passwd
Suggests: liblocale-gettext-perl, perl, cron, quota
Conffiles:
 /etc/adduser.conf cc3493ecd2d09837ffdcc3e25fdfff18
 /etc/deluser.conf 11a06baf8245fd9d3ef9c48ccb0d0b29
Description: add and remove users and groups
 This package includes the 'adduser' and 'deluser' commands for creating
 and removing users.
 .
 Adding and removing users and groups is a multi-step process.

Package: bash
Essential: yes
Status: install ok installed
Priority: required
Section: shells
Installed-Size: 7163
Maintainer: Matthias Klose <doko@debian.org>
Architecture: amd64
Multi-Arch: foreign
Version: 5.2.15-2+b2
Replaces: bash-completion (<< 20060301-0), bash-doc (<= 2.05-1)
Depends: base-files (>= 2.1.12), debianutils (>= 5.6-0.1)
Pre-Depends: libc6 (>= 2.36), libtinfo6 (>= 6)
Recommends: bash-completion (>= 20060301-0)
Conffiles:
 /etc/bash.bashrc 89269e1298235f1b12b4c16e4065ad0d
 /etc/skel/.bash_logout 22bfb8c1dd94b5f3813a2b25da67463f
Description: GNU Bourne Again SHell
 Bash is an sh-compatible command language interpreter.
Homepage: http://tiswww.case.edu/php/chet/bash/bashtop.html

Package: dpkg
Essential: yes
Status: install ok installed
Priority: required
Section: admin
Architecture: amd64
Multi-Arch: foreign
Version: 1.21.22
Description: Debian package management system

Package: gdb
Status: deinstall ok config-files
Priority: optional
Section: devel
Installed-Size: 11040
Maintainer: Hector Oron <zumbi@debian.org>
Architecture: amd64
Version: 13.1-3
Conffiles:
 /etc/gdb/gdbinit 0ef6ad4f3b4ec2f4b7e2ed3a8e8c6f79
Description: GNU Debugger
 GDB is used for debugging programs written in C, C++, Java, and others.

Package: libc6
Status: install ok installed
Priority: optional
Section: libs
Installed-Size: 12987
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: amd64
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u4
Depends: libgcc-s1
Description: GNU C Library: Shared libraries
 Contains the standard libraries that are used by nearly all programs on
 the system.

Package: libc6
Status: install ok installed
Priority: optional
Section: libs
Installed-Size: 12312
Maintainer: GNU Libc Maintainers <debian-glibc@lists.debian.org>
Architecture: i386
Multi-Arch: same
Source: glibc
Version: 2.36-9+deb12u4
Description: GNU C Library: Shared libraries
 Contains the standard libraries.

Package: lldb-15
Status: install ok half-configured
Architecture: amd64
Source: llvm-toolchain-15 (1:15.0.6-4)
Version: 1:15.0.6-4+b1
Provides: lldb-x.y, lldb (= 1:15.0.6-4+b1),
 lldb-15-virtual
Description: Next generation, high-performance debugger

Package: ltrace
Status: purge ok not-installed
Architecture: amd64
Version: 0.7.3-6.4

Package: mawk
Status: install ok installed
Architecture: amd64
Version: 1.3.4.20200120-3.1
Provides: awk
Description: Pattern scanning and text processing language
 Mawk is an interpreter for the AWK Programming Language.
  
 (dpkg takes the whitespace-only line above as part of the description)
Homepage: https://invisible-island.net/mawk/

Package: strace
Status: install reinstreq half-installed
Architecture: amd64
Version: 6.1-0.1
Description: System call tracer

Package: systemd
Status: install ok triggers-pending
Architecture: amd64
Version: 252.22-1~deb12u1
Triggers-Pending: /usr/lib/systemd/catalog
Description: system and service manager

Package: man-db
Status: install ok triggers-awaited
Architecture: amd64
Version: 2.11.2-2
Triggers-Awaited: systemd
Description: tools for reading manual pages

Package: valgrind
Status: install ok unpacked
Architecture: amd64
Version: 1:3.19.0-1
Description: instrumentation framework for building dynamic analysis tools

Package: zlib1g
Status: deinstall ok config-files
Architecture: i386
Version: 1:1.2.13.dfsg-1
Multi-Arch: same

Package: zlib1g
Status: install ok installed
Architecture: amd64
Version: 1:1.2.13.dfsg-1
Multi-Arch: same
Description: compression library - runtime
";

/// dpkg-query's view of an admin dir: (name, version, arch) of every
/// package whose files are on disk (status abbreviation i, U, F, H, W, t).
fn dpkg_query(admindir: &Path) -> Vec<(String, String, String)> {
    let out = run(Command::new("dpkg-query")
        .arg(format!("--admindir={}", admindir.display()))
        .args([
            "-W",
            "-f=${db:Status-Abbrev}\t${Package}\t${Version}\t${Architecture}\n",
        ]));
    let mut v: Vec<_> = String::from_utf8(out)
        .unwrap()
        .lines()
        .filter(|l| {
            matches!(
                l.as_bytes().get(1),
                Some(b'i' | b'U' | b'F' | b'H' | b'W' | b't')
            )
        })
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[1].to_owned(), f[2].to_owned(), f[3].to_owned())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn dpkg_status_states_multiarch_and_provides() {
    let dir = tempdir();
    put(dir.path(), "/var/lib/dpkg/status", STATUS);
    let p = packages::load(&guest(dir.path()));
    assert_eq!(p.kind, Some(PackageDbKind::Dpkg));
    assert_eq!(p.path.as_deref(), Some("/var/lib/dpkg/status"));
    assert!(p.known(), "{:?}", p.error);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);

    // On disk: installed, half-configured, unpacked, half-installed,
    // triggers-*; not config-files or not-installed.
    for name in [
        "adduser", "bash", "dpkg", "libc6", "lldb-15", "mawk", "strace", "systemd", "man-db",
        "valgrind", "zlib1g",
    ] {
        assert!(p.get(name).is_some(), "{name} missing");
    }
    assert!(p.get("gdb").is_none(), "config-files must not count");
    assert!(p.get("ltrace").is_none(), "not-installed must not count");
    assert_eq!(p.get("strace").unwrap().state, "half-installed");
    assert_eq!(p.get("valgrind").unwrap().state, "unpacked");
    assert_eq!(p.get("lldb-15").unwrap().state, "half-configured");
    assert_eq!(p.get("systemd").unwrap().state, "triggers-pending");
    assert_eq!(p.get("man-db").unwrap().state, "triggers-awaited");
    assert_eq!(p.get("bash").unwrap().state, "installed");

    // Fields.
    let bash = p.get("bash").unwrap();
    assert_eq!(
        (bash.version.as_str(), bash.arch.as_str()),
        ("5.2.15-2+b2", "amd64")
    );
    assert_eq!(p.get("valgrind").unwrap().version, "1:3.19.0-1");
    assert_eq!(p.get("adduser").unwrap().arch, "all");
    let lldb = p.get("lldb-15").unwrap();
    assert_eq!(lldb.source.as_deref(), Some("llvm-toolchain-15"));
    assert_eq!(lldb.provides, ["lldb-x.y", "lldb", "lldb-15-virtual"]);
    assert_eq!(p.get("libc6").unwrap().source.as_deref(), Some("glibc"));
    assert_eq!(bash.source, None);
    let providers: Vec<&str> = p
        .providers("lldb")
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(providers, ["lldb-15"]);
    assert_eq!(p.providers("awk")[0].name, "mawk");

    // Multi-arch: both instances, the native one (dpkg's arch) in `list`.
    assert_eq!(p.get("libc6").unwrap().arch, "amd64");
    let arches: Vec<&str> = p.get_all("libc6").map(|p| p.arch.as_str()).collect();
    assert_eq!(arches, ["amd64", "i386"]);
    assert_eq!(p.others.len(), 1);
    assert_eq!(p.get("libc6").unwrap().display_name(p.kind), "libc6:amd64");
    // zlib1g:i386 is removed (config-files), zlib1g:amd64 installed.
    assert_eq!(p.get_all("zlib1g").count(), 1);
    assert_eq!(p.get("zlib1g").unwrap().arch, "amd64");
    assert_eq!(p.len(), 12);

    // Ground truth: dpkg-query on the same file.
    assert_eq!(nva(&p), dpkg_query(&dir.path().join("var/lib/dpkg")));
}

#[test]
fn dpkg_parser_edge_cases() {
    // CRLF (lenient: dpkg would refuse the file), a continuation line
    // outside any stanza, a whitespace-only continuation line (not a
    // separator, as in dpkg), lower-case field names, a stanza without
    // Package, one without a state, junk lines, no final newline.
    let text = "Package: a\r\nStatus: install ok installed\r\nVersion: 1\r\nArchitecture: amd64\r\n\r\n\
                \t \n\
                package: b\nstatus: install ok installed\nversion: 2\narchitecture: all\ndescription: x\n \t\n\n\
                Status: install ok installed\nVersion: 3\n\n\
                Package: c\nStatus: install ok\nVersion: 4\n\n\
                Package: d\nStatus:   install   ok    unpacked  \nVersion: 5\nno colon here\n: empty name\n\
                Package: d2\nArchitecture: arm64";
    let got = packages::parse_dpkg_status(text.as_bytes());
    let names: Vec<(&str, &str, &str, &str)> = got
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.version.as_str(),
                p.arch.as_str(),
                p.state.as_str(),
            )
        })
        .collect();
    // A second Package field in d's stanza renames it (dpkg would refuse).
    assert_eq!(
        names,
        [
            ("a", "1", "amd64", "installed"),
            ("b", "2", "all", "installed"),
            ("d2", "5", "arm64", "unpacked")
        ]
    );
    // A whitespace-only line does not end a stanza.
    let joined = packages::parse_dpkg_status(
        b"Package: x\nStatus: install ok installed\nDescription: d\n  \nVersion: 9\n\nPackage: y\nStatus: install ok installed\n",
    );
    assert_eq!(joined.len(), 2);
    assert_eq!(joined[0].version, "9");
    assert!(packages::parse_dpkg_status(b"").is_empty());
    assert!(packages::parse_dpkg_status(b"\n\n\n").is_empty());
    assert!(packages::parse_dpkg_status(&[0xff; 1000]).is_empty());
    // Invalid UTF-8 in a field is replaced, not fatal.
    let latin1 = b"Package: caf\xe9\nStatus: install ok installed\nVersion: 1\n";
    assert_eq!(packages::parse_dpkg_status(latin1)[0].name, "caf\u{fffd}");
}

#[test]
fn dpkg_journal_is_applied_like_dpkg() {
    let dir = tempdir();
    put(dir.path(), "/var/lib/dpkg/status", STATUS);
    // An interrupted run: strace finished installing, valgrind got removed,
    // gdb reinstalled half-way, and a new foreign instance appeared.
    put(
        dir.path(),
        "/var/lib/dpkg/updates/0000",
        "Package: strace\nStatus: install ok installed\nArchitecture: amd64\nVersion: 6.1-0.2\n\n",
    );
    put(
        dir.path(),
        "/var/lib/dpkg/updates/0001",
        "Package: valgrind\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1:3.19.0-1\n",
    );
    put(
        dir.path(),
        "/var/lib/dpkg/updates/0002",
        "Package: gdb\nStatus: install reinstreq unpacked\nArchitecture: amd64\nVersion: 13.1-3\n\n\
         Package: zlib1g\nStatus: install ok installed\nArchitecture: i386\nMulti-Arch: same\nVersion: 1:1.2.13.dfsg-1\n",
    );
    // Later journal numbers win over earlier ones.
    put(
        dir.path(),
        "/var/lib/dpkg/updates/0010",
        "Package: strace\nStatus: install ok installed\nArchitecture: amd64\nVersion: 6.1-0.3\n",
    );
    // Not journal files: ignored, as dpkg ignores them.
    put(
        dir.path(),
        "/var/lib/dpkg/updates/tmp.i",
        "Package: ltrace\nStatus: install ok installed\n",
    );

    let p = packages::load(&guest(dir.path()));
    assert!(p.known(), "{:?}", p.error);
    assert_eq!(p.get("strace").unwrap().version, "6.1-0.3");
    assert_eq!(p.get("strace").unwrap().state, "installed");
    assert!(p.get("valgrind").is_none());
    assert_eq!(p.get("gdb").unwrap().state, "unpacked");
    assert!(p.get("ltrace").is_none());
    assert_eq!(p.get_all("zlib1g").count(), 2);
    assert!(
        p.warnings.iter().any(|w| w.contains("journal")),
        "{:?}",
        p.warnings
    );
    // dpkg-query reads the same journal.
    assert_eq!(nva(&p), dpkg_query(&dir.path().join("var/lib/dpkg")));
}

/// The host's (Debian's) own status file, against dpkg-query on a copy.
#[test]
fn dpkg_host_status_matches_dpkg_query() {
    let status = std::fs::read("/var/lib/dpkg/status").expect("this test runs on Debian");
    let dir = tempdir();
    put(dir.path(), "/var/lib/dpkg/status", &status);
    let g = guest(dir.path());
    let (p, first) = timed(|| packages::load(&g));
    assert!(p.known(), "{:?}", p.error);
    for name in ["dpkg", "bash", "coreutils", "libc6"] {
        assert!(p.get(name).is_some(), "{name} missing");
    }
    let truth = dpkg_query(&dir.path().join("var/lib/dpkg"));
    // Same count as `dpkg-query -W -f='${db:Status-Abbrev}\n' | grep -c '^.[iUFHWt]'`.
    assert_eq!(p.len(), truth.len());
    assert_eq!(nva(&p), truth);
    let best = best_of(5, || {
        packages::load(&g);
    });
    eprintln!(
        "host dpkg status: {} bytes, {} packages, first load {first:?}, best {best:?}",
        status.len(),
        p.len()
    );
}

/// A Debian-sized status file (~2 MB, ~2300 packages): the host's,
/// repeated with renamed packages.
fn debian_sized_status() -> String {
    let host = std::fs::read_to_string("/var/lib/dpkg/status").expect("this test runs on Debian");
    let mut big = String::new();
    let mut copy = 0;
    while big.len() < 2_000_000 {
        for line in host.lines() {
            match line.strip_prefix("Package: ") {
                Some(n) if copy > 0 => big.push_str(&format!("Package: {n}-copy{copy}\n")),
                _ => {
                    big.push_str(line);
                    big.push('\n');
                }
            }
        }
        big.push('\n');
        copy += 1;
    }
    big
}

/// A Debian-sized status (~2 MB, ~2300 packages) built from the host's.
#[test]
fn dpkg_large_status_timing() {
    let big = debian_sized_status();
    let dir = tempdir();
    put(dir.path(), "/var/lib/dpkg/status", &big);
    let g = guest(dir.path());
    let p = packages::load(&g);
    assert!(p.known());
    let truth = dpkg_query(&dir.path().join("var/lib/dpkg"));
    assert_eq!(p.len(), truth.len());
    let best = best_of(5, || {
        packages::load(&g);
    });
    let parse_only = best_of(5, || {
        packages::parse_dpkg_status(big.as_bytes());
    });
    eprintln!(
        "large dpkg status: {} bytes, {} packages: load best {best:?}, parse only {parse_only:?}",
        big.len(),
        p.len()
    );
    assert!(best < Duration::from_secs(2));
}

// ---------------------------------------------------------------- RPM fixtures

const MAIN_SPEC: &str = "\
Name: gdb
Version: 12.1
Release: 1.el9
Epoch: 2
Summary: The GNU debugger
License: GPLv3+
%description
test package
%package -n strace
Version: 5.18
Release: 2.el9
Epoch: 0
Summary: Tracks and displays system calls
%description -n strace
test package
%package -n valgrind
Version: 3.21.0
Release: 8.el9
Epoch: 1
Summary: Dynamic analysis tools
Provides: valgrind-tools = 3.21.0
%description -n valgrind
test package
%package -n docs
Summary: Architecture-independent documentation
BuildArch: noarch
%description -n docs
test package
%install
mkdir -p %{buildroot}/usr/libexec/valgrind
for i in $(seq 1 400); do echo $i > %{buildroot}/usr/libexec/valgrind/tool-with-a-rather-long-file-name-$i.so; done
%files
%files -n strace
%files -n valgrind
/usr/libexec/valgrind
%files -n docs
";

const ONE_SPEC: &str = "\
Name: %{n}
Version: %{v}
Release: %{r}
Summary: test
License: MIT
%description
test package
%files
";

/// Directory of built `.rpm` files and an armored public key, cached under
/// the target dir across runs.
fn rpm_fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("packages-rpms-v1");
        if base.join("done").exists() {
            return base;
        }
        let tmp = tempdir();
        let top = tmp.path().join("top");
        let out = tmp.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(tmp.path().join("main.spec"), MAIN_SPEC).unwrap();
        std::fs::write(tmp.path().join("one.spec"), ONE_SPEC).unwrap();
        let rpmbuild = |spec: &str, target: &str, defs: &[(&str, &str)]| {
            let mut c = Command::new("rpmbuild");
            c.args(["-bb", "--quiet", "--define"])
                .arg(format!("_topdir {}", top.display()))
                .args([
                    "--define",
                    "_build_id_links none",
                    "--define",
                    "__os_install_post %{nil}",
                    "--target",
                    target,
                ]);
            for (k, v) in defs {
                c.arg("--define").arg(format!("{k} {v}"));
            }
            run(c.arg(tmp.path().join(spec)));
        };
        rpmbuild("main.spec", "x86_64", &[]);
        rpmbuild("main.spec", "i686", &[]);
        for (n, v, r) in [
            ("kernel-core", "5.14.0", "362.8.1.el9_3"),
            ("kernel-core", "5.14.0", "427.13.1.el9_4"),
            ("ltrace", "0.7.91", "43.el9"),
        ] {
            rpmbuild("one.spec", "x86_64", &[("n", n), ("v", v), ("r", r)]);
        }
        for arch in ["x86_64", "i686", "noarch"] {
            for e in std::fs::read_dir(top.join("RPMS").join(arch)).unwrap() {
                let e = e.unwrap();
                std::fs::copy(e.path(), out.join(e.file_name())).unwrap();
            }
        }
        // A signing key, imported as rpm's gpg-pubkey pseudo-package.
        let gnupg = tmp.path().join("gnupg");
        std::fs::create_dir_all(&gnupg).unwrap();
        run(Command::new("gpg").env("GNUPGHOME", &gnupg).args([
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
            "--quick-gen-key",
            "ibkit test <test@example.invalid>",
            "rsa2048",
            "sign",
            "never",
        ]));
        let key = run(Command::new("gpg")
            .env("GNUPGHOME", &gnupg)
            .args(["--armor", "--export"]));
        std::fs::write(out.join("key.asc"), key).unwrap();
        std::fs::write(out.join("done"), "").unwrap();
        // Publish atomically; a concurrent run may have won the race.
        if std::fs::rename(&out, &base).is_err() {
            assert!(
                base.join("done").exists(),
                "cannot publish {}",
                base.display()
            );
        }
        base
    })
}

fn rpm_file(name: &str) -> PathBuf {
    let p = rpm_fixtures().join(name);
    assert!(p.exists(), "{} missing", p.display());
    p
}

fn rpm_cmd(dbpath: &Path) -> Command {
    let mut c = Command::new("rpm");
    c.arg("--dbpath")
        .arg(dbpath)
        .args(["--define", "_db_backend sqlite"]);
    c
}

fn rpm_install(dbpath: &Path, files: &[&str]) {
    let mut c = rpm_cmd(dbpath);
    c.args([
        "-i",
        "--justdb",
        "--nodeps",
        "--noscripts",
        "--notriggers",
        "--ignorearch",
        "--ignoreos",
    ]);
    for f in files {
        c.arg(rpm_file(f));
    }
    run(&mut c);
}

const MAIN_RPMS: [&str; 7] = [
    "gdb-12.1-1.el9.x86_64.rpm",
    "gdb-12.1-1.el9.i686.rpm",
    "strace-5.18-2.el9.x86_64.rpm",
    "strace-5.18-2.el9.i686.rpm",
    "valgrind-3.21.0-8.el9.x86_64.rpm",
    "valgrind-3.21.0-8.el9.i686.rpm",
    "docs-12.1-1.el9.noarch.rpm",
];

/// An rpmdb.sqlite written by rpm: the main packages, then the older
/// kernel, then the newer one, then the signing key. Built once per run.
fn main_sqlite() -> &'static [u8] {
    static DB: OnceLock<Vec<u8>> = OnceLock::new();
    DB.get_or_init(|| {
        let tmp = tempdir();
        let db = tmp.path().join("rpm");
        std::fs::create_dir_all(&db).unwrap();
        run(rpm_cmd(&db).arg("--initdb"));
        rpm_install(&db, &MAIN_RPMS);
        rpm_install(&db, &["kernel-core-5.14.0-362.8.1.el9_3.x86_64.rpm"]);
        rpm_install(&db, &["kernel-core-5.14.0-427.13.1.el9_4.x86_64.rpm"]);
        run(rpm_cmd(&db).arg("--import").arg(rpm_file("key.asc")));
        let wal = db.join("rpmdb.sqlite-wal");
        assert!(!wal.exists() || std::fs::metadata(&wal).unwrap().len() == 0);
        std::fs::read(db.join("rpmdb.sqlite")).unwrap()
    })
}

/// rpm's own listing of a database: (name, [epoch:]version-release, arch).
fn rpm_qa(dbpath: &Path, backend: &str) -> Vec<(String, String, String)> {
    let out = run(Command::new("rpm")
        .arg("--dbpath")
        .arg(dbpath)
        .args(["--define", &format!("_db_backend {backend}")])
        .args([
            "-qa",
            "--qf",
            "%{NAME}\t%|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\t%|ARCH?{%{ARCH}}:{}|\n",
        ]));
    let mut v: Vec<_> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            let version = f[1].strip_prefix("0:").unwrap_or(f[1]).to_owned();
            (f[0].to_owned(), version, f[2].to_owned())
        })
        .collect();
    v.sort();
    v
}

/// The header blobs of an rpmdb.sqlite, by hnum.
fn sqlite_blobs(db: &[u8]) -> Vec<(i64, Vec<u8>)> {
    let tmp = tempdir();
    let path = tmp.path().join("rpmdb.sqlite");
    std::fs::write(&path, db).unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let mut stmt = conn
        .prepare("SELECT hnum, blob FROM Packages ORDER BY hnum")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

fn check_main_packages(p: &Packages) {
    let gdb = p.get("gdb").unwrap();
    assert_eq!(
        (gdb.version.as_str(), gdb.arch.as_str()),
        ("2:12.1-1.el9", "x86_64")
    );
    assert_eq!(gdb.source.as_deref(), Some("gdb"));
    assert_eq!(gdb.state, "installed");
    let gdb_arches: Vec<&str> = p.get_all("gdb").map(|p| p.arch.as_str()).collect();
    assert_eq!(gdb_arches.len(), 2);
    assert!(gdb_arches.contains(&"i686"));
    // Epoch 0 is not shown; epoch 1 is.
    assert_eq!(p.get("strace").unwrap().version, "5.18-2.el9");
    let vg = p.get("valgrind").unwrap();
    assert_eq!(vg.version, "1:3.21.0-8.el9");
    assert_eq!(vg.source.as_deref(), Some("gdb"));
    assert!(
        vg.provides.iter().any(|n| n == "valgrind-tools"),
        "{:?}",
        vg.provides
    );
    assert_eq!(p.providers("valgrind-tools").len(), 2);
    assert_eq!(p.get("docs").unwrap().arch, "noarch");
    // Two kernels: the later installed one in `list`.
    assert_eq!(
        p.get("kernel-core").unwrap().version,
        "5.14.0-427.13.1.el9_4"
    );
    assert_eq!(p.get_all("kernel-core").count(), 2);
    // gpg-pubkey has no architecture.
    let key = p.get("gpg-pubkey").unwrap();
    assert_eq!(key.arch, "");
    assert_eq!(key.display_name(p.kind), "gpg-pubkey");
    assert_eq!(p.get("gdb").unwrap().display_name(p.kind), "gdb.x86_64");
    assert_eq!(p.list.len(), 6);
    assert_eq!(p.len(), 10);
}

// ---------------------------------------------------------------- RPM sqlite

#[test]
fn rpm_sqlite_written_by_rpm() {
    let dir = tempdir();
    put(dir.path(), "/var/lib/rpm/rpmdb.sqlite", main_sqlite());
    let p = packages::load(&guest(dir.path()));
    assert_eq!(p.kind, Some(PackageDbKind::RpmSqlite));
    assert_eq!(p.path.as_deref(), Some("/var/lib/rpm/rpmdb.sqlite"));
    assert!(p.known(), "{:?}", p.error);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    check_main_packages(&p);
    // Ground truth: rpm itself on the same file.
    assert_eq!(nva(&p), rpm_qa(&dir.path().join("var/lib/rpm"), "sqlite"));
}

/// Fedora 36+ / openSUSE: the database lives in /usr/lib/sysimage/rpm and
/// /var/lib/rpm is a symlink to it: read once, no "other database" warning.
#[test]
fn rpm_sqlite_in_sysimage_through_symlink() {
    let dir = tempdir();
    put(
        dir.path(),
        "/usr/lib/sysimage/rpm/rpmdb.sqlite",
        main_sqlite(),
    );
    std::fs::create_dir_all(dir.path().join("var/lib")).unwrap();
    std::os::unix::fs::symlink("../../usr/lib/sysimage/rpm", dir.path().join("var/lib/rpm"))
        .unwrap();
    let p = packages::load(&guest(dir.path()));
    assert!(p.known(), "{:?}", p.error);
    assert!(p.warnings.is_empty(), "{:?}", p.warnings);
    assert_eq!(p.path.as_deref(), Some("/var/lib/rpm/rpmdb.sqlite"));
    check_main_packages(&p);

    // Without the symlink.
    std::fs::remove_file(dir.path().join("var/lib/rpm")).unwrap();
    let p = packages::load(&guest(dir.path()));
    assert_eq!(
        p.path.as_deref(),
        Some("/usr/lib/sysimage/rpm/rpmdb.sqlite")
    );
    check_main_packages(&p);
}

/// The ltrace header, as rpm stores it.
fn ltrace_blob() -> &'static [u8] {
    static BLOB: OnceLock<Vec<u8>> = OnceLock::new();
    BLOB.get_or_init(|| {
        let tmp = tempdir();
        let db = tmp.path().join("rpm");
        std::fs::create_dir_all(&db).unwrap();
        run(rpm_cmd(&db).arg("--initdb"));
        rpm_install(&db, &["ltrace-0.7.91-43.el9.x86_64.rpm"]);
        let blobs = sqlite_blobs(&std::fs::read(db.join("rpmdb.sqlite")).unwrap());
        blobs.into_iter().next().unwrap().1
    })
}

/// A database with committed transactions still in its WAL: snapshot the
/// files while the writer holds them open (as an image taken of a running
/// system would).
fn wal_snapshot(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let work = dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let db = work.join("rpmdb.sqlite");
    std::fs::write(&db, main_sqlite()).unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mode, "wal", "rpm creates WAL-mode databases");
    // rpm deletes the index rows itself; we only touch Packages.
    conn.execute_batch("PRAGMA wal_autocheckpoint = 0; PRAGMA foreign_keys = OFF;")
        .unwrap();
    // Transaction 1: ltrace installed. Transaction 2: strace.i686 erased.
    conn.execute("INSERT INTO Packages (blob) VALUES (?1)", [ltrace_blob()])
        .unwrap();
    let strace32: i64 = sqlite_blobs(main_sqlite())
        .into_iter()
        .find(|(_, b)| {
            let p = packages::parse_rpm_header(b).unwrap();
            p.name == "strace" && p.arch == "i686"
        })
        .unwrap()
        .0;
    conn.execute("DELETE FROM Packages WHERE hnum = ?1", [strace32])
        .unwrap();
    let snapshot = (
        std::fs::read(&db).unwrap(),
        std::fs::read(work.join("rpmdb.sqlite-wal")).unwrap(),
    );
    drop(conn);
    assert!(!snapshot.1.is_empty());
    snapshot
}

#[test]
fn rpm_sqlite_uncheckpointed_wal_is_applied() {
    let dir = tempdir();
    let (db, wal) = wal_snapshot(dir.path());
    let root = dir.path().join("root");
    put(&root, "/var/lib/rpm/rpmdb.sqlite", &db);
    put(&root, "/var/lib/rpm/rpmdb.sqlite-wal", &wal);
    let p = packages::load(&guest(&root));
    assert!(p.known(), "{:?}", p.error);
    assert_eq!(p.get("ltrace").unwrap().version, "0.7.91-43.el9");
    assert_eq!(
        p.get_all("strace").count(),
        1,
        "the erase in the WAL is applied"
    );
    assert!(
        p.warnings.iter().any(|w| w.contains("committed frame")),
        "{:?}",
        p.warnings
    );
    // sqlite itself agrees (it applies the WAL on open).
    let work = dir.path().join("check");
    put(&work, "/rpmdb.sqlite", &db);
    put(&work, "/rpmdb.sqlite-wal", &wal);
    assert_eq!(nva(&p), rpm_qa(&work, "sqlite"));

    // The database alone: the WAL's transactions are not there.
    let root2 = dir.path().join("root2");
    put(&root2, "/var/lib/rpm/rpmdb.sqlite", &db);
    let p2 = packages::load(&guest(&root2));
    assert!(p2.known(), "{:?}", p2.error);
    assert!(p2.get("ltrace").is_none());
    assert_eq!(p2.get_all("strace").count(), 2);

    // A damaged last transaction is dropped (its checksums fail), the first
    // is kept: exactly what sqlite does.
    let mut bad = wal.clone();
    let n = bad.len();
    bad[n - 100] ^= 0x55;
    let root3 = dir.path().join("root3");
    put(&root3, "/var/lib/rpm/rpmdb.sqlite", &db);
    put(&root3, "/var/lib/rpm/rpmdb.sqlite-wal", &bad);
    let p3 = packages::load(&guest(&root3));
    assert!(p3.known(), "{:?}", p3.error);
    let check3 = dir.path().join("check3");
    put(&check3, "/rpmdb.sqlite", &db);
    put(&check3, "/rpmdb.sqlite-wal", &bad);
    assert_eq!(nva(&p3), rpm_qa(&check3, "sqlite"));
    assert!(p3.get("ltrace").is_some());
    assert_eq!(p3.get_all("strace").count(), 2);

    // Garbage and truncated WALs never break the read.
    for (i, w) in [
        b"not a wal at all, just text".to_vec(),
        wal[..wal.len() / 2].to_vec(),
        wal[..40].to_vec(),
    ]
    .into_iter()
    .enumerate()
    {
        let r = dir.path().join(format!("root-g{i}"));
        put(&r, "/var/lib/rpm/rpmdb.sqlite", &db);
        put(&r, "/var/lib/rpm/rpmdb.sqlite-wal", &w);
        let p = packages::load(&guest(&r));
        assert!(p.known(), "{:?}", p.error);
        assert!(p.get("gdb").is_some());
    }
}

/// Write a header blob: `entries` of (tag, type, count, data) with the
/// data laid out in order (INT32 aligned).
fn header_blob(entries: &[(u32, u32, u32, Vec<u8>)]) -> Vec<u8> {
    let mut index = Vec::new();
    let mut data = Vec::new();
    for (tag, ty, count, d) in entries {
        if *ty == 4 {
            while data.len() % 4 != 0 {
                data.push(0);
            }
        }
        for v in [*tag, *ty, data.len() as u32, *count] {
            index.extend_from_slice(&v.to_be_bytes());
        }
        data.extend_from_slice(d);
    }
    let mut out = Vec::new();
    out.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(&index);
    out.extend_from_slice(&data);
    out
}

fn s(v: &str) -> Vec<u8> {
    let mut b = v.as_bytes().to_vec();
    b.push(0);
    b
}

fn basic_header(name: &str) -> Vec<(u32, u32, u32, Vec<u8>)> {
    vec![
        (1000, 6, 1, s(name)),
        (1001, 6, 1, s("1.0")),
        (1002, 6, 1, s("1")),
        (1022, 6, 1, s("x86_64")),
    ]
}

/// Set the u32 at `at` (big-endian) in a blob.
fn patch(mut blob: Vec<u8>, at: usize, v: u32) -> Vec<u8> {
    blob[at..at + 4].copy_from_slice(&v.to_be_bytes());
    blob
}

#[test]
fn rpm_header_parser_accepts_real_shapes_and_rejects_lies() {
    // Real headers from rpm.
    for (_, b) in sqlite_blobs(main_sqlite()) {
        packages::parse_rpm_header(&b).unwrap();
    }
    // Region tag first, unknown tags, STRING_ARRAY / I18NSTRING names,
    // epoch, provides.
    let mut e = vec![(63, 7, 16, vec![0u8; 16]), (100, 8, 1, s("C"))];
    e.push((1000, 9, 1, s("name-i18n")));
    e.push((1001, 8, 2, [s("2.0"), s("ignored")].concat()));
    e.push((1002, 6, 1, s("3")));
    e.push((1003, 4, 1, 7u32.to_be_bytes().to_vec()));
    e.push((1022, 6, 1, s("aarch64")));
    e.push((1044, 6, 1, s("some-source-name-2.0-3.src.rpm")));
    e.push((1047, 8, 3, [s("a"), s("b(x)"), s("c")].concat()));
    let p = packages::parse_rpm_header(&header_blob(&e)).unwrap();
    assert_eq!(
        (p.name.as_str(), p.version.as_str(), p.arch.as_str()),
        ("name-i18n", "7:2.0-3", "aarch64")
    );
    assert_eq!(p.source.as_deref(), Some("some-source-name"));
    assert_eq!(p.provides, ["a", "b(x)", "c"]);

    let good = header_blob(&basic_header("ok"));
    packages::parse_rpm_header(&good).unwrap();
    let data_start = 8 + 16 * 4;
    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("short", vec![0, 0, 0]),
        ("il zero", patch(good.clone(), 0, 0)),
        ("il huge", patch(good.clone(), 0, 0x7fff_ffff)),
        ("il above rpm's limit", patch(good.clone(), 0, 0x10000)),
        ("dl huge", patch(good.clone(), 4, 0xffff_ffff)),
        ("dl past the blob", patch(good.clone(), 4, 1000)),
        ("truncated", good[..good.len() - 3].to_vec()),
        (
            "NAME offset past the data",
            patch(good.clone(), 8 + 8, 5000),
        ),
        (
            "NAME offset at u32::MAX",
            patch(good.clone(), 8 + 8, u32::MAX),
        ),
        ("NAME count zero", patch(good.clone(), 8 + 12, 0)),
        ("NAME is an INT32", patch(good.clone(), 8 + 4, 4)),
        ("no NAME", patch(good.clone(), 8, 999)),
        ("no VERSION", patch(good.clone(), 8 + 16, 999)),
        ("no RELEASE", patch(good.clone(), 8 + 32, 999)),
        ("empty NAME", {
            let mut b = good.clone();
            b[data_start] = 0;
            b
        }),
        ("missing NUL", {
            let mut b = good.clone();
            for x in &mut b[data_start..] {
                if *x == 0 {
                    *x = b'A';
                }
            }
            b
        }),
        (
            "EPOCH as a string",
            header_blob(&[basic_header("e"), vec![(1003, 6, 1, s("1"))]].concat()),
        ),
        ("EPOCH past the data", {
            let b = header_blob(
                &[
                    basic_header("e"),
                    vec![(1003, 4, 1, 1u32.to_be_bytes().to_vec())],
                ]
                .concat(),
            );
            patch(b, 8 + 4 * 16 + 8, 1 << 20)
        }),
    ];
    for (what, blob) in bad {
        assert!(
            packages::parse_rpm_header(&blob).is_err(),
            "{what} accepted"
        );
    }
    // Broken optional extras are dropped, not fatal.
    let odd = header_blob(
        &[
            basic_header("x"),
            vec![(1044, 4, 1, vec![0; 4]), (1047, 8, 0x7fff_ffff, s("p"))],
        ]
        .concat(),
    );
    let p = packages::parse_rpm_header(&odd).unwrap();
    assert_eq!((p.source, p.provides.len()), (None, 0));
    // ARCH absent: empty.
    let noarch = header_blob(&basic_header("k")[..3]);
    assert_eq!(packages::parse_rpm_header(&noarch).unwrap().arch, "");
}

/// An rpmdb.sqlite with rpm's schema written by us, holding `blobs`.
fn crafted_sqlite(dir: &Path, rows: &[rusqlite::types::Value]) -> Vec<u8> {
    let path = dir.join("crafted.sqlite");
    let _ = std::fs::remove_file(&path);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "CREATE TABLE 'Packages' (hnum INTEGER PRIMARY KEY AUTOINCREMENT,blob BLOB NOT NULL);",
    )
    .unwrap();
    for r in rows {
        conn.execute("INSERT INTO Packages (blob) VALUES (?1)", [r])
            .unwrap();
    }
    drop(conn);
    std::fs::read(&path).unwrap()
}

#[test]
fn rpm_sqlite_hostile_rows_are_skipped_and_reported() {
    use rusqlite::types::Value;
    let dir = tempdir();
    let good = header_blob(&basic_header("gdb"));
    let rows = vec![
        Value::Blob(good.clone()),
        Value::Blob(patch(good.clone(), 0, 0x7fff_ffff)),
        Value::Blob(patch(good.clone(), 8 + 8, 1 << 30)),
        Value::Blob(good[..good.len() / 2].to_vec()),
        Value::Blob(vec![]),
        Value::Text("not a blob".into()),
        Value::Integer(42),
        Value::Blob(header_blob(&basic_header("strace"))),
    ];
    let db = crafted_sqlite(dir.path(), &rows);
    let root = dir.path().join("root");
    put(&root, "/var/lib/rpm/rpmdb.sqlite", &db);
    let p = packages::load(&guest(&root));
    assert_eq!(p.kind, Some(PackageDbKind::RpmSqlite));
    assert!(!p.known());
    let err = p.error.as_deref().unwrap();
    assert!(err.contains("6 of 8"), "{err}");
    assert!(p.get("gdb").is_some() && p.get("strace").is_some());
}

#[test]
fn rpm_sqlite_hostile_files_never_panic() {
    let dir = tempdir();
    let real = main_sqlite();
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        (
            "garbage".into(),
            b"this is not an sqlite database, just text".repeat(100),
        ),
        ("magic only".into(), b"SQLite format 3\0".to_vec()),
        ("header only".into(), real[..100].to_vec()),
        ("first page".into(), real[..4096].to_vec()),
        ("half".into(), real[..real.len() / 2].to_vec()),
        ("no Packages table".into(), {
            let t = tempdir();
            let path = t.path().join("x.sqlite");
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch("CREATE TABLE Other (x);").unwrap();
            drop(c);
            std::fs::read(&path).unwrap()
        }),
        ("Packages is a view".into(), {
            let t = tempdir();
            let path = t.path().join("x.sqlite");
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE t (hnum, blob); CREATE VIEW Packages AS \
                 WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT x AS hnum, x AS blob FROM r;",
            )
            .unwrap();
            drop(c);
            std::fs::read(&path).unwrap()
        }),
    ];
    // Deterministic random damage to the real database.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for i in 0..60 {
        let mut d = real.to_vec();
        for _ in 0..1 + rng.below(20) {
            let at = rng.below(d.len());
            d[at] = rng.next() as u8;
        }
        cases.push((format!("damaged #{i}"), d));
    }
    for (what, data) in cases {
        let root = dir.path().join("r");
        let _ = std::fs::remove_dir_all(&root);
        put(&root, "/var/lib/rpm/rpmdb.sqlite", &data);
        let (p, t) = timed(|| packages::load(&guest(&root)));
        assert_eq!(p.kind, Some(PackageDbKind::RpmSqlite), "{what}");
        if !what.starts_with("damaged") {
            assert!(p.error.is_some(), "{what}: no error");
        }
        assert!(t < Duration::from_secs(5), "{what}: took {t:?}");
    }
    // A zero-length rpmdb.sqlite is an empty database.
    let root = dir.path().join("empty");
    put(&root, "/var/lib/rpm/rpmdb.sqlite", b"");
    let p = packages::load(&guest(&root));
    assert_eq!(p.kind, Some(PackageDbKind::RpmSqlite));
    assert!(p.known() && p.is_empty());
}

/// RHEL 9-sized database: ~600 packages, ~25 MB, real header blobs.
/// A RHEL 9-sized rpmdb.sqlite (~600 packages, ~21 MB) of real headers:
/// rpm's database plus 600 more rows, half of them the 60 KB valgrind
/// headers. Built once per run.
fn rhel_sized_sqlite() -> &'static [u8] {
    static DB: OnceLock<Vec<u8>> = OnceLock::new();
    DB.get_or_init(|| {
        let dir = tempdir();
        let blobs = sqlite_blobs(main_sqlite());
        let big: Vec<&Vec<u8>> = blobs
            .iter()
            .map(|(_, b)| b)
            .filter(|b| b.len() > 20_000)
            .collect();
        let small: Vec<&Vec<u8>> = blobs
            .iter()
            .map(|(_, b)| b)
            .filter(|b| b.len() <= 20_000)
            .collect();
        let work = dir.path().join("rpmdb.sqlite");
        std::fs::write(&work, main_sqlite()).unwrap();
        let conn = rusqlite::Connection::open(&work).unwrap();
        conn.execute_batch("BEGIN").unwrap();
        for i in 0..600 {
            let b = if i % 2 == 0 {
                big[i % big.len()]
            } else {
                small[i % small.len()]
            };
            conn.execute("INSERT INTO Packages (blob) VALUES (?1)", [b])
                .unwrap();
        }
        conn.execute_batch("COMMIT; PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
        drop(conn);
        std::fs::read(&work).unwrap()
    })
}

#[test]
fn rpm_sqlite_large_timing() {
    let dir = tempdir();
    let db = rhel_sized_sqlite();
    put(dir.path(), "/var/lib/rpm/rpmdb.sqlite", db);
    let g = guest(dir.path());
    let p = packages::load(&g);
    assert!(p.known(), "{:?}", p.error);
    assert_eq!(p.len(), 610);
    let best = best_of(3, || {
        packages::load(&g);
    });
    eprintln!(
        "large rpmdb.sqlite: {} bytes, {} packages: load best {best:?}",
        db.len(),
        p.len()
    );
    assert!(best < Duration::from_secs(5));
}

/// The same headers in a CentOS 7-sized BerkeleyDB file.
#[test]
fn rpm_bdb_large_timing() {
    let dir = tempdir();
    let blobs = sqlite_blobs(rhel_sized_sqlite());
    let file = bdb_packages(&blobs, 1, false, 4096);
    put(dir.path(), "/var/lib/rpm/Packages", &file);
    let g = guest(dir.path());
    let p = packages::load(&g);
    assert!(p.known(), "{:?}", p.error);
    assert_eq!(p.len(), 610);
    let best = best_of(3, || {
        packages::load(&g);
    });
    eprintln!(
        "large BerkeleyDB Packages: {} bytes, {} packages: load best {best:?}",
        file.len(),
        p.len()
    );
    assert!(best < Duration::from_secs(5));
}

// ---------------------------------------------------------------- RPM BerkeleyDB

/// A BerkeleyDB hash `Packages` file made by `db_load` from rpm's headers
/// (as rpm < 4.16 stores them: key = hnum in the file's byte order,
/// plus rpm's key-0 counter record). `copies` repeats the header set.
fn bdb_packages(
    blobs: &[(i64, Vec<u8>)],
    copies: usize,
    big_endian: bool,
    page_size: u32,
) -> Vec<u8> {
    let tmp = tempdir();
    let u32b = |v: u32| {
        if big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    };
    let hex = |b: &[u8]| {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = String::with_capacity(b.len() * 2);
        for &x in b {
            out.push(DIGITS[(x >> 4) as usize] as char);
            out.push(DIGITS[(x & 15) as usize] as char);
        }
        out
    };
    let mut dump = "VERSION=3\nformat=bytevalue\ntype=hash\nHEADER=END\n".to_owned();
    let n = blobs.len() * copies;
    dump.push_str(&format!(
        " {}\n {}\n",
        hex(&u32b(0)),
        hex(&u32b(n as u32 + 1))
    ));
    for i in 0..n {
        dump.push_str(&format!(
            " {}\n {}\n",
            hex(&u32b(i as u32 + 1)),
            hex(&blobs[i % blobs.len()].1)
        ));
    }
    dump.push_str("DATA=END\n");
    std::fs::write(tmp.path().join("dump"), dump).unwrap();
    run(Command::new("db5.3_load")
        .arg("-c")
        .arg(format!(
            "db_lorder={}",
            if big_endian { 4321 } else { 1234 }
        ))
        .arg("-c")
        .arg(format!("db_pagesize={page_size}"))
        .arg("-f")
        .arg(tmp.path().join("dump"))
        .arg(tmp.path().join("Packages")));
    std::fs::read(tmp.path().join("Packages")).unwrap()
}

#[test]
fn rpm_bdb_from_db_load_matches_rpm_bdb_ro() {
    let blobs = sqlite_blobs(main_sqlite());
    let dir = tempdir();
    for (copies, big_endian, page_size) in [
        (1, false, 4096),
        (1, true, 4096),
        (40, false, 4096),
        (25, true, 1024),
        (3, false, 65536),
    ] {
        let file = bdb_packages(&blobs, copies, big_endian, page_size);
        // The file exercises what matters: headers in overflow chains, and
        // (when big enough) several buckets and overflow bucket pages.
        let types: Vec<u8> = file.chunks(page_size as usize).map(|p| p[25]).collect();
        assert!(types.contains(&7), "no overflow pages");
        if copies >= 25 {
            assert!(types.iter().filter(|&&t| t == 13).count() > 4, "{types:?}");
        }
        let root = dir
            .path()
            .join(format!("root-{copies}-{big_endian}-{page_size}"));
        put(&root, "/var/lib/rpm/Packages", &file);
        let p = packages::load(&guest(&root));
        let what = format!("{copies} copies, big-endian {big_endian}, pages {page_size}");
        assert_eq!(p.kind, Some(PackageDbKind::RpmBdb), "{what}");
        assert_eq!(p.path.as_deref(), Some("/var/lib/rpm/Packages"));
        assert!(p.known(), "{what}: {:?}", p.error);
        assert_eq!(p.len(), 10 * copies, "{what}");
        if copies == 1 {
            check_main_packages(&p);
        }
        // rpm's own read-only BerkeleyDB reader on the same file.
        assert_eq!(
            nva(&p),
            rpm_qa(&root.join("var/lib/rpm"), "bdb_ro"),
            "{what}"
        );
    }
}

#[test]
fn rpm_bdb_damage_is_reported_never_panics() {
    let blobs = sqlite_blobs(main_sqlite());
    let file = bdb_packages(&blobs, 10, false, 4096);
    let dir = tempdir();
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("truncated to half".into(), file[..file.len() / 2].to_vec()),
        ("meta page only".into(), file[..4096].to_vec()),
        ("tiny".into(), file[..100].to_vec()),
        ("garbage".into(), vec![0x5a; 64 * 1024]),
    ];
    let mut rng = Rng(42);
    for i in 0..80 {
        let mut d = file.clone();
        for _ in 0..1 + rng.below(8) {
            let at = rng.below(d.len());
            d[at] = rng.next() as u8;
        }
        cases.push((format!("damaged #{i}"), d));
    }
    // An overflow chain looping on itself.
    cases.push(("overflow loop".into(), {
        let mut d = file.clone();
        let ps = 4096;
        for pg in 1..d.len() / ps {
            if d[pg * ps + 25] == 7 {
                let me = (pg as u32).to_le_bytes();
                d[pg * ps + 16..pg * ps + 20].copy_from_slice(&me);
            }
        }
        d
    }));
    for (what, data) in cases {
        let root = dir.path().join("r");
        let _ = std::fs::remove_dir_all(&root);
        put(&root, "/var/lib/rpm/Packages", &data);
        let (p, t) = timed(|| packages::load(&guest(&root)));
        assert_eq!(p.kind, Some(PackageDbKind::RpmBdb), "{what}");
        assert!(t < Duration::from_secs(5), "{what}: took {t:?}");
        if !what.starts_with("damaged") {
            assert!(p.error.is_some(), "{what}: damage not reported");
        }
        if p.error.is_none() {
            // Undetected damage may only hit bytes we do not read.
            assert!(p.len() <= 100, "{what}");
        }
    }
}

// ---------------------------------------------------------------- RPM ndb

fn adler32(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + x as u32) % 65521;
        b = (b + a) % 65521;
    }
    (b << 16) | a
}

/// An ndb `Packages.db` laid out as rpm's rpmpkg.c writes it (no tool on
/// Debian writes this format).
fn ndb_packages(blobs: &[&[u8]]) -> Vec<u8> {
    const PAGE: usize = 4096;
    let slot_pages = (blobs.len() + 2).div_ceil(PAGE / 16);
    let mut f = vec![0u8; slot_pages * PAGE];
    f[..4].copy_from_slice(b"RpmP");
    f[8..12].copy_from_slice(&1u32.to_le_bytes());
    f[12..16].copy_from_slice(&(slot_pages as u32).to_le_bytes());
    f[16..20].copy_from_slice(&(blobs.len() as u32 + 1).to_le_bytes());
    for slot in (32..slot_pages * PAGE).step_by(16) {
        f[slot..slot + 4].copy_from_slice(b"Slot");
    }
    for (i, blob) in blobs.iter().enumerate() {
        let pkgidx = i as u32 + 1;
        let blkoff = f.len() / 16;
        let blkcnt = (16 + blob.len() + 12).div_ceil(16);
        let mut area = Vec::new();
        area.extend_from_slice(b"BlbS");
        area.extend_from_slice(&pkgidx.to_le_bytes());
        area.extend_from_slice(&1_700_000_000u32.to_le_bytes());
        area.extend_from_slice(&(blob.len() as u32).to_le_bytes());
        area.extend_from_slice(blob);
        area.resize(blkcnt * 16 - 12, 0);
        let adl = adler32(&area);
        area.extend_from_slice(&adl.to_le_bytes());
        area.extend_from_slice(&(blob.len() as u32).to_le_bytes());
        area.extend_from_slice(b"BlbE");
        f.extend_from_slice(&area);
        let slot = 32 + i * 16;
        f[slot + 4..slot + 8].copy_from_slice(&pkgidx.to_le_bytes());
        f[slot + 8..slot + 12].copy_from_slice(&(blkoff as u32).to_le_bytes());
        f[slot + 12..slot + 16].copy_from_slice(&(blkcnt as u32).to_le_bytes());
    }
    f
}

#[test]
fn rpm_ndb_packages_db() {
    let blobs = sqlite_blobs(main_sqlite());
    let refs: Vec<&[u8]> = blobs.iter().map(|(_, b)| b.as_slice()).collect();
    let file = ndb_packages(&refs);
    let dir = tempdir();
    put(dir.path(), "/usr/lib/sysimage/rpm/Packages.db", &file);
    let p = packages::load(&guest(dir.path()));
    assert_eq!(p.kind, Some(PackageDbKind::RpmNdb));
    assert!(p.known(), "{:?}", p.error);
    check_main_packages(&p);

    // Damage: a broken blob loses one package and is reported.
    let mut bad = file.clone();
    let at = 4096 + 2;
    bad[at] ^= 0xff;
    let root = dir.path().join("bad");
    put(&root, "/usr/lib/sysimage/rpm/Packages.db", &bad);
    let p = packages::load(&guest(&root));
    assert!(p.error.is_some());
    assert_eq!(p.len(), 9);
    let mut rng = Rng(7);
    for _ in 0..60 {
        let mut d = file.clone();
        for _ in 0..1 + rng.below(8) {
            let at = rng.below(d.len());
            d[at] = rng.next() as u8;
        }
        put(&root, "/usr/lib/sysimage/rpm/Packages.db", &d);
        let p = packages::load(&guest(&root));
        assert!(p.len() <= 10);
    }
    for cut in [0, 10, 100, 4096, file.len() / 2] {
        put(&root, "/usr/lib/sysimage/rpm/Packages.db", &file[..cut]);
        packages::load(&guest(&root));
    }
}

// ---------------------------------------------------------------- choosing

#[test]
fn no_database_and_empty_databases() {
    let dir = tempdir();
    let p = packages::load(&guest(dir.path()));
    assert_eq!(p.kind, None);
    assert!(!p.known());
    assert!(p.is_empty());

    // A Debian host with rpm installed has an empty /var/lib/rpm.
    std::fs::create_dir_all(dir.path().join("var/lib/rpm")).unwrap();
    put(dir.path(), "/var/lib/dpkg/status", "");
    let p = packages::load(&guest(dir.path()));
    assert_eq!(p.kind, Some(PackageDbKind::Dpkg));
    assert!(p.known() && p.is_empty());

    // status is a directory: an error, not a silent "no packages".
    let dir = tempdir();
    std::fs::create_dir_all(dir.path().join("var/lib/dpkg/status")).unwrap();
    let p = packages::load(&guest(dir.path()));
    assert_eq!(p.kind, Some(PackageDbKind::Dpkg));
    assert!(p.error.is_some());
}

#[test]
fn the_fuller_database_wins_and_the_other_is_mentioned() {
    let dir = tempdir();
    put(dir.path(), "/var/lib/dpkg/status", STATUS);
    put(dir.path(), "/var/lib/rpm/rpmdb.sqlite", main_sqlite());
    let p = packages::load(&guest(dir.path()));
    assert_eq!(p.kind, Some(PackageDbKind::Dpkg));
    assert_eq!(p.len(), 12);
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("/var/lib/rpm/rpmdb.sqlite") && w.contains("10 packages")),
        "{:?}",
        p.warnings
    );

    // A broken sqlite next to a BerkeleyDB file (an interrupted
    // conversion): the readable one is used.
    let dir = tempdir();
    let blobs = sqlite_blobs(main_sqlite());
    put(
        dir.path(),
        "/var/lib/rpm/Packages",
        bdb_packages(&blobs, 1, false, 4096),
    );
    put(
        dir.path(),
        "/var/lib/rpm/rpmdb.sqlite",
        b"garbage garbage garbage",
    );
    let p = packages::load(&guest(dir.path()));
    assert_eq!(p.kind, Some(PackageDbKind::RpmBdb));
    assert!(p.known(), "{:?}", p.error);
    check_main_packages(&p);

    // A stale BerkeleyDB file left by a conversion to sqlite, even a fuller
    // one: rpm uses the sqlite database, so do we.
    let dir = tempdir();
    put(
        dir.path(),
        "/var/lib/rpm/Packages",
        bdb_packages(&blobs, 3, false, 4096),
    );
    put(dir.path(), "/var/lib/rpm/rpmdb.sqlite", main_sqlite());
    let p = packages::load(&guest(dir.path()));
    assert_eq!(p.kind, Some(PackageDbKind::RpmSqlite));
    assert!(p.known(), "{:?}", p.error);
    check_main_packages(&p);
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("/var/lib/rpm/Packages (rpm-bdb)") && w.contains("30 packages")),
        "{:?}",
        p.warnings
    );
}

#[test]
fn packages_from_instances_prefers_native_arch() {
    let pk = |name: &str, arch: &str, version: &str| Package {
        name: name.into(),
        arch: arch.into(),
        version: version.into(),
        state: "installed".into(),
        ..Package::default()
    };
    let p = Packages::from_instances(
        PackageDbKind::RpmSqlite,
        None,
        vec![
            pk("glibc", "i686", "2.34-1"),
            pk("glibc", "x86_64", "2.34-1"),
            pk("rpm", "x86_64", "4.16.1.3-1"),
            pk("foo", "noarch", "1-1"),
            pk("foo", "i686", "1-1"),
        ],
    );
    assert_eq!(p.get("glibc").unwrap().arch, "x86_64");
    assert_eq!(p.get("foo").unwrap().arch, "noarch");
    assert_eq!(p.others.len(), 2);
    let counts: BTreeMap<&str, usize> = p.iter().fold(BTreeMap::new(), |mut m, p| {
        *m.entry(p.name.as_str()).or_default() += 1;
        m
    });
    assert_eq!(counts["glibc"], 2);
}

// ---------------------------------------------------------------- through a disk image

/// Timings through the real ext4 reader: a Debian-sized status file and a
/// RHEL 9-sized rpmdb.sqlite inside an ext4 image.
#[test]
fn timing_through_an_ext4_image() {
    use ibkit_test_utils::{Container, FsType, Layout, Tree, Volume, build_image};
    let status = debian_sized_status();
    let rpmdb = rhel_sized_sqlite();
    let mut deb = Tree::new();
    deb.file("/etc/os-release", "ID=debian\nVERSION_ID=\"12\"\n")
        .file("/var/lib/dpkg/status", &status);
    let mut rhel = Tree::new();
    rhel.file("/etc/os-release", "ID=\"rhel\"\nVERSION_ID=\"9.4\"\n")
        .file("/var/lib/rpm/rpmdb.sqlite", rpmdb);
    for (what, tree, size) in [("debian dpkg", deb, 64), ("rhel rpm sqlite", rhel, 128)] {
        let image = build_image(
            &Layout::Bare(Volume::new(FsType::Ext4, size).with_tree(&tree)),
            Container::Raw,
        )
        .unwrap();
        let insp = ibkit_image::inspect(&image, &Default::default()).unwrap();
        let (p, first) = timed(|| packages::load(&insp.guest));
        assert!(p.known(), "{what}: {:?}", p.error);
        assert!(p.len() > 600, "{what}");
        let best = best_of(5, || {
            packages::load(&insp.guest);
        });
        eprintln!(
            "{what} through ext4: {} packages, first {first:?}, best {best:?}",
            p.len()
        );
    }
}
