//! [`Tree`]: a directory tree under construction, later copied into a filesystem.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown, symlink};
use std::path::{Component, Path, PathBuf};

use tempfile::TempDir;

/// A directory tree under construction (a temporary directory that is deleted
/// when the `Tree` is dropped), written from Rust and then used as the content
/// of a [`Volume`](crate::Volume).
///
/// Guest paths are absolute or relative paths inside the guest filesystem
/// (`"/etc/hostname"` and `"etc/hostname"` mean the same); `..` is refused.
/// Missing parent directories are created with mode 0755. Files are owned by
/// the user running the tests (root in CI) until [`Tree::owner`] says
/// otherwise. Timestamps are not part of the fixture (they are not hashed).
///
/// The methods panic on I/O errors: this is test scaffolding, and a failure to
/// write into a fresh temporary directory is not something a test can handle.
#[derive(Debug)]
pub struct Tree {
    dir: TempDir,
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

impl Clone for Tree {
    /// A new temporary directory with the same entries, modes and owners.
    fn clone(&self) -> Self {
        let mut t = Tree::new();
        t.copy_from(self);
        t
    }
}

fn fail(what: &str, path: &Path, e: std::io::Error) -> ! {
    panic!("ibkit-test-utils: Tree: {what} {}: {e}", path.display())
}

impl Tree {
    /// An empty tree whose root directory has mode 0755 (the mode the
    /// filesystem's root directory gets).
    pub fn new() -> Tree {
        let dir = tempfile::Builder::new()
            .prefix("ibkit-tree-")
            .tempdir()
            .unwrap_or_else(|e| fail("creating temp dir in", &std::env::temp_dir(), e));
        let t = Tree { dir };
        t.set_mode(t.path(), 0o755);
        t
    }

    /// The tree's root directory on the host.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The host path of `guest_path` inside this tree.
    pub fn host_path(&self, guest_path: &str) -> PathBuf {
        let mut p = self.path().to_path_buf();
        for c in Path::new(guest_path).components() {
            match c {
                Component::Normal(n) => p.push(n),
                Component::RootDir | Component::CurDir => {}
                Component::ParentDir | Component::Prefix(_) => {
                    panic!("ibkit-test-utils: Tree: guest path {guest_path:?} may not contain `..`")
                }
            }
        }
        p
    }

    fn set_mode(&self, p: &Path, mode: u32) {
        fs::set_permissions(p, fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| fail("chmod", p, e));
    }

    fn parents(&self, host: &Path) {
        let mut missing = Vec::new();
        let mut cur = host.parent();
        while let Some(p) = cur {
            if p.symlink_metadata().is_ok() {
                break;
            }
            missing.push(p.to_path_buf());
            cur = p.parent();
        }
        for p in missing.iter().rev() {
            fs::create_dir(p).unwrap_or_else(|e| fail("mkdir", p, e));
            self.set_mode(p, 0o755);
        }
    }

    fn clear(&self, host: &Path) {
        if let Ok(m) = host.symlink_metadata() {
            let r = if m.is_dir() {
                fs::remove_dir_all(host)
            } else {
                fs::remove_file(host)
            };
            r.unwrap_or_else(|e| fail("removing", host, e));
        }
    }

    /// Writes a regular file with mode 0644 (replacing whatever was there).
    pub fn file(&mut self, guest_path: &str, contents: impl AsRef<[u8]>) -> &mut Self {
        self.file_mode(guest_path, contents, 0o644)
    }

    /// Writes a regular file with the given mode (permission bits plus
    /// setuid/setgid/sticky, e.g. `0o4755`).
    pub fn file_mode(
        &mut self,
        guest_path: &str,
        contents: impl AsRef<[u8]>,
        mode: u32,
    ) -> &mut Self {
        let host = self.host_path(guest_path);
        self.parents(&host);
        if host.symlink_metadata().is_ok_and(|m| !m.is_file()) {
            self.clear(&host);
        }
        fs::write(&host, contents.as_ref()).unwrap_or_else(|e| fail("writing", &host, e));
        self.set_mode(&host, mode);
        self
    }

