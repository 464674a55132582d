//! A package read into memory from a directory or a zip.
//!
//! The input is an untrusted upload, so reading is bounded: file count,
//! total bytes, zip paths (no absolute, no `..`), no encrypted entries, and
//! symlinks only when they stay inside the package.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Why a package cannot be read at all (lint findings are [`crate::Diagnostic`]s).
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Bounds on what `open` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Files in a directory, entries (directories included) in a zip.
    pub max_files: usize,
    /// Total bytes of a directory's files.
    pub max_dir_bytes: u64,
    /// Total uncompressed bytes of a zip's entries.
    pub max_zip_uncompressed: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_files: 5_000,
            max_dir_bytes: 64 << 20,
            max_zip_uncompressed: 256 << 20,
        }
    }
}

/// Symlinked directories nested deeper than this are a loop or an abuse.
const MAX_DEPTH: usize = 32;

/// Every file of a package, by its `/`-separated path inside the package
/// (the service directory's own name stripped).
#[derive(Debug, Clone, Default)]
pub struct PackageFiles {
    pub files: BTreeMap<String, Vec<u8>>,
    /// Size of the zip the package came from, if it came from one.
    pub zip_bytes: Option<u64>,
}

fn io_err(path: &Path, source: std::io::Error) -> PackageError {
    PackageError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl PackageFiles {
    /// Reads a directory (the package root) or a `.zip` with default limits.
    pub fn open(path: &Path) -> Result<PackageFiles, PackageError> {
        Self::open_with(path, &Limits::default())
    }

    pub fn open_with(path: &Path, limits: &Limits) -> Result<PackageFiles, PackageError> {
        let meta = fs::metadata(path).map_err(|e| io_err(path, e))?;
        if meta.is_dir() {
            read_dir_package(path, limits)
        } else if meta.is_file() {
            read_zip_package(path, meta.len(), limits)
        } else {
            Err(PackageError::Invalid(format!(
                "{}: neither a directory nor a zip file",
                path.display()
            )))
        }
    }

    /// A file's bytes.
    pub fn bytes(&self, path: &str) -> Option<&[u8]> {
        self.files.get(path).map(Vec::as_slice)
    }

    /// A file as UTF-8 text (`None`: absent; `Some(Err)`: not UTF-8).
    pub fn text(&self, path: &str) -> Option<Result<&str, std::str::Utf8Error>> {
        self.bytes(path).map(std::str::from_utf8)
    }

    /// Paths under `dir/` (not recursive into deeper directories when
    /// `direct` is true).
    pub fn under<'a>(&'a self, dir: &'a str, direct: bool) -> impl Iterator<Item = &'a str> + 'a {
        let prefix = format!("{}/", dir.trim_end_matches('/'));
        self.files.keys().filter_map(move |k| {
            let rest = k.strip_prefix(&prefix)?;
            (!direct || !rest.contains('/')).then_some(k.as_str())
        })
    }

    /// The plan names: directories under `plans/`. A file directly in
    /// `plans/` (a stray `plans/README.md`) is no plan: PKG-STRUCTURE warns
    /// about it, and nothing may take it for one.
    pub fn plans(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .under("plans", false)
            .filter_map(|p| Some(p.strip_prefix("plans/")?.split_once('/')?.0.to_string()))
            .filter(|p| !p.is_empty())
            .collect();
        v.dedup();
        v
    }
}

struct DirWalk<'l> {
    root: PathBuf,
    limits: &'l Limits,
    total: u64,
    files: BTreeMap<String, Vec<u8>>,
}

fn read_dir_package(path: &Path, limits: &Limits) -> Result<PackageFiles, PackageError> {
    let root = fs::canonicalize(path).map_err(|e| io_err(path, e))?;
    let mut walk = DirWalk {
        root: root.clone(),
        limits,
        total: 0,
        files: BTreeMap::new(),
    };
    let mut stack = vec![root.clone()];
    walk.dir(&root, "", &mut stack)?;
    Ok(PackageFiles {
        files: walk.files,
        zip_bytes: None,
    })
}

