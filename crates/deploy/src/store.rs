//! What `ibkit deploy` remembers of each deployment, on disk.
//!
//! ```text
//! DEPLOY_STATE/deployments/<name>.json   the record (written atomically)
//! DEPLOY_STATE/controller.lock           held while VMs are created or deleted
//! DEPLOY_STATE/qemu/                     the QEMU backend's state
//! ```
//!
//! The record keeps the manifest *as deployed* (its text and path), so a
//! recovery recreates a VM exactly as it was deployed even if the file
//! changed since; the service's instance id; per host the current VM and
//! its recovery history; every attempt with its failure reason; and every
//! recovery with its evidence.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use ibkit_api::operator::{
    DeployAttemptView, DeploymentTimeline, HostName, MAX_TIMELINE_ENTRIES, MAX_TIMELINE_TEXT,
    Milestone, VmRecoveryView,
};
use ibkit_support::clock::unix_ms;
use ibkit_support::fs::write_atomic;
use ibkit_support::text::tail_bytes;
use serde::{Deserialize, Serialize};

use crate::manifest::{DeployManifest, ManifestError};
use crate::recovery::RecoveryHistory;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a deployment record ({why}); move it away to start over")]
    Corrupt { path: PathBuf, why: String },
    #[error("no deployment named {0:?} (see `ibkit deploy list`)")]
    Unknown(String),
    #[error("the deployed manifest of {name:?} no longer parses: {source}")]
    Manifest {
        name: String,
        source: Box<ManifestError>,
    },
    #[error("another `ibkit deploy` ({holder}) is changing VMs in {path}; wait for it or stop it")]
    Busy { path: PathBuf, holder: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The deployment's lifecycle (SPEC: applying → running | failed → deleted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployStatus {
    Applying,
    Running,
    Failed,
    Deleted,
}

impl DeployStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeployStatus::Applying => "applying",
            DeployStatus::Running => "running",
            DeployStatus::Failed => "failed",
            DeployStatus::Deleted => "deleted",
        }
    }
}

/// Why an attempt started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptKind {
    /// The first attempt of a new deployment.
    Create,
    /// `up` on an existing deployment: changed steps and hosts only.
    Update,
    /// A failed attempt retried: every VM recreated.
    Retry,
}

impl AttemptKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptKind::Create => "create",
            AttemptKind::Update => "update",
            AttemptKind::Retry => "retry",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1, 2, … over the deployment's life.
    pub number: u32,
    pub kind: AttemptKind,
    pub started_ms: u64,
    pub ended_ms: Option<u64>,
    /// `None` while in progress.
    pub outcome: Option<DeployStatus>,
    /// Why it failed: the step and its log, the timeout and what was
    /// missing, or the VM error.
    pub failure: Option<String>,
    /// When each stage was reached (`vms_created`, `HOST.paired`,
    /// `HOST.steps_done`, `steps_done`, `health_passed`), ms since the epoch.
    #[serde(default)]
    pub milestones: Vec<(String, u64)>,
}

/// The VM a host runs on now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostVm {
    /// The backend's id.
    pub id: String,
    /// The backend attempt number (`<host>-a<N>`): counts every VM the
    /// host ever had.
    pub seq: u32,
    pub config_hash: String,
    pub addresses: Vec<String>,
    pub created_ms: u64,
}

/// A host found dead and not yet recreated, or recreated and not yet
/// back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingRecovery {
    /// `vm_stopped`, `vm_missing`, or the service's kind (`agent_silent`,
    /// `agent_failed`, `health_missing`).
    pub kind: String,
    pub reason: String,
    pub detected_ms: u64,
    /// Not before this time (the backoff).
    pub act_at_ms: u64,
    /// Set once the VM was recreated; the recovery ends when the instance
    /// is `running` again.
    pub recreated_ms: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub vm: Option<HostVm>,
    #[serde(default)]
    pub history: RecoveryHistory,
    #[serde(default)]
    pub pending: Option<PendingRecovery>,
}

