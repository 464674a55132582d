//! The marketplace's billing token file (VK's `ivkcs_user_data`
//! `token_file_path`, `token_file_owner`, `token_file_group`,
//! `token_rotate`): the agent fetches the instance's marketplace API key
//! from the service (`GET /v1/agent/billing-token`) and keeps it in a file
//! the vendor's application reads before each push of usage.
//!
//! The file holds exactly the newest key (no line break). It is replaced
//! atomically, owner, group and mode set before the rename, so at every
//! instant the path holds a whole valid key (once it was fetched): never an
//! empty or partial file, never a moment without one. Failures (service
//! down, a refused path, an unknown user) are retried and never delete the
//! file. The key is a [`Secret`] and never logged.
//!
//! The attacker is a local user of the VM: the path must be absolute and
//! plain, a symbolic link on the way must be root's, and every directory on
//! the (resolved) way must be owned by root and writable only by root
//! (sticky directories such as `/tmp` aside) — the file's own directory
//! may also be its owner's (or its group's, for group write). Missing
//! directories are created, root's, 0755.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher as _, Hasher as _};
use std::io::Read as _;
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ibkit_support::fs::write_atomic_owned;
use ibkit_support::secret::Secret;

use crate::agent::Backoff;
use crate::client::{Api, ApiError};
use crate::config::{BillingTokenConfig, check_token_path};

/// Bounds of the wait between two fetches with `rotate = true`, whatever
/// the service's `refresh_after_ms` (jittered by ±10% first).
pub const MIN_REFRESH: Duration = Duration::from_secs(1);
pub const MAX_REFRESH: Duration = Duration::from_secs(60 * 60);
/// Largest key the agent writes.
pub const MAX_KEY_BYTES: usize = 16 * 1024;

/// How long the task waits; shorter in tests.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// After a 404 (the instance has no billing).
    pub not_enabled_retry: Duration,
    /// Cap of the backoff after other failures.
    pub max_backoff: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            not_enabled_retry: Duration::from_secs(5 * 60),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// Whom the checks trust besides root: the agent's own user (root on a
/// VM; the test user in tests).
#[derive(Debug, Clone, Copy)]
pub struct Trust {
    pub uid: u32,
    pub gid: u32,
}

impl Trust {
    pub fn current() -> Trust {
        Trust {
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        }
    }
    fn uid(&self, uid: u32) -> bool {
        uid == 0 || uid == self.uid
    }
    fn gid(&self, gid: u32) -> bool {
        gid == 0 || gid == self.gid
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("billing token file refused: {0}")]
    Refused(String),
    #[error("no user {0:?} on this VM (yet): the billing token file's owner")]
    NoUser(String),
    #[error("no group {0:?} on this VM (yet): the billing token file's group")]
    NoGroup(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the service's billing key is empty, longer than {MAX_KEY_BYTES} bytes or not printable ASCII: not written"
    )]
    BadKey,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> TokenFileError {
    let path = path.to_path_buf();
    move |source| TokenFileError::Io { what, path, source }
}

/// Where and how the file is written, owner and group resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub path: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// Resolves the owner and group, creates missing directories and checks
/// the way to the file (see the module's doc). Done before every write:
/// the user may appear later (the application's own setup), the
/// directories may change.
pub fn prepare(cfg: &BillingTokenConfig, trust: Trust) -> Result<Target, TokenFileError> {
    check_token_path(&cfg.path).map_err(TokenFileError::Refused)?;
    let uid = nix::unistd::User::from_name(&cfg.owner)
        .ok()
        .flatten()
        .ok_or_else(|| TokenFileError::NoUser(cfg.owner.clone()))?
        .uid
        .as_raw();
    let gid = nix::unistd::Group::from_name(&cfg.group)
        .ok()
        .flatten()
        .ok_or_else(|| TokenFileError::NoGroup(cfg.group.clone()))?
        .gid
        .as_raw();
    let target = Target {
        path: cfg.path.clone(),
        uid,
        gid,
        mode: cfg.file_mode(),
    };
    prepare_dir(&target, trust)?;
    Ok(target)
}