    /// Creates a directory (mode 0755) and its parents; an existing directory
    /// is left as it is.
    pub fn dir(&mut self, guest_path: &str) -> &mut Self {
        let host = self.host_path(guest_path);
        match host.symlink_metadata() {
            Ok(m) if m.is_dir() => return self,
            Ok(_) => self.clear(&host),
            Err(_) => {}
        }
        self.parents(&host);
        fs::create_dir(&host).unwrap_or_else(|e| fail("mkdir", &host, e));
        self.set_mode(&host, 0o755);
        self
    }

    /// Creates a directory with the given mode (e.g. `0o1777` for /tmp, `0o700`
    /// for a home directory); changes the mode of an existing directory.
    pub fn dir_mode(&mut self, guest_path: &str, mode: u32) -> &mut Self {
        self.dir(guest_path);
        let host = self.host_path(guest_path);
        self.set_mode(&host, mode);
        self
    }

    /// Creates a symbolic link `guest_path` -> `target` (the target is stored as
    /// given, usually an absolute guest path, and need not exist).
    pub fn symlink(&mut self, guest_path: &str, target: &str) -> &mut Self {
        let host = self.host_path(guest_path);
        self.parents(&host);
        self.clear(&host);
        symlink(target, &host).unwrap_or_else(|e| fail("symlink", &host, e));
        self
    }

    /// Removes a file, symlink or directory (recursively); a missing path is
    /// not an error.
    pub fn remove(&mut self, guest_path: &str) -> &mut Self {
        let host = self.host_path(guest_path);
        if host == self.path() {
            panic!("ibkit-test-utils: Tree::remove: cannot remove the root directory");
        }
        self.clear(&host);
        self
    }

    /// Changes the mode of an existing entry (not of a symlink).
    pub fn chmod(&mut self, guest_path: &str, mode: u32) -> &mut Self {
        let host = self.host_path(guest_path);
        self.set_mode(&host, mode);
        self
    }

    /// Sets the owner of an existing entry (a symlink itself, not its target).
    /// Changing to another user than your own needs root, which the test
    /// runner is (locally and in CI).
    pub fn owner(&mut self, guest_path: &str, uid: u32, gid: u32) -> &mut Self {
        let host = self.host_path(guest_path);
        lchown(&host, Some(uid), Some(gid)).unwrap_or_else(|e| fail("chown", &host, e));
        self
    }

    /// Reads a file back (handy for tests that edit a copied tree).
    pub fn read(&self, guest_path: &str) -> Vec<u8> {
        let host = self.host_path(guest_path);
        fs::read(&host).unwrap_or_else(|e| fail("reading", &host, e))
    }

    /// Whether something exists at `guest_path` (a dangling symlink counts).
    pub fn exists(&self, guest_path: &str) -> bool {
        self.host_path(guest_path).symlink_metadata().is_ok()
    }

    /// Copies every entry of `other` into this tree, replacing entries of the
    /// same name and keeping modes, owners and symlink targets.
    pub fn copy_from(&mut self, other: &Tree) -> &mut Self {
        self.copy_dir_from(other.path())
    }