/// One recovery, kept for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryEvent {
    pub host: String,
    pub kind: String,
    pub reason: String,
    pub detected_ms: u64,
    pub recreated_ms: Option<u64>,
    /// When the instance was `running` again.
    pub recovered_ms: Option<u64>,
    pub old_vm: Option<String>,
    pub new_vm: Option<String>,
    /// The dead VM's serial log, disk… (`keep_evidence`).
    pub evidence: Vec<PathBuf>,
    /// Set when recovery gave up or failed.
    pub failure: Option<String>,
    /// `recreated`, `running` (ms since the epoch).
    #[serde(default)]
    pub milestones: Vec<(String, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub name: String,
    /// Where its VMs run; records older than the field ran on QEMU.
    #[serde(default)]
    pub backend: BackendSpec,
    /// The service as its VMs reach it (`--guest-service-url` of the last
    /// `up`): recreated VMs get the same, whoever recovers them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_service_url: Option<String>,
    pub instance_id: ibkit_api::operator::InstanceId,
    pub status: DeployStatus,
    pub status_reason: Option<String>,
    /// The manifest file as deployed (its directory resolves image paths).
    pub manifest_path: PathBuf,
    pub manifest_text: String,
    pub hosts: BTreeMap<String, HostRecord>,
    #[serde(default)]
    pub attempts: Vec<Attempt>,
    #[serde(default)]
    pub recoveries: Vec<RecoveryEvent>,
    pub created_ms: u64,
    pub updated_ms: u64,
}

/// Which backend a deployment runs on, and enough to reach it again
/// (`status`, `down` and `watch` use the deployment's own backend).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BackendSpec {
    #[default]
    Qemu,
    Openstack {
        /// The clouds.yaml entry (`envvars` for `OS_*` variables).
        cloud: String,
        /// `--os-network`, when the VMs went onto an existing network.
        #[serde(default)]
        network: Option<String>,
        /// `--os-floating-ip`: recreated servers get one too.
        #[serde(default)]
        floating_ips: bool,
    },
}

impl std::fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendSpec::Qemu => f.write_str("the local QEMU backend"),
            BackendSpec::Openstack { cloud, .. } => write!(f, "OpenStack cloud {cloud}"),
        }
    }
}

impl DeploymentRecord {
    /// The manifest as deployed.
    pub fn manifest(&self) -> Result<DeployManifest, StoreError> {
        let base = self
            .manifest_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        DeployManifest::parse(
            &self.manifest_text,
            &base,
            &self.manifest_path.display().to_string(),
        )
        .map_err(|e| StoreError::Manifest {
            name: self.name.clone(),
            source: Box::new(e),
        })
    }

    /// The copy of this record's attempts and recoveries the controller
    /// publishes to the service (the console shows it): the newest
    /// entries and the tails of long texts, within the API's limits.
    pub fn timeline(&self) -> DeploymentTimeline {
        fn text(t: &str) -> String {
            tail_bytes(t, MAX_TIMELINE_TEXT).to_string()
        }
        fn ms(v: u64) -> i64 {
            i64::try_from(v).unwrap_or(i64::MAX)
        }
        fn milestones(m: &[(String, u64)]) -> Vec<Milestone> {
            m.iter()
                .take(64)
                .map(|(name, at)| Milestone {
                    name: text(name),
                    at: ms(*at),
                })
                .collect()
        }
        fn newest<T>(v: &[T]) -> &[T] {
            &v[v.len().saturating_sub(MAX_TIMELINE_ENTRIES)..]
        }
        DeploymentTimeline {
            deployment: self.name.clone(),
            backend: text(&self.backend.to_string()),
            status: self.status.as_str().to_string(),
            status_reason: self.status_reason.as_deref().map(text),
            attempts: newest(&self.attempts)
                .iter()
                .map(|a| DeployAttemptView {
                    number: a.number,
                    kind: a.kind.as_str().to_string(),
                    started_at: ms(a.started_ms),
                    ended_at: a.ended_ms.map(ms),
                    outcome: a.outcome.map(|o| o.as_str().to_string()),
                    failure: a.failure.as_deref().map(text),
                    milestones: milestones(&a.milestones),
                })
                .collect(),
            recoveries: newest(&self.recoveries)
                .iter()
                .filter_map(|r| {
                    Some(VmRecoveryView {
                        // Names come from the validated manifest.
                        host: HostName::parse(&r.host).ok()?,
                        kind: text(&r.kind),
                        reason: text(&r.reason),
                        detected_at: ms(r.detected_ms),
                        recreated_at: r.recreated_ms.map(ms),
                        recovered_at: r.recovered_ms.map(ms),
                        old_vm: r.old_vm.as_deref().map(text),
                        new_vm: r.new_vm.as_deref().map(text),
                        failure: r.failure.as_deref().map(text),
                        milestones: milestones(&r.milestones),
                    })
                })
                .collect(),
            published_at: ms(unix_ms()),
        }
    }