impl DirWalk<'_> {
    /// `rel`: the package path of `dir` (`""` or `plans/free/`); `stack`:
    /// canonical directories being walked, to catch symlink loops.
    fn dir(&mut self, dir: &Path, rel: &str, stack: &mut Vec<PathBuf>) -> Result<(), PackageError> {
        if stack.len() > MAX_DEPTH {
            return Err(PackageError::Invalid(format!(
                "{}: directories nested deeper than {MAX_DEPTH}",
                dir.display()
            )));
        }
        let mut entries: Vec<_> = fs::read_dir(dir)
            .map_err(|e| io_err(dir, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| io_err(dir, e))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let p = entry.path();
            let name = entry.file_name().into_string().map_err(|n| {
                PackageError::Invalid(format!(
                    "{}: file name is not UTF-8",
                    Path::new(&n).display()
                ))
            })?;
            let key = format!("{rel}{name}");
            let lmeta = fs::symlink_metadata(&p).map_err(|e| io_err(&p, e))?;
            let (target, meta) = if lmeta.file_type().is_symlink() {
                // Follow only links that stay in the package: the upload
                // would not carry what they point to.
                let target = fs::canonicalize(&p).map_err(|e| {
                    PackageError::Invalid(format!("{}: broken symlink ({e})", p.display()))
                })?;
                if !target.starts_with(&self.root) {
                    return Err(PackageError::Invalid(format!(
                        "{}: symlink points outside the package, to {}",
                        p.display(),
                        target.display()
                    )));
                }
                let meta = fs::metadata(&target).map_err(|e| io_err(&p, e))?;
                (target, meta)
            } else {
                (p.clone(), lmeta)
            };
            if meta.is_dir() {
                let canon = fs::canonicalize(&target).map_err(|e| io_err(&p, e))?;
                if stack.contains(&canon) {
                    return Err(PackageError::Invalid(format!(
                        "{}: symlink loop",
                        p.display()
                    )));
                }
                stack.push(canon);
                self.dir(&target, &format!("{key}/"), stack)?;
                stack.pop();
            } else if meta.is_file() {
                if self.files.len() >= self.limits.max_files {
                    return Err(PackageError::Invalid(format!(
                        "{}: more than {} files in the package",
                        p.display(),
                        self.limits.max_files
                    )));
                }
                self.total = self.total.saturating_add(meta.len());
                if self.total > self.limits.max_dir_bytes {
                    return Err(PackageError::Invalid(format!(
                        "{}: the package's files exceed {} bytes in total",
                        p.display(),
                        self.limits.max_dir_bytes
                    )));
                }
                let data = fs::read(&target).map_err(|e| io_err(&p, e))?;
                self.files.insert(key, data);
            } else {
                return Err(PackageError::Invalid(format!(
                    "{}: not a regular file or directory",
                    p.display()
                )));
            }
        }
        Ok(())
    }
}

/// A zip entry name as a package path: `/`-separated, no `.` or empty
/// components; `None` when absolute or escaping with `..`.
fn entry_path(name: &str) -> Option<String> {
    // Some Windows archivers write `\`; the zip spec says `/`.
    let name = name.replace('\\', "/");
    let bytes = name.as_bytes();
    let drive = bytes.len() >= 2 && bytes[1] == b':' && bytes[0].is_ascii_alphabetic();
    if name.starts_with('/') || drive || name.contains('\0') {
        return None;
    }
    let mut parts = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => return None,
            c => parts.push(c),
        }
    }
    Some(parts.join("/"))
}

