//! The metrics read at scrape time: counts from the store and heartbeat
//! ages, in a registry built for this scrape only (concurrent scrapes never
//! share one, and nothing can go stale between scrapes).

use std::sync::Arc;

use ibkit_api::operator::{HostHealth, RecoveryKind};
use ibkit_api::wire::InstanceStatus;
use prometheus::{Gauge, GaugeVec, Histogram, HistogramOpts, IntGaugeVec, Opts, Registry};

use crate::AppState;
use crate::error::ApiError;
use crate::store::{self, StoreError};

/// Every value of each label, so a status with no instance reads 0 (not
/// "no data"). `Other` is what an unknown stored kind reads as.
const INSTANCE_STATUSES: [InstanceStatus; 4] = [
    InstanceStatus::Applying,
    InstanceStatus::Running,
    InstanceStatus::Failed,
    InstanceStatus::Deleted,
];
const HOST_HEALTHS: [HostHealth; 3] = [
    HostHealth::Healthy,
    HostHealth::Unhealthy,
    HostHealth::Unknown,
];
pub(super) const RECOVERY_KINDS: [RecoveryKind; 4] = [
    RecoveryKind::AgentFailed,
    RecoveryKind::AgentSilent,
    RecoveryKind::HealthMissing,
    RecoveryKind::Other,
];

/// What the store says, read in one go.
struct Counts {
    instances: Vec<(InstanceStatus, u64)>,
    hosts: store::hosts::HostCounts,
    open_recovery: Vec<(RecoveryKind, u64)>,
    last_seen: Vec<(String, String, i64)>,
}

fn well_formed<T>(r: prometheus::Result<T>) -> T {
    r.unwrap_or_else(|e| panic!("snapshot metrics are well formed: {e}"))
}

fn register(reg: &Registry, c: impl prometheus::core::Collector + 'static) {
    well_formed(reg.register(Box::new(c)));
}

/// Reads the state and returns it as a registry.
pub(super) async fn take(s: &Arc<AppState>) -> Result<Registry, ApiError> {
    let counts =
        s.db.read(|c| {
            Ok::<_, StoreError>(Counts {
                instances: store::instances::count_by_status(c)?,
                hosts: store::hosts::counts(c)?,
                open_recovery: store::recovery::open_by_kind(c)?,
                last_seen: store::hosts::paired_last_seen(c)?,
            })
        })
        .await?;
    let now_ms = ibkit_support::clock::now_ms();
    let reg = Registry::new();

    let instances = well_formed(IntGaugeVec::new(
        Opts::new("ibkit_instances", "Instances by status"),
        &["status"],
    ));
    for st in INSTANCE_STATUSES {
        let n = counts
            .instances
            .iter()
            .find(|(x, _)| *x == st)
            .map_or(0, |(_, n)| *n);
        instances
            .with_label_values(&[st.as_str()])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    register(&reg, instances);

    let hosts = well_formed(IntGaugeVec::new(
        Opts::new(
            "ibkit_hosts",
            "Hosts of instances not deleted, by health (unknown: not judged yet)",
        ),
        &["health"],
    ));
    for h in HOST_HEALTHS {
        let n = counts
            .hosts
            .by_health
            .iter()
            .find(|(x, _)| *x == h)
            .map_or(0, |(_, n)| *n);
        hosts
            .with_label_values(&[h.as_str()])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    register(&reg, hosts);

    let paired = well_formed(prometheus::IntGauge::new(
        "ibkit_agents_paired",
        "Hosts of instances not deleted whose agent holds a valid credential",
    ));
    paired.set(i64::try_from(counts.hosts.paired).unwrap_or(i64::MAX));
    register(&reg, paired);

    let open = well_formed(IntGaugeVec::new(
        Opts::new(
            "ibkit_recovery_requests_open",
            "Open recovery requests by kind",
        ),
        &["kind"],
    ));
    for k in RECOVERY_KINDS {
        let n = counts
            .open_recovery
            .iter()
            .filter(|(x, _)| *x == k)
            .map(|(_, n)| *n)
            .sum::<u64>();
        open.with_label_values(&[k.as_str()])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    register(&reg, open);

    // The newer of the memory's heartbeat (not flushed yet) and the store's.
    let age = well_formed(Histogram::with_opts(
        HistogramOpts::new(
            "ibkit_agent_heartbeat_age_seconds",
            "Time since each paired agent was last heard from, at the scrape",
        )
        .buckets(super::HEARTBEAT_AGE_BUCKETS.to_vec()),
    ));
    for (inst, host, stored) in &counts.last_seen {
        let mem = s.seen(inst, host).map_or(0, |x| x.at_ms);
        let last = (*stored).max(mem);
        age.observe(now_ms.saturating_sub(last).max(0) as f64 / 1000.0);
    }
    register(&reg, age);

    let build = well_formed(GaugeVec::new(
        Opts::new(
            "ibkit_build_info",
            "Always 1; the label is the version of ibkit serving",
        ),
        &["version"],
    ));
    build
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1.0);
    register(&reg, build);

    // The standard name (client libraries export it as `process_…`), so
    // dashboards showing restarts work unchanged.
    let start = well_formed(Gauge::new(
        "process_start_time_seconds",
        "Start time of the service since the Unix epoch, in seconds",
    ));
    start.set(s.started_at_ms as f64 / 1000.0);
    register(&reg, start);

    Ok(reg)
}
