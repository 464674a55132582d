//! Crash-safe file writes.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Numbers the temporary files of this process.
static NEXT: AtomicU64 = AtomicU64::new(0);

/// Writes `data` to `path` atomically with permission bits `mode`: a
/// temporary file in the same directory, fsync, rename over `path`, fsync of
/// the directory. Readers see the old or the new content, never a partial
/// file, and the new content survives a crash once this returns.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    write_atomic_owned(path, data, mode, None)
}

/// [`write_atomic`], the new file given `owner` (uid, gid) and `mode`
/// before it replaces `path`: no reader ever sees the new content with
/// other owners or permissions.
///
/// The temporary file is created exclusively (`O_EXCL`: a symbolic link
/// planted at its name is never followed) and owner and mode are set
/// through its descriptor, so a directory writable by someone else cannot
/// redirect the write.
pub fn write_atomic_owned(
    path: &Path,
    data: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    // Unique per process and call: two writers of the same file (a cache
    // shared by processes) never write into each other's temporary file.
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.{}.{n}.tmp", std::process::id()));
    // A leftover of a crashed process with the same pid (or a planted
    // link): removed, never written through.
    let _ = fs::remove_file(&tmp);
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
        // The umask may have narrowed the mode (and chown clears set-id bits).
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

/// fsync of a directory, so a rename or create in it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn replaces_content_with_the_mode_and_leaves_no_temp_file() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("state.json");
        write_atomic(&path, b"old", 0o644)?;
        write_atomic(&path, b"new", 0o600)?;
        assert_eq!(fs::read(&path)?, b"new");
        assert_eq!(fs::metadata(&path)?.mode() & 0o777, 0o600);
        let names: Vec<_> = fs::read_dir(dir.path())?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
        Ok(())
    }

    #[test]
    fn a_failed_rename_removes_the_temp_file() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        // A directory in the way: the rename fails.
        let path = dir.path().join("taken");
        fs::create_dir(&path)?;
        fs::write(path.join("x"), b"")?;
        assert!(write_atomic(&path, b"data", 0o600).is_err());
        let left = fs::read_dir(dir.path())?.count();
        assert_eq!(left, 1, "only the directory in the way remains");
        Ok(())
    }

    #[test]
    fn a_link_planted_at_the_temp_name_is_not_followed() -> io::Result<()> {
        let dir = tempfile::tempdir()?;
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious")?;
        let path = dir.path().join("token");
        // The next temporary names of this process, each a link to the
        // victim (other tests of this binary may take a few numbers).
        let next = NEXT.load(Ordering::Relaxed);
        for n in next..next + 64 {
            let tmp = dir
                .path()
                .join(format!(".token.{}.{n}.tmp", std::process::id()));
            std::os::unix::fs::symlink(&victim, tmp)?;
        }
        let me = (
            fs::metadata(dir.path())?.uid(),
            fs::metadata(dir.path())?.gid(),
        );
        write_atomic_owned(&path, b"key", 0o640, Some(me))?;
        assert_eq!(fs::read(&victim)?, b"precious");
        assert_eq!(fs::read(&path)?, b"key");
        let meta = fs::symlink_metadata(&path)?;
        assert!(meta.file_type().is_file());
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert_eq!((meta.uid(), meta.gid()), me);
        Ok(())
    }
}