fn read_zip_package(
    path: &Path,
    zip_len: u64,
    limits: &Limits,
) -> Result<PackageFiles, PackageError> {
    let shown = path.display().to_string();
    let zerr = |what: &str, e: zip::result::ZipError| {
        PackageError::Invalid(format!("{shown}: {what}: {e}"))
    };
    let file = fs::File::open(path).map_err(|e| io_err(path, e))?;
    let mut archive =
        zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| zerr("not a zip", e))?;
    if archive.len() > limits.max_files {
        return Err(PackageError::Invalid(format!(
            "{shown}: {} entries, more than {}",
            archive.len(),
            limits.max_files
        )));
    }
    let mut files = BTreeMap::new();
    let mut dirs = BTreeSet::new();
    let mut total: u64 = 0;
    for i in 0..archive.len() {
        let entry = archive.by_index_raw(i).map_err(|e| zerr("entry", e))?;
        let name = entry
            .name()
            .map_err(|e| zerr(&format!("entry {i}"), e))?
            .into_owned();
        let bad = |why: &str| PackageError::Invalid(format!("{shown}: entry {name:?}: {why}"));
        let Some(key) = entry_path(&name) else {
            return Err(bad("absolute path or `..`, refused"));
        };
        if entry.encrypted() {
            return Err(bad("encrypted, refused"));
        }
        if entry.is_symlink() {
            return Err(bad("symlink, refused"));
        }
        if entry.is_dir() {
            dirs.insert(key);
            continue;
        }
        if key.is_empty() {
            return Err(bad("empty path"));
        }
        // The declared size first (cheap), then the bytes actually
        // inflated, since a bomb can lie in its headers.
        let budget = limits.max_zip_uncompressed.saturating_sub(total);
        if entry.size() > budget {
            return Err(bad(&format!(
                "uncompressed size exceeds the {} byte total limit",
                limits.max_zip_uncompressed
            )));
        }
        drop(entry);
        let entry = archive.by_index(i).map_err(|e| zerr(&name, e))?;
        let mut data = Vec::new();
        entry
            .take(budget.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|e| bad(&e.to_string()))?;
        let n = data.len() as u64;
        if n > budget {
            return Err(bad(&format!(
                "inflates past the {} byte total limit",
                limits.max_zip_uncompressed
            )));
        }
        total += n;
        if files.insert(key, data).is_some() {
            return Err(bad("duplicate entry"));
        }
    }
    let files = strip_single_root(files);
    Ok(PackageFiles {
        files,
        zip_bytes: Some(zip_len),
    })
}

