//! Reports waiting for delivery, one file each (`outbox/<seq>.json`),
//! written atomically before anything is sent and deleted only once the
//! service took them. Delivered strictly in order; `report_id` lets the
//! service drop a report it already applied (at-least-once delivery,
//! applied once).
//!
//! A final (`finished`) report is never dropped: one the service refuses
//! for its size is rebuilt at half the size (head and tail kept, counters
//! raised, see [`ibkit_api::report_fit`]) and sent again; one refused for another
//! reason stays queued and is retried every minute, loudly logged. Only a
//! 409 (the service no longer knows the execution: superseded or deleted,
//! nobody waits for it) moves it to `outbox/refused/`, kept for the record.

use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ibkit_api::wire::{REPORT_BUDGET_BYTES, Report, ReportEvent};
use ibkit_support::fs::write_atomic;
use tokio::sync::Notify;

use crate::client::{Api, ApiError};
use crate::journal::read_json;
use ibkit_api::report_fit::{MIN_REPORT_BUDGET, refit_report};

#[derive(Debug, Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    /// A queued report's serialized size stays within this.
    budget: usize,
    next_seq: AtomicU64,
    notify: Notify,
    /// Serialises deliveries (the sender task and the work loop).
    sending: tokio::sync::Mutex<()>,
}

/// Why a delivery round stopped before the outbox was empty.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("outbox: {0}")]
    Io(#[from] io::Error),
    /// The service refused a final report for a reason other than its size;
    /// it stays queued (retry after [`REFUSED_RETRY`]).
    #[error("the service refused the final report of execution {exec}, kept and retried: {error}")]
    Refused { exec: String, error: ApiError },
}

/// How long a refused final report waits before it is sent again.
pub const REFUSED_RETRY: std::time::Duration = std::time::Duration::from_secs(60);

/// The fields of a queued report needed to decide what to do with it,
/// read without copying its log and result.
#[derive(serde::Deserialize)]
struct Head {
    report_id: String,
    exec_id: String,
    status: String,
}

impl Outbox {
    pub fn open(dir: PathBuf) -> io::Result<Outbox> {
        Outbox::open_with_budget(dir, REPORT_BUDGET_BYTES)
    }

    /// [`Outbox::open`] with another size budget (tests, small services).
    pub fn open_with_budget(dir: PathBuf, budget: usize) -> io::Result<Outbox> {
        fs::create_dir_all(&dir)?;
        let outbox = Outbox {
            inner: Arc::new(Inner {
                budget: budget.max(MIN_REPORT_BUDGET),
                dir,
                next_seq: AtomicU64::new(0),
                notify: Notify::new(),
                sending: tokio::sync::Mutex::new(()),
            }),
        };
        let last = outbox
            .pending_files()?
            .last()
            .map(|(seq, _)| *seq)
            .unwrap_or(0);
        outbox.inner.next_seq.store(last + 1, Ordering::SeqCst);
        Ok(outbox)
    }

    /// The size a serialized report keeps to.
    pub fn report_budget(&self) -> usize {
        self.inner.budget
    }

    /// Queues a report (on disk before this returns) and wakes the sender.
    /// A report over the budget (an outcome not built by the executor) is
    /// fitted first.
    pub fn push(&self, exec_id: &str, event: ReportEvent) -> io::Result<Report> {
        let mut report = Report {
            report_id: uuid::Uuid::new_v4().to_string(),
            exec_id: exec_id.to_string(),
            event,
        };
        let mut data = serde_json::to_vec(&report).map_err(io::Error::other)?;
        if data.len() > self.inner.budget {
            drop(data);
            refit_report(&mut report, self.inner.budget)?;
            data = serde_json::to_vec(&report).map_err(io::Error::other)?;
        }
        let seq = self.inner.next_seq.fetch_add(1, Ordering::SeqCst);
        write_atomic(
            &self.inner.dir.join(format!("{seq:020}.json")),
            &data,
            0o600,
        )?;
        self.inner.notify.notify_one();
        Ok(report)
    }

    fn pending_files(&self) -> io::Result<Vec<(u64, PathBuf)>> {
        let mut files = Vec::new();
        for entry in fs::read_dir(&self.inner.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name
                .strip_suffix(".json")
                .filter(|s| s.len() == 20)
                .and_then(|s| s.parse::<u64>().ok())
            {
                files.push((seq, entry.path()));
            }
        }
        files.sort();
        Ok(files)
    }