    pub fn current_attempt_mut(&mut self) -> Option<&mut Attempt> {
        self.attempts.last_mut().filter(|a| a.outcome.is_none())
    }
}

/// Records and the controller lock in a directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// Held while VMs are created or deleted (an exclusive `flock`); released
/// on drop, also when the process dies.
#[derive(Debug)]
pub struct ControllerLock {
    _lock: nix::fcntl::Flock<File>,
}

impl Store {
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let dir = dir.into();
        let records = dir.join("deployments");
        std::fs::create_dir_all(&records).map_err(io(&records))?;
        // Records name images, hosts and service URLs: owner only.
        for d in [&dir, &records] {
            std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .map_err(io(d))?;
        }
        Ok(Store { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join("deployments").join(format!("{name}.json"))
    }

    pub fn exists(&self, name: &str) -> bool {
        self.path_of(name).exists()
    }

    pub fn load(&self, name: &str) -> Result<DeploymentRecord, StoreError> {
        if !ibkit_api::is_valid_name(name) {
            return Err(StoreError::Unknown(name.to_string()));
        }
        let path = self.path_of(name);
        let raw = match std::fs::read(&path) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StoreError::Unknown(name.to_string()));
            }
            Err(e) => return Err(io(&path)(e)),
        };
        serde_json::from_slice(&raw).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            why: e.to_string(),
        })
    }

    /// Writes the record atomically (temp file, fsync, rename): a crash
    /// leaves the old or the new record, never half of one.
    pub fn save(&self, record: &mut DeploymentRecord) -> Result<(), StoreError> {
        record.updated_ms = unix_ms();
        let path = self.path_of(&record.name);
        let text = serde_json::to_vec_pretty(record).map_err(|e| StoreError::Corrupt {
            path: path.clone(),
            why: e.to_string(),
        })?;
        // The manifest's scripts may hold secrets: owner only.
        write_atomic(&path, &text, 0o600).map_err(io(&path))
    }

    /// Every record's name, sorted.
    pub fn names(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.dir.join("deployments");
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map_err(io(&dir))?
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.strip_suffix(".json").map(str::to_string)
            })
            .filter(|n| ibkit_api::is_valid_name(n))
            .collect();
        names.sort();
        Ok(names)
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join("controller.lock")
    }

    fn open_lock(&self) -> Result<File, StoreError> {
        let path = self.lock_path();
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        Ok(f)
    }

    fn stamp(lock: &mut nix::fcntl::Flock<File>, what: &str) {
        use std::io::{Seek as _, Write as _};
        let f: &mut File = lock;
        let _ = f.set_len(0);
        let _ = f.rewind();
        let _ = writeln!(f, "pid {} ({what})", std::process::id());
    }

    /// Takes the lock if free.
    pub fn try_lock(&self, what: &str) -> Result<Option<ControllerLock>, StoreError> {
        let f = self.open_lock()?;
        match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(mut l) => {
                Self::stamp(&mut l, what);
                Ok(Some(ControllerLock { _lock: l }))
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(io(&self.lock_path())(std::io::Error::from(e))),
        }
    }

    /// Takes the lock, waiting up to `wait` for its holder.
    pub async fn lock(
        &self,
        what: &str,
        wait: std::time::Duration,
    ) -> Result<ControllerLock, StoreError> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            if let Some(l) = self.try_lock(what)? {
                return Ok(l);
            }
            if std::time::Instant::now() >= deadline {
                let holder = std::fs::read_to_string(self.lock_path())
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "unknown process".into());
                return Err(StoreError::Busy {
                    path: self.dir.clone(),
                    holder,
                });
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> DeploymentRecord {
        DeploymentRecord {
            name: name.into(),
            backend: BackendSpec::Qemu,
            guest_service_url: None,
            instance_id: ibkit_api::operator::InstanceId::new_v4(),
            status: DeployStatus::Applying,
            status_reason: None,
            manifest_path: PathBuf::from("/tmp/x/deploy.toml"),
            manifest_text:
                "[instance]\nname = \"demo\"\n[[hosts]]\nname = \"a\"\nimage = \"a.qcow2\"\n".into(),
            hosts: BTreeMap::from([("a".to_string(), HostRecord::default())]),
            attempts: vec![],
            recoveries: vec![],
            created_ms: 1,
            updated_ms: 1,
        }
    }

    /// A long-lived deployment publishes within the API's limits: the
    /// newest entries, the tail of a long failure (where the error is).
    #[test]
    fn the_published_timeline_keeps_the_newest_entries_and_text_tails() {
        let mut r = record("demo");
        let long_failure = format!("{}the step failed: exit 3", "log line\n".repeat(3000));
        r.attempts = (1..=60)
            .map(|n| Attempt {
                number: n,
                kind: if n == 1 {
                    AttemptKind::Create
                } else {
                    AttemptKind::Retry
                },
                started_ms: u64::from(n) * 1000,
                ended_ms: Some(u64::from(n) * 1000 + 500),
                outcome: Some(DeployStatus::Failed),
                failure: Some(long_failure.clone()),
                milestones: vec![("vms_created".into(), u64::from(n) * 1000 + 10)],
            })
            .collect();
        r.recoveries = vec![RecoveryEvent {
            host: "a".into(),
            kind: "vm_stopped".into(),
            reason: "the VM stopped".into(),
            detected_ms: 5,
            recreated_ms: Some(6),
            recovered_ms: None,
            old_vm: Some("a-a1".into()),
            new_vm: Some("a-a2".into()),
            evidence: vec![],
            failure: None,
            milestones: vec![("recreated".into(), 6)],
        }];
        let t = r.timeline();
        assert_eq!(t.problem(), None);
        assert_eq!(t.attempts.len(), MAX_TIMELINE_ENTRIES);
        assert_eq!(t.attempts[0].number, 11);
        assert_eq!(t.attempts[0].kind, "retry");
        assert_eq!(t.attempts[0].outcome.as_deref(), Some("failed"));
        let failure = t.attempts[49].failure.as_deref().unwrap_or("");
        assert!(failure.len() <= MAX_TIMELINE_TEXT && failure.ends_with("exit 3"));
        assert_eq!(t.recoveries[0].host.as_str(), "a");
        assert_eq!(t.recoveries[0].milestones[0].name, "recreated");
        assert_eq!(t.backend, "the local QEMU backend");
    }

    #[test]
    fn records_round_trip_and_garbage_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let mut r = record("demo");
        store.save(&mut r).expect("saved");
        assert_eq!(store.load("demo").expect("loaded"), r);
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("deployments/demo.json"))
                .expect("record")
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(store.names().expect("names"), ["demo"]);
        let m = r.manifest().expect("manifest");
        assert_eq!(m.image_path(&m.hosts[0]), PathBuf::from("/tmp/x/a.qcow2"));

        assert!(matches!(store.load("nope"), Err(StoreError::Unknown(_))));
        assert!(matches!(store.load("../etc"), Err(StoreError::Unknown(_))));
        std::fs::write(dir.path().join("deployments/bad.json"), b"{\"name\": 3").expect("write");
        let e = store.load("bad").expect_err("garbage");
        assert!(e.to_string().contains("bad.json"), "{e}");
    }

    #[tokio::test]
    async fn the_lock_is_exclusive_and_names_its_holder() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("store");
        let held = store.try_lock("up demo").expect("lock").expect("free");
        assert!(store.try_lock("watch").expect("lock").is_none());
        let e = store
            .lock("down demo", std::time::Duration::from_millis(300))
            .await
            .expect_err("busy");
        assert!(e.to_string().contains("up demo"), "{e}");
        drop(held);
        assert!(store.try_lock("watch").expect("lock").is_some());
    }
}