/// VK's docs zip the service directory itself: when every file sits under
/// one top-level directory holding `service.yaml`, that directory is the root.
fn strip_single_root(files: BTreeMap<String, Vec<u8>>) -> BTreeMap<String, Vec<u8>> {
    let mut tops = files.keys().map(|k| k.split_once('/').map(|(t, _)| t));
    let Some(Some(top)) = tops.next() else {
        return files;
    };
    let top = top.to_string();
    let single = tops.all(|t| t == Some(top.as_str()));
    if !single || !files.contains_key(&format!("{top}/service.yaml")) {
        return files;
    }
    let prefix = format!("{top}/");
    files
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(&prefix)?.to_string(), v)))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::Write;
    use zip::write::SimpleFileOptions;

    fn write_zip(path: &Path, entries: &[(&str, &[u8])]) {
        let f = fs::File::create(path).unwrap();
        let mut w = zip::ZipWriter::new(f);
        let opts =
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for (name, data) in entries {
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
        w.finish().unwrap();
    }

    #[test]
    fn zip_with_service_dir_is_stripped() {
        let t = tempfile::tempdir().unwrap();
        let z = t.path().join("p.zip");
        write_zip(
            &z,
            &[
                ("svc/service.yaml", b"a: 1\n"),
                ("svc/plans/free/plan.yaml", b"b: 2\n"),
            ],
        );
        let p = PackageFiles::open(&z).unwrap();
        let keys: Vec<_> = p.files.keys().cloned().collect();
        assert_eq!(keys, ["plans/free/plan.yaml", "service.yaml"]);
        assert_eq!(p.zip_bytes, Some(fs::metadata(&z).unwrap().len()));
        assert_eq!(p.text("service.yaml").unwrap().unwrap(), "a: 1\n");
    }

    #[test]
    fn zip_without_service_yaml_in_top_dir_is_kept() {
        let t = tempfile::tempdir().unwrap();
        let z = t.path().join("p.zip");
        write_zip(&z, &[("svc/plan.yaml", b"x")]);
        let p = PackageFiles::open(&z).unwrap();
        assert!(p.files.contains_key("svc/plan.yaml"));
    }

    #[test]
    fn zip_traversal_and_absolute_refused() {
        let t = tempfile::tempdir().unwrap();
        for bad in ["../evil.yaml", "svc/../../evil.yaml", "/etc/passwd"] {
            let z = t.path().join("p.zip");
            write_zip(&z, &[("service.yaml", b"x"), (bad, b"y")]);
            let e = PackageFiles::open(&z).unwrap_err().to_string();
            assert!(e.contains(bad) && e.contains("refused"), "{bad}: {e}");
        }
    }

    #[test]
    fn zip_bomb_refused() {
        let t = tempfile::tempdir().unwrap();
        let z = t.path().join("bomb.zip");
        let zeros = vec![0u8; 2 << 20];
        write_zip(&z, &[("service.yaml", b"x"), ("images/big.png", &zeros)]);
        assert!(
            fs::metadata(&z).unwrap().len() < 64 << 10,
            "compresses well"
        );
        let limits = Limits {
            max_zip_uncompressed: 1 << 20,
            ..Limits::default()
        };
        let e = PackageFiles::open_with(&z, &limits)
            .unwrap_err()
            .to_string();
        assert!(e.contains("images/big.png") && e.contains("limit"), "{e}");
        let few = Limits {
            max_files: 1,
            ..Limits::default()
        };
        let e = PackageFiles::open_with(&z, &few).unwrap_err().to_string();
        assert!(e.contains("2 entries"), "{e}");
    }

    #[test]
    fn zip_encrypted_refused() {
        let t = tempfile::tempdir().unwrap();
        let z = t.path().join("enc.zip");
        write_zip(&z, &[("service.yaml", b"x")]);
        // Set general purpose bit 0 (encrypted) in the local and central
        // headers: the writer has no encryption without extra features.
        let mut b = fs::read(&z).unwrap();
        for (sig, off) in [(b"PK\x03\x04", 6), (b"PK\x01\x02", 8)] {
            let at = b.windows(4).position(|w| w == sig).unwrap();
            b[at + off] |= 1;
        }
        fs::write(&z, b).unwrap();
        let e = PackageFiles::open(&z).unwrap_err().to_string();
        assert!(e.contains("service.yaml") && e.contains("encrypted"), "{e}");
    }

    #[test]
    fn not_a_zip() {
        let t = tempfile::tempdir().unwrap();
        let z = t.path().join("p.zip");
        fs::write(&z, b"hello").unwrap();
        let e = PackageFiles::open(&z).unwrap_err().to_string();
        assert!(e.contains("p.zip") && e.contains("not a zip"), "{e}");
    }

    #[test]
    fn dir_reads_files_and_inside_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir_all(r.join("plans/free/deployment")).unwrap();
        fs::write(r.join("service.yaml"), "a").unwrap();
        fs::write(r.join("plans/free/deployment/deploy.tf"), "tf").unwrap();
        std::os::unix::fs::symlink("service.yaml", r.join("alias.yaml")).unwrap();
        let p = PackageFiles::open(r).unwrap();
        let keys: Vec<_> = p.files.keys().cloned().collect();
        assert_eq!(
            keys,
            [
                "alias.yaml",
                "plans/free/deployment/deploy.tf",
                "service.yaml"
            ]
        );
        assert_eq!(p.zip_bytes, None);
        assert_eq!(p.plans(), ["free"]);
    }

    #[test]
    fn dir_symlink_outside_refused() {
        let t = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        fs::write(out.path().join("secret"), "s").unwrap();
        std::os::unix::fs::symlink(out.path().join("secret"), t.path().join("leak.yaml")).unwrap();
        let e = PackageFiles::open(t.path()).unwrap_err().to_string();
        assert!(e.contains("leak.yaml") && e.contains("outside"), "{e}");
    }

    #[test]
    fn dir_symlink_loop_refused() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("a")).unwrap();
        std::os::unix::fs::symlink("..", t.path().join("a/up")).unwrap();
        let e = PackageFiles::open(t.path()).unwrap_err().to_string();
        assert!(e.contains("up") && e.contains("loop"), "{e}");
    }

    #[test]
    fn dir_limits() {
        let t = tempfile::tempdir().unwrap();
        fs::write(t.path().join("a"), vec![1u8; 100]).unwrap();
        fs::write(t.path().join("b"), vec![1u8; 100]).unwrap();
        let small = Limits {
            max_dir_bytes: 150,
            ..Limits::default()
        };
        let e = PackageFiles::open_with(t.path(), &small)
            .unwrap_err()
            .to_string();
        assert!(e.contains("150 bytes"), "{e}");
        let few = Limits {
            max_files: 1,
            ..Limits::default()
        };
        let e = PackageFiles::open_with(t.path(), &few)
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than 1 files"), "{e}");
    }

    #[test]
    fn entry_paths() {
        assert_eq!(entry_path("a/./b//c").as_deref(), Some("a/b/c"));
        assert_eq!(entry_path("a\\b").as_deref(), Some("a/b"));
        assert_eq!(entry_path("C:/x"), None);
        assert_eq!(entry_path("a/../b"), None);
    }
}
