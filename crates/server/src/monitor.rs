//! The monitor: marks hosts unhealthy (failed step, silent agent, missing
//! health results) and opens one recovery request per host; flushes
//! heartbeats to the DB every few seconds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::params;

use crate::AppState;
use crate::db::now_ms;
use crate::dispatch;
use crate::error::ApiError;
use crate::routes::agent::duration;

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

pub(crate) fn when(ms: i64) -> String {
    // RFC 3339-ish UTC without a date library.
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// One monitor round.
pub async fn check(s: &Arc<AppState>) -> Result<(), ApiError> {
    let st = s.clone();
    s.db.write(move |c| round(&st, c)).await
}

struct HostRow {
    name: String,
    paired_at: Option<i64>,
    last_hb: Option<i64>,
    checks_active_since: Option<i64>,
    health: String,
}

fn round(s: &AppState, c: &mut rusqlite::Connection) -> Result<(), ApiError> {
    let now = now_ms();
    let tx = c.transaction()?;
    let instances: Vec<String> = {
        let mut stmt = tx.prepare("SELECT id FROM instances WHERE status != 'deleted'")?;
        stmt.query_map([], |r| r.get(0))?
            .collect::<Result<_, _>>()?
    };
    for inst in instances {
        let spec = dispatch::spec_of(s, &tx, &inst)?;
        let (agent_timeout, health_timeout) = (
            s.cfg.agent_timeout_for(&spec),
            s.cfg.health_timeout_for(&spec),
        );
        let hosts: Vec<HostRow> = {
            let mut stmt = tx.prepare_cached(
                "SELECT name, paired_at, last_heartbeat_at, checks_active_since, health
                 FROM hosts WHERE instance = ?1",
            )?;
            stmt.query_map(params![inst], |r| {
                Ok(HostRow {
                    name: r.get(0)?,
                    paired_at: r.get(1)?,
                    last_hb: r.get(2)?,
                    checks_active_since: r.get(3)?,
                    health: r.get(4)?,
                })
            })?
            .collect::<Result<_, _>>()?
        };
        let mut failed: HashMap<String, String> = HashMap::new();
        {
            let mut stmt = tx.prepare_cached(
                "SELECT host, grp, idx, error FROM steps WHERE instance = ?1 AND status = 'failed'
                 ORDER BY host, grp, idx",
            )?;
            for row in stmt.query_map(params![inst], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, u32>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            })? {
                let (h, g, i, e) = row?;
                failed.entry(h).or_insert_with(|| {
                    format!(
                        "step {g}/{i} failed: {}",
                        e.unwrap_or_else(|| "see its log".into())
                    )
                });
            }
        }
        let mut last_ok: HashMap<(String, String), i64> = HashMap::new();
        {
            let mut stmt = tx.prepare_cached(
                "SELECT host, check_name, last_ok_at FROM health_results WHERE instance = ?1 AND last_ok_at IS NOT NULL",
            )?;
            for row in stmt.query_map(params![inst], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))? {
                let (k, v) = row?;
                last_ok.insert(k, v);
            }
        }
        for h in hosts {
            let verdict: Option<(&str, String)> = if let Some(why) = failed.get(&h.name) {
                Some(("agent_failed", format!("agent reported a failure: {why}")))
            } else if let Some(paired_at) = h.paired_at {
                let mem = s.seen(&inst, &h.name).map(|x| x.at_ms);
                let last = [Some(paired_at), h.last_hb, mem, Some(s.started_at_ms)]
                    .into_iter()
                    .flatten()
                    .max()
                    .unwrap_or(paired_at);
                if now - last > ms(agent_timeout.value) {
                    Some((
                        "agent_silent",
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
                                    "health_missing",
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
                    tx.execute(
                        "UPDATE hosts SET health = 'unhealthy', unhealthy_reason = ?3,
                         unhealthy_since = CASE WHEN health = 'unhealthy' THEN unhealthy_since ELSE ?4 END
                         WHERE instance = ?1 AND name = ?2",
                        params![inst, h.name, reason, now],
                    )?;
                    let open: i64 = tx.query_row(
                        "SELECT COUNT(*) FROM recovery_requests WHERE instance = ?1 AND host = ?2 AND status = 'open'",
                        params![inst, h.name],
                        |r| r.get(0),
                    )?;
                    if open == 0 {
                        tracing::warn!(
                            "host {} of instance {inst} needs recovery: {reason}",
                            h.name
                        );
                        tx.execute(
                            "INSERT INTO recovery_requests (id, instance, host, kind, reason, created_at, status)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'open')",
                            params![uuid::Uuid::new_v4().to_string(), inst, h.name, kind, reason, now],
                        )?;
                    }
                }
                None if h.paired_at.is_some() && h.health != "healthy" => {
                    tx.execute(
                        "UPDATE hosts SET health = 'healthy', unhealthy_reason = NULL, unhealthy_since = NULL
                         WHERE instance = ?1 AND name = ?2",
                        params![inst, h.name],
                    )?;
                }
                None => {}
            }
        }
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_times() {
        assert_eq!(super::when(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::when(1_700_000_000_000), "2023-11-14T22:13:20Z");
        // Timeouts in reasons are spelled as in specs and flags.
        let shown = |ms| super::duration(super::Duration::from_millis(ms)).to_string();
        assert_eq!(shown(2_000), "2s");
        assert_eq!(shown(300_000), "5m");
        assert_eq!(shown(1_500), "1s500ms");
    }
}