    /// Copies the contents of a host directory (files, directories and
    /// symlinks) into this tree's root, keeping modes and owners.
    pub fn copy_dir_from(&mut self, src: &Path) -> &mut Self {
        let root = self.path().to_path_buf();
        copy_entries(src, &root);
        self
    }
}

fn copy_entries(src: &Path, dst: &Path) {
    let rd = fs::read_dir(src).unwrap_or_else(|e| fail("reading dir", src, e));
    let mut names: Vec<_> = rd
        .map(|e| {
            e.unwrap_or_else(|e| fail("reading dir", src, e))
                .file_name()
        })
        .collect();
    names.sort();
    for name in names {
        let s = src.join(&name);
        let d = dst.join(&name);
        let m = s.symlink_metadata().unwrap_or_else(|e| fail("stat", &s, e));
        let existing = d.symlink_metadata().ok();
        let ft = m.file_type();
        if ft.is_dir() {
            if existing.as_ref().is_some_and(|e| !e.is_dir()) {
                fs::remove_file(&d).unwrap_or_else(|e| fail("removing", &d, e));
            }
            if !d.is_dir() {
                fs::create_dir(&d).unwrap_or_else(|e| fail("mkdir", &d, e));
            }
            copy_entries(&s, &d);
        } else {
            if let Some(e) = existing {
                let r = if e.is_dir() {
                    fs::remove_dir_all(&d)
                } else {
                    fs::remove_file(&d)
                };
                r.unwrap_or_else(|e| fail("removing", &d, e));
            }
            if ft.is_symlink() {
                let t = fs::read_link(&s).unwrap_or_else(|e| fail("readlink", &s, e));
                symlink(&t, &d).unwrap_or_else(|e| fail("symlink", &d, e));
            } else if ft.is_file() {
                fs::copy(&s, &d).unwrap_or_else(|e| fail("copying to", &d, e));
            } else {
                panic!(
                    "ibkit-test-utils: Tree: cannot copy special file {}",
                    s.display()
                );
            }
        }
        if !ft.is_symlink() {
            fs::set_permissions(&d, fs::Permissions::from_mode(m.mode() & 0o7777))
                .unwrap_or_else(|e| fail("chmod", &d, e));
        }
        lchown(&d, Some(m.uid()), Some(m.gid())).unwrap_or_else(|e| fail("chown", &d, e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(t: &Tree, p: &str) -> u32 {
        t.host_path(p)
            .symlink_metadata()
            .map(|m| m.mode() & 0o7777)
            .unwrap_or(0)
    }

    #[test]
    fn builds_entries_with_modes() {
        let mut t = Tree::new();
        t.file("/etc/hostname", "h\n")
            .file_mode("usr/bin/su", "x", 0o4755)
            .dir_mode("/tmp", 0o1777)
            .dir("/var/empty")
            .symlink("/etc/localtime", "/usr/share/zoneinfo/UTC");
        assert_eq!(mode(&t, "/"), 0o755);
        assert_eq!(mode(&t, "/etc"), 0o755);
        assert_eq!(mode(&t, "/etc/hostname"), 0o644);
        assert_eq!(mode(&t, "/usr/bin/su"), 0o4755);
        assert_eq!(mode(&t, "/tmp"), 0o1777);
        assert_eq!(t.read("/etc/hostname"), b"h\n");
        assert_eq!(
            fs::read_link(t.host_path("/etc/localtime")).ok(),
            Some(PathBuf::from("/usr/share/zoneinfo/UTC"))
        );
        t.remove("/etc/hostname")
            .remove("/nonexistent")
            .remove("/var");
        assert!(!t.exists("/etc/hostname") && !t.exists("/var/empty") && t.exists("/etc"));
        // A file replaces a directory and the other way round.
        t.file("/tmp", "now a file");
        assert_eq!(t.read("/tmp"), b"now a file");
        t.dir("/tmp");
        assert!(t.host_path("/tmp").is_dir());
    }

    #[test]
    fn owner_and_copies() {
        let mut t = Tree::new();
        t.dir_mode("/home/alice", 0o700)
            .file("/home/alice/.bashrc", "x")
            .owner("/home/alice", 1000, 1001)
            .symlink("/home/alice/l", "/nowhere")
            .owner("/home/alice/l", 1000, 1000);
        let c = t.clone();
        let m = c
            .host_path("/home/alice")
            .symlink_metadata()
            .expect("copied");
        assert_eq!((m.uid(), m.gid(), m.mode() & 0o7777), (1000, 1001, 0o700));
        let l = c
            .host_path("/home/alice/l")
            .symlink_metadata()
            .expect("copied");
        assert!(l.file_type().is_symlink());
        assert_eq!(l.uid(), 1000);
        let mut d = Tree::new();
        d.file("/home", "a file in the way").file("/etc/keep", "k");
        d.copy_from(&t);
        assert!(d.host_path("/home/alice").is_dir());
        assert_eq!(d.read("/etc/keep"), b"k");
    }

    #[test]
    #[should_panic(expected = "..")]
    fn refuses_parent_components() {
        Tree::new().file("/etc/../../x", "");
    }
}
