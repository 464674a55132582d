//! The monitor: marks hosts unhealthy (failed step, silent agent, missing
//! health results) and opens one recovery request per host; flushes
//! heartbeats to the DB every few seconds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ibkit_api::operator::{HostHealth, RecoveryKind};
use ibkit_support::clock::{format_utc_ms as when, now_ms};

use crate::AppState;
use crate::dispatch;
use crate::error::ApiError;
use crate::routes::agent::duration;
use crate::store::{self, StoreResult};

pub fn spawn(state: Arc<AppState>) -> Vec<tokio::task::JoinHandle<()>> {
    let s = state.clone();
    let flush = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            if let Err(e) = s.flush_heartbeats().await {
                tracing::warn!("flushing heartbeats: {e}");
            }
        }
    });
    let s = state;
    let monitor = tokio::spawn(async move {
        let mut tick = tokio::time::interval(s.cfg.monitor_interval.max(Duration::from_millis(50)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = check(&s).await {
                tracing::warn!("monitor: {e}");
            }
        }
    });
    vec![flush, monitor]
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// One monitor round.
pub async fn check(s: &Arc<AppState>) -> Result<(), ApiError> {
    let st = s.clone();
    s.db.write(move |c| Ok::<_, ApiError>(round(&st, c)?)).await
}

fn round(s: &AppState, c: &mut rusqlite::Connection) -> StoreResult<()> {
    let now = now_ms();
    let tx = c.transaction()?;
    let mut opened = Vec::new();
    let instances = store::instances::live_ids(&tx)?;
    for inst in instances {
        let spec = dispatch::spec_of(s, &tx, &inst)?;
        let (agent_timeout, health_timeout) = (
            s.cfg.agent_timeout_for(&spec),
            s.cfg.health_timeout_for(&spec),
        );
        let hosts = store::hosts::monitor_rows(&tx, &inst)?;
        let mut failed: HashMap<String, String> = HashMap::new();
        for f in store::steps::failed(&tx, &inst, None)? {
            failed.entry(f.host).or_insert_with(|| {
                format!(
                    "step {}/{} failed: {}",
                    f.group,
                    f.index,
                    f.error.unwrap_or_else(|| "see its log".into())
                )
            });
        }
        let last_ok = store::health::last_ok(&tx, &inst)?;
        for h in hosts {
            let verdict: Option<(RecoveryKind, String)> = if let Some(why) = failed.get(&h.name) {
                Some((
                    RecoveryKind::AgentFailed,
                    format!("agent reported a failure: {why}"),
                ))
            } else if let Some(paired_at) = h.paired_at {
                let mem = s.seen(&inst, &h.name).map(|x| x.at_ms);
                let last = [
                    Some(paired_at),
                    h.last_heartbeat_at,
                    mem,
                    Some(s.started_at_ms),
                ]
                .into_iter()
                .flatten()
                .max()
                .unwrap_or(paired_at);
                if now - last > ms(agent_timeout.value) {
                    Some((
                        RecoveryKind::AgentSilent,
                        format!(
                            "agent silent for {}s (last seen {}; timeout {}, {})",
                            (now - last) / 1000,
                            when(last),
                            duration(agent_timeout.value),
                            agent_timeout.source
                        ),
                    ))
                } else if let Some(active) = h.checks_active_since {
                    spec.health_checks
                        .iter()
                        .filter(|ch| ch.applies_to(&h.name))
                        .find_map(|ch| {
                            let ok = last_ok.get(&(h.name.clone(), ch.name.clone())).copied();
                            let since = [Some(active), ok, Some(s.started_at_ms)]
                                .into_iter()
                                .flatten()
                                .max()
                                .unwrap_or(active);
                            (now - since > ms(health_timeout.value)).then(|| {
                                (
                                    RecoveryKind::HealthMissing,
                                    format!(
                                        "no passing result of health check {:?} for {}s (timeout {}, {})",
                                        ch.name,
                                        (now - since) / 1000,
                                        duration(health_timeout.value),
                                        health_timeout.source
                                    ),
                                )
                            })
                        })
                } else {
                    None
                }
            } else {
                None
            };
            match verdict {
                Some((kind, reason)) => {
                    store::hosts::mark_unhealthy(&tx, &inst, &h.name, &reason, now)?;
                    if store::recovery::open_once(&tx, &inst, &h.name, kind, &reason, now)? {
                        opened.push(kind);
                        tracing::warn!(
                            "host {} of instance {inst} needs recovery: {reason}",
                            h.name
                        );
                    }
                }
                None if h.paired_at.is_some() && h.health != HostHealth::Healthy => {
                    store::hosts::mark_healthy(&tx, &inst, &h.name)?;
                }
                None => {}
            }
        }
    }
    tx.commit()?;
    // Counted once committed: a rolled-back round opened nothing.
    for kind in opened {
        s.metrics.recovery_opened(kind);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_timeouts() {
        // Timeouts in reasons are spelled as in specs and flags.
        let shown = |ms| super::duration(super::Duration::from_millis(ms)).to_string();
        assert_eq!(shown(2_000), "2s");
        assert_eq!(shown(300_000), "5m");
        assert_eq!(shown(1_500), "1s500ms");
    }
}