fn prepare_dir(t: &Target, trust: Trust) -> Result<(), TokenFileError> {
    let parent = t.path.parent().unwrap_or(Path::new("/"));
    // The way as written: a symbolic link must be root's, missing
    // directories are created.
    let mut cur = PathBuf::from("/");
    for comp in parent.components().skip(1) {
        cur.push(comp);
        let meta = match std::fs::symlink_metadata(&cur) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                match std::fs::DirBuilder::new().mode(0o755).create(&cur) {
                    Ok(()) => {
                        // The agent's umask (077) would keep the file's
                        // owner out of its directory.
                        std::fs::set_permissions(&cur, std::fs::Permissions::from_mode(0o755))
                            .map_err(io("cannot set the mode of", &cur))?;
                        tracing::info!("created {} (0755) for the billing token", cur.display());
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(io("cannot create", &cur)(e)),
                }
                std::fs::symlink_metadata(&cur).map_err(io("cannot inspect", &cur))?
            }
            Err(e) => return Err(io("cannot inspect", &cur)(e)),
        };
        if meta.file_type().is_symlink() {
            if !trust.uid(meta.uid()) {
                return Err(TokenFileError::Refused(format!(
                    "{} is a symbolic link owned by uid {}, not root",
                    cur.display(),
                    meta.uid()
                )));
            }
        } else if !meta.is_dir() {
            return Err(TokenFileError::Refused(format!(
                "{} is not a directory",
                cur.display()
            )));
        }
    }
    // The way as resolved: nobody but root (and, for the file's own
    // directory, its owner) can swap a directory or a name on it.
    let real = std::fs::canonicalize(parent).map_err(io("cannot resolve", parent))?;
    let mut dirs = vec![PathBuf::from("/")];
    let mut cur = PathBuf::from("/");
    for comp in real.components().skip(1) {
        cur.push(comp);
        dirs.push(cur.clone());
    }
    let last = dirs.len() - 1;
    for (i, dir) in dirs.iter().enumerate() {
        let m = std::fs::metadata(dir).map_err(io("cannot inspect", dir))?;
        let own = i == last;
        let sticky = m.mode() & 0o1000 != 0;
        let problem = if !(trust.uid(m.uid()) || own && m.uid() == t.uid) {
            Some(format!("owned by uid {}", m.uid()))
        } else if m.mode() & 0o002 != 0 && !sticky {
            Some("writable by everyone".to_string())
        } else if m.mode() & 0o020 != 0
            && !sticky
            && !(trust.gid(m.gid()) || own && m.gid() == t.gid)
        {
            Some(format!("writable by group {}", m.gid()))
        } else {
            None
        };
        if let Some(p) = problem {
            return Err(TokenFileError::Refused(format!(
                "{} (on the way to {}) is {p}: another user could replace the key or read it",
                dir.display(),
                t.path.display()
            )));
        }
    }
    Ok(())
}

/// Whether the key is one the agent writes: printable ASCII, no blanks.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_BYTES && key.bytes().all(|b| b.is_ascii_graphic())
}

/// Writes the key unless the file already holds it with the right owner,
/// group and mode; returns whether it wrote.
pub fn write_key(t: &Target, key: &Secret) -> Result<bool, TokenFileError> {
    if !valid_key(key.expose()) {
        return Err(TokenFileError::BadKey);
    }
    if is_current(t, key.expose()) {
        return Ok(false);
    }
    write_atomic_owned(
        &t.path,
        key.expose().as_bytes(),
        t.mode,
        Some((t.uid, t.gid)),
    )
    .map_err(io("cannot write", &t.path))?;
    Ok(true)
}

/// The file is a regular file (not a link) holding `key`, with the
/// target's owner, group and mode.
fn is_current(t: &Target, key: &str) -> bool {
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&t.path)
    else {
        return false;
    };
    let Ok(m) = f.metadata() else { return false };
    if !m.is_file() || (m.uid(), m.gid(), m.mode() & 0o7777) != (t.uid, t.gid, t.mode) {
        return false;
    }
    let mut held = Vec::new();
    f.take(MAX_KEY_BYTES as u64 + 1)
        .read_to_end(&mut held)
        .is_ok()
        && held == key.as_bytes()
}