    /// Queued reports in delivery order.
    pub fn pending(&self) -> io::Result<Vec<Report>> {
        let mut out = Vec::new();
        for (_, path) in self.pending_files()? {
            if let Some(r) = read_json(&path)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    pub fn len(&self) -> u64 {
        self.pending_files().map(|f| f.len() as u64).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Resolves when a report was queued since the last call.
    pub async fn queued(&self) {
        self.inner.notify.notified().await;
    }

    /// Delivers every queued report in order; stops at the first one the
    /// service could not take now (unreachable, 5xx, 401, a refused final
    /// report). The file's bytes are the request body: a report is never
    /// parsed whole unless it must be rebuilt smaller.
    pub async fn deliver(&self, api: &Api) -> Result<(), DeliverError> {
        let _guard = self.inner.sending.lock().await;
        for (_, path) in self.pending_files()? {
            // Sends of this report cut off by the service mid-body.
            let mut cut = 0;
            loop {
                let data = match tokio::fs::read(&path).await {
                    Ok(d) => d,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) => return Err(e.into()),
                };
                let head: Head = match serde_json::from_slice(&data) {
                    Ok(h) => h,
                    Err(e) => {
                        // Written atomically, so this is damage from outside:
                        // keep it aside for a human rather than block the queue.
                        tracing::error!(
                            "a queued report is unreadable ({e}); moved aside as {}.unreadable",
                            path.display()
                        );
                        fs::rename(&path, path.with_extension("json.unreadable"))?;
                        break;
                    }
                };
                let finished = head.status == "finished";
                let size = data.len();
                let error = match api.report_bytes(data).await {
                    Ok(applied) => {
                        tracing::debug!(report = %head.report_id, applied, "report delivered");
                        fs::remove_file(&path)?;
                        break;
                    }
                    Err(e) => e,
                };
                if !finished {
                    if error.is_permanent() {
                        // A progress report: the final one still follows.
                        tracing::error!(
                            report = %head.report_id,
                            exec = %head.exec_id,
                            "the service refused a progress report, dropping it: {error}"
                        );
                        fs::remove_file(&path)?;
                        break;
                    }
                    return Err(error.into());
                }
                // A service that refuses a large body may close the
                // connection before the 413 is read. Cut twice in a row
                // (a service that went down refuses the connection on the
                // retry instead): taken as a size refusal.
                if error.is_cut_while_sending() && size > MIN_REPORT_BUDGET {
                    cut += 1;
                    if cut < 2 {
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                        continue;
                    }
                }
                let too_large = error.is_size_refusal() || cut >= 2;
                if too_large && size > MIN_REPORT_BUDGET {
                    cut = 0;
                    let budget = (size / 2).max(MIN_REPORT_BUDGET);
                    tracing::warn!(
                        exec = %head.exec_id,
                        "the service refused the final report of {size} bytes for its size ({error}); \
                         rebuilding it within {budget} bytes"
                    );
                    let data = tokio::fs::read(&path).await?;
                    let path2 = path.clone();
                    tokio::task::spawn_blocking(move || shrink(&path2, &data, budget))
                        .await
                        .map_err(io::Error::other)??;
                    continue;
                }
                if error.is_conflict() {
                    let refused = self.inner.dir.join("refused");
                    crate::journal::create_dir(&refused, 0o700)?;
                    let name = path.file_name().map(|n| n.to_owned()).unwrap_or_default();
                    fs::rename(&path, refused.join(&name))?;
                    tracing::error!(
                        report = %head.report_id,
                        exec = %head.exec_id,
                        "the service no longer knows this execution and refused its final report ({error}); \
                         kept in {}",
                        refused.join(&name).display()
                    );
                    break;
                }
                if error.is_permanent() || error.is_size_refusal() {
                    tracing::error!(
                        report = %head.report_id,
                        exec = %head.exec_id,
                        "the service refused a final report ({error}); it stays queued and is sent again in {}s",
                        REFUSED_RETRY.as_secs()
                    );
                    return Err(DeliverError::Refused {
                        exec: head.exec_id,
                        error,
                    });
                }
                return Err(error.into());
            }
        }
        Ok(())
    }
}

/// Rewrites the queued report at `path` (bytes `data`) within `budget`.
fn shrink(path: &std::path::Path, data: &[u8], budget: usize) -> io::Result<()> {
    let mut report: Report = serde_json::from_slice(data).map_err(io::Error::other)?;
    refit_report(&mut report, budget)?;
    let out = serde_json::to_vec(&report).map_err(io::Error::other)?;
    write_atomic(path, &out, 0o600)
}
