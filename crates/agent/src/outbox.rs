//! Reports waiting for delivery, one file each (`outbox/<seq>.json`),
//! written atomically before anything is sent and deleted only once the
//! service took them. Delivered strictly in order; `report_id` lets the
//! service drop a report it already applied (at-least-once delivery,
//! applied once).

use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ibkit_api::wire::{Report, ReportEvent};
use tokio::sync::Notify;

use crate::client::{Api, ApiError};
use crate::journal::{read_json, write_json};

#[derive(Debug, Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
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
}

impl Outbox {
    pub fn open(dir: PathBuf) -> io::Result<Outbox> {
        fs::create_dir_all(&dir)?;
        let outbox = Outbox {
            inner: Arc::new(Inner {
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

    /// Queues a report (on disk before this returns) and wakes the sender.
    pub fn push(&self, exec_id: &str, event: ReportEvent) -> io::Result<Report> {
        let report = Report {
            report_id: uuid::Uuid::new_v4().to_string(),
            exec_id: exec_id.to_string(),
            event,
        };
        let seq = self.inner.next_seq.fetch_add(1, Ordering::SeqCst);
        write_json(&self.inner.dir.join(format!("{seq:020}.json")), &report)?;
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
    /// service could not take now (unreachable, 5xx, 401).
    pub async fn deliver(&self, api: &Api) -> Result<(), DeliverError> {
        let _guard = self.inner.sending.lock().await;
        for (_, path) in self.pending_files()? {
            let report: Report = match read_json(&path) {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!("dropping unreadable queued report {}: {e}", path.display());
                    fs::remove_file(&path)?;
                    continue;
                }
            };
            match api.report(&report).await {
                Ok(applied) => {
                    tracing::debug!(report = %report.report_id, applied, "report delivered");
                    fs::remove_file(&path)?;
                }
                Err(e) if e.is_permanent() => {
                    tracing::error!(
                        report = %report.report_id,
                        exec = %report.exec_id,
                        "the service refused a report, dropping it: {e}"
                    );
                    fs::remove_file(&path)?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