/// The wait before asking again: `refresh_after` ±10%, within
/// [`MIN_REFRESH`]..=[`MAX_REFRESH`].
pub fn refresh_delay(refresh_after: Duration) -> Duration {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    // 53 random bits: a uniform factor in [0.9, 1.1).
    let unit = (h.finish() >> 11) as f64 / (1u64 << 53) as f64;
    refresh_after
        .mul_f64(0.9 + 0.2 * unit)
        .clamp(MIN_REFRESH, MAX_REFRESH)
}

/// The task `ibkit-agent run` starts for `[billing_token]`: never returns
/// with `rotate = true`; with `rotate = false` once the key is written.
pub async fn run(cfg: BillingTokenConfig, api: Api) {
    run_with(cfg, api, Trust::current(), Timing::default()).await
}

/// [`run`] with the trusted user and the waits given (tests).
pub async fn run_with(cfg: BillingTokenConfig, api: Api, trust: Trust, timing: Timing) {
    let mut backoff = Backoff::new(timing.max_backoff);
    let mut told_not_enabled = false;
    // Each distinct problem is a warning once, its repetitions debug lines.
    let mut last_problem = String::new();
    let problem = |last: &mut String, text: String| {
        if text != *last {
            tracing::warn!(path = %cfg.path.display(), "billing token: {text}; retrying");
            *last = text;
        } else {
            tracing::debug!(path = %cfg.path.display(), "billing token: {text}; retrying");
        }
    };
    loop {
        let token = match api.billing_token().await {
            Ok(t) => t,
            Err(ApiError::Status { status: 404, .. }) => {
                if !told_not_enabled {
                    tracing::warn!(
                        "the service has no billing token for this instance (billing not enabled?); \
                         {} stays as it is, asking again every {:?}",
                        cfg.path.display(),
                        timing.not_enabled_retry
                    );
                    told_not_enabled = true;
                }
                tokio::time::sleep(timing.not_enabled_retry).await;
                continue;
            }
            Err(e) => {
                problem(
                    &mut last_problem,
                    format!("cannot get the key from the service: {e}"),
                );
                backoff.wait(&e).await;
                continue;
            }
        };
        told_not_enabled = false;
        let refresh_after = Duration::from_millis(token.refresh_after_ms);
        // Only the newest key goes to the file; the secondary one is the
        // previous key, still valid while the application switches.
        let key = Secret::new(token.key);
        let written = prepare(&cfg, trust).and_then(|t| write_key(&t, &key));
        match written {
            Ok(true) => {
                tracing::info!(path = %cfg.path.display(), "billing token file written");
            }
            Ok(false) => {
                tracing::debug!(path = %cfg.path.display(), "billing token unchanged");
            }
            Err(e) => {
                problem(&mut last_problem, e.to_string());
                backoff.pause().await;
                continue;
            }
        }
        backoff.reset();
        last_problem.clear();
        if !cfg.rotate {
            tracing::info!("billing token rotation is off: keeping this key");
            return;
        }
        tokio::time::sleep(refresh_delay(refresh_after)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    /// A user and group other than the test's when it runs as root, else
    /// the test's own (the only ones it may give files to).
    fn someone() -> (String, String, u32, u32) {
        let (uid, gid) = if is_root() {
            (65534, 65534)
        } else {
            let t = Trust::current();
            (t.uid, t.gid)
        };
        let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name)
            .unwrap_or_default();
        let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid))
            .ok()
            .flatten()
            .map(|g| g.name)
            .unwrap_or_default();
        assert!(!user.is_empty() && !group.is_empty(), "uid {uid}/gid {gid}");
        (user, group, uid, gid)
    }

    fn cfg(path: &Path, owner: &str, group: &str) -> BillingTokenConfig {
        BillingTokenConfig {
            path: path.to_path_buf(),
            owner: owner.into(),
            group: group.into(),
            mode: None,
            rotate: true,
        }
    }

    #[test]
    fn a_reader_never_sees_a_missing_empty_or_partial_key() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("sub/token.key");
        let (user, group, _, _) = someone();
        let t = prepare(&cfg(&path, &user, &group), Trust::current()).expect("prepare");
        // Different lengths: a partial or mixed file would show.
        let a = Secret::new("A".repeat(37));
        let b = Secret::new(format!("b{}", "x".repeat(8000)));
        assert!(write_key(&t, &a).expect("first"));
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let stop = Arc::clone(&stop);
            let (a, b) = (a.expose().to_string(), b.expose().to_string());
            let path = path.clone();
            std::thread::spawn(move || {
                let mut reads = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let got = std::fs::read(&path).expect("the file is always there");
                    assert!(
                        got == a.as_bytes() || got == b.as_bytes(),
                        "read {} bytes that are neither key",
                        got.len()
                    );
                    reads += 1;
                }
                reads
            })
        };
        for i in 0..400 {
            let key = if i % 2 == 0 { &b } else { &a };
            assert!(
                write_key(&t, key).expect("write"),
                "changed keys are written"
            );
        }
        stop.store(true, Ordering::Relaxed);
        let reads = reader.join().expect("the reader saw only whole keys");
        assert!(reads > 0);
        // No temporary file left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, [std::ffi::OsString::from("token.key")]);
    }

    #[test]
    fn owner_group_and_mode_are_set_and_fixed_when_they_drift() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("opt/agent/xaas-secret-auth-token.key");
        let (user, group, uid, gid) = someone();
        let mut c = cfg(&path, &user, &group);
        let t = prepare(&c, Trust::current()).expect("prepare");
        let expect_mode = if group == "root" { 0o600 } else { 0o640 };
        assert_eq!((t.uid, t.gid, t.mode), (uid, gid, expect_mode));
        let key = Secret::new("k3y-1");
        assert!(write_key(&t, &key).expect("write"));
        let m = std::fs::symlink_metadata(&path).expect("meta");
        assert!(m.is_file());
        assert_eq!(
            (m.uid(), m.gid(), m.mode() & 0o7777),
            (uid, gid, expect_mode)
        );
        assert_eq!(std::fs::read(&path).expect("read"), b"k3y-1");
        // Created directories: 0755, so the owner can reach the file.
        let parent = std::fs::metadata(path.parent().expect("p")).expect("meta");
        assert_eq!(parent.mode() & 0o7777, 0o755);
        // The same key again: nothing to do.
        assert!(!write_key(&t, &key).expect("same"));
        // Another mode asked for: written again, with it.
        c.mode = Some("0400".into());
        let t2 = prepare(&c, Trust::current()).expect("prepare");
        assert!(write_key(&t2, &key).expect("mode"));
        let m = std::fs::metadata(&path).expect("meta");
        assert_eq!(m.mode() & 0o7777, 0o400);
        // Someone changed the mode: the next round restores it.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(write_key(&t2, &key).expect("drift"));
        assert_eq!(std::fs::metadata(&path).expect("m").mode() & 0o7777, 0o400);
        // A link at the path is replaced by a file, its target untouched.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").expect("write");
        std::fs::remove_file(&path).expect("rm");
        std::os::unix::fs::symlink(&victim, &path).expect("ln");
        assert!(write_key(&t2, &key).expect("over the link"));
        assert!(std::fs::symlink_metadata(&path).expect("m").is_file());
        assert_eq!(std::fs::read_to_string(&victim).expect("v"), "precious");
    }

    #[test]
    fn a_bad_key_is_not_written_and_the_old_one_stays() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("token");
        let (user, group, _, _) = someone();
        let t = prepare(&cfg(&path, &user, &group), Trust::current()).expect("prepare");
        assert!(write_key(&t, &Secret::new("good")).expect("write"));
        for bad in ["", "two words", "line\n", &"x".repeat(MAX_KEY_BYTES + 1)] {
            assert!(matches!(
                write_key(&t, &Secret::new(bad)),
                Err(TokenFileError::BadKey)
            ));
        }
        assert_eq!(std::fs::read(&path).expect("read"), b"good");
    }

    #[test]
    fn unsafe_paths_and_unknown_accounts_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let base = dir.path();
        let me = Trust::current();
        let refused = |c: &BillingTokenConfig, trust: Trust, words: &str| match prepare(c, trust) {
            Err(TokenFileError::Refused(m)) => assert!(m.contains(words), "{words:?} not in {m}"),
            other => panic!("{}: expected a refusal, got {other:?}", c.path.display()),
        };
        for bad in ["relative/t", "/opt/../etc/t", "/opt/./t", "/"] {
            refused(&cfg(Path::new(bad), "root", "root"), me, "");
        }

        // A symbolic link on the way owned by another user than root (a
        // local user pointing the key at a directory of theirs).
        let theirs = base.join("theirs");
        std::fs::create_dir(&theirs).expect("mkdir");
        let link = base.join("link");
        std::os::unix::fs::symlink(&theirs, &link).expect("ln");
        // As root: the link is given to nobody. Otherwise the link is the
        // test user's, trusted only when the test says so.
        let strict = if is_root() {
            std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).expect("lchown");
            me
        } else {
            Trust { uid: 0, gid: 0 }
        };
        let c = cfg(&link.join("t.key"), "root", "root");
        refused(&c, strict, "is a symbolic link owned by uid");
        assert!(!theirs.join("t.key").exists());

        // A link of root's (or the agent's) is followed.
        let ok_link = base.join("ok-link");
        std::os::unix::fs::symlink(&theirs, &ok_link).expect("ln");
        let t = prepare(&cfg(&ok_link.join("t.key"), "root", "root"), me).expect("root's link");
        assert!(write_key(&t, &Secret::new("k")).expect("write"));
        assert_eq!(std::fs::read(theirs.join("t.key")).expect("read"), b"k");

        // A directory everyone may write (not sticky), or owned by another
        // user: refused, whether the file is in it or below it.
        let open = base.join("open");
        std::fs::create_dir(&open).expect("mkdir");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        refused(
            &cfg(&open.join("t"), "root", "root"),
            me,
            "writable by everyone",
        );
        refused(
            &cfg(&open.join("d/t"), "root", "root"),
            me,
            "writable by everyone",
        );
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        prepare(&cfg(&open.join("t"), "root", "root"), me).expect("sticky, like /tmp");
        if is_root() {
            let other = base.join("other");
            std::fs::create_dir_all(other.join("d")).expect("mkdir");
            std::os::unix::fs::chown(&other, Some(65534), Some(65534)).expect("chown");
            refused(
                &cfg(&other.join("d/t"), "root", "root"),
                me,
                "owned by uid 65534",
            );
            // The file's own directory may be its owner's.
            let (user, group, _, _) = someone();
            prepare(&cfg(&other.join("t"), &user, &group), me).expect("the owner's directory");
            refused(
                &cfg(&other.join("t"), "root", "root"),
                me,
                "owned by uid 65534",
            );
        }
        // Not a directory on the way.
        std::fs::write(base.join("file"), "x").expect("write");
        refused(
            &cfg(&base.join("file/t"), "root", "root"),
            me,
            "is not a directory",
        );

        assert!(matches!(
            prepare(&cfg(&base.join("t"), "no-such-user-ibk", "root"), me),
            Err(TokenFileError::NoUser(_))
        ));
        assert!(matches!(
            prepare(&cfg(&base.join("t"), "root", "no-such-group-ibk"), me),
            Err(TokenFileError::NoGroup(_))
        ));
    }

    #[test]
    fn refresh_is_jittered_and_bounded() {
        let base = Duration::from_secs(100);
        let samples: Vec<Duration> = (0..200).map(|_| refresh_delay(base)).collect();
        assert!(
            samples
                .iter()
                .all(|d| *d >= Duration::from_secs(90) && *d <= Duration::from_secs(110))
        );
        let distinct: std::collections::BTreeSet<_> = samples.iter().collect();
        assert!(distinct.len() > 100, "jitter varies: {}", distinct.len());
        assert!(samples.iter().any(|d| *d < base) && samples.iter().any(|d| *d > base));
        assert_eq!(refresh_delay(Duration::ZERO), MIN_REFRESH);
        assert_eq!(refresh_delay(Duration::from_millis(300)), MIN_REFRESH);
        assert_eq!(refresh_delay(Duration::from_secs(100_000)), MAX_REFRESH);
    }
}
