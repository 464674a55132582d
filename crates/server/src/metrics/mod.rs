//! Prometheus metrics of `ibkit serve` (`GET /metrics`, text format 0.0.4;
//! docs/metrics.md lists them).
//!
//! Two kinds: *event* metrics (counters and histograms the handlers feed as
//! things happen, kept in [`Metrics`], one registry per service so several
//! services in one process never mix) and *snapshot* metrics (gauges and
//! the heartbeat age histogram) computed from the store and the in-memory
//! heartbeats at each scrape, so they cannot drift from the state.
//! Labels are bounded sets only (enums, route templates, status classes):
//! never an instance, host or step name.

mod snapshot;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use ibkit_api::operator::RecoveryKind;
use ibkit_api::wire::{FinalStatus, ReportEvent};
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

use crate::AppState;
use crate::auth::MetricsReader;
use crate::error::ApiError;

/// The route of the scrape endpoint.
pub const PATH: &str = "/metrics";

/// Outcome of a finished step, the label of `ibkit_steps_finished_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepOutcome {
    Ok,
    Failed,
    /// Failed because its last attempt ran out of time.
    Timeout,
    /// Reported ok, stored as failed: the structured result was refused.
    Refused,
}

impl StepOutcome {
    pub const ALL: [StepOutcome; 4] = [Self::Ok, Self::Failed, Self::Timeout, Self::Refused];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Timeout => "timeout",
            Self::Refused => "refused",
        }
    }
}

/// What a finished-step report says, taken before the report is moved into
/// the database write.
#[derive(Debug, Clone, Copy)]
pub struct FinishedStep {
    outcome: StepOutcome,
    /// From the agent's own clock (start and end on the same machine).
    seconds: f64,
}

impl FinishedStep {
    /// `None` for a `running` event. `refused`: the service refused the
    /// structured result (the step is stored as failed).
    pub fn of(event: &ReportEvent, refused: bool) -> Option<FinishedStep> {
        let ReportEvent::Finished(o) = event else {
            return None;
        };
        let outcome = match o.status {
            _ if o.timed_out => StepOutcome::Timeout,
            FinalStatus::Failed => StepOutcome::Failed,
            FinalStatus::Ok if refused => StepOutcome::Refused,
            FinalStatus::Ok => StepOutcome::Ok,
        };
        // A clock step on the VM can make this negative: counted as zero.
        let ms = o.finished_at_ms.saturating_sub(o.started_at_ms).max(0);
        Some(FinishedStep {
            outcome,
            seconds: ms as f64 / 1000.0,
        })
    }
}

/// Buckets (seconds) of a step's run time: scripts take from a blink to an
/// hour.
const STEP_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];
/// Buckets of a long poll: agents wait up to 60 s.
const LONG_POLL_BUCKETS: &[f64] = &[0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 20.0, 30.0, 45.0, 60.0];
/// Buckets of quick work: one SQLite transaction, one request.
const FAST_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];
/// Buckets of a heartbeat's age: the interval is 30 s by default, the
/// agent timeout 5 min.
pub(crate) const HEARTBEAT_AGE_BUCKETS: &[f64] = &[
    1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// The event metrics of one service.
pub struct Metrics {
    registry: Registry,
    step_seconds: Histogram,
    steps_finished: IntCounterVec,
    report_seconds: Histogram,
    long_poll_seconds: HistogramVec,
    work_answer_seconds: Histogram,
    recovery_opened: IntCounterVec,
    db_write_seconds: Histogram,
    http_requests: IntCounterVec,
}

fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .unwrap_or_else(|e| panic!("metric {name} is well formed: {e}"))
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name} is well formed: {e}"))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Registry::new(),
            step_seconds: histogram(
                "ibkit_step_duration_seconds",
                "Run time of finished steps (all attempts), as the agent measured it",
                STEP_BUCKETS,
            ),
            steps_finished: counter_vec(
                "ibkit_steps_finished_total",
                "Finished steps by outcome (ok, failed, timeout, refused: ok but its structured result was refused)",
                &["outcome"],
            ),
            report_seconds: histogram(
                "ibkit_agent_report_duration_seconds",
                "Time to answer an agent report (POST /v1/agent/reports), waiting for the report budget included",
                FAST_BUCKETS,
            ),
            long_poll_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "ibkit_agent_work_poll_duration_seconds",
                    "Time an agent's long poll (GET /v1/agent/work) was held, by whether it handed out a step (work=\"step\") or not (work=\"none\")",
                )
                .buckets(LONG_POLL_BUCKETS.to_vec()),
                &["work"],
            )
            .unwrap_or_else(|e| panic!("metric is well formed: {e}")),
            work_answer_seconds: histogram(
                "ibkit_agent_work_answer_duration_seconds",
                "Time to compute one answer of a long poll (the database transaction), not the wait",
                FAST_BUCKETS,
            ),
            recovery_opened: counter_vec(
                "ibkit_recovery_requests_opened_total",
                "Recovery requests opened by the monitor, by kind",
                &["kind"],
            ),
            db_write_seconds: histogram(
                "ibkit_db_write_duration_seconds",
                "Time of a database write, from the call to the end of its transaction (waiting for the single writer included)",
                FAST_BUCKETS,
            ),
            http_requests: counter_vec(
                "ibkit_http_requests_total",
                "HTTP requests answered, by route template, method and status class",
                &["route", "method", "status"],
            ),
        };
        for c in [
            Box::new(m.step_seconds.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.steps_finished.clone()),
            Box::new(m.report_seconds.clone()),
            Box::new(m.long_poll_seconds.clone()),
            Box::new(m.work_answer_seconds.clone()),
            Box::new(m.recovery_opened.clone()),
            Box::new(m.db_write_seconds.clone()),
            Box::new(m.http_requests.clone()),
        ] {
            m.registry
                .register(c)
                .unwrap_or_else(|e| panic!("metric names are unique: {e}"));
        }
        // Every outcome and kind is present from the start (at 0), so a
        // rate() over a fresh service is 0, not "no data".
        for o in StepOutcome::ALL {
            m.steps_finished.with_label_values(&[o.as_str()]);
        }
        for k in snapshot::RECOVERY_KINDS {
            m.recovery_opened.with_label_values(&[k.as_str()]);
        }
        for w in ["step", "none"] {
            m.long_poll_seconds.with_label_values(&[w]);
        }
        m
    }

    /// The histogram [`crate::db::Db`] times its writes with.
    pub fn db_write_seconds(&self) -> Histogram {
        self.db_write_seconds.clone()
    }

    pub fn step_finished(&self, step: FinishedStep) {
        self.step_seconds.observe(step.seconds);
        self.steps_finished
            .with_label_values(&[step.outcome.as_str()])
            .inc();
    }

    /// Times an agent report until the returned guard is dropped.
    pub fn time_report(&self) -> prometheus::HistogramTimer {
        self.report_seconds.start_timer()
    }

    /// Times one answer of a long poll until the guard is dropped.
    pub fn time_work_answer(&self) -> prometheus::HistogramTimer {
        self.work_answer_seconds.start_timer()
    }

    /// A long poll that started at `started` ends now.
    pub fn long_poll_done(&self, started: Instant, handed_out_step: bool) {
        let work = if handed_out_step { "step" } else { "none" };
        self.long_poll_seconds
            .with_label_values(&[work])
            .observe(started.elapsed().as_secs_f64());
    }

    pub fn recovery_opened(&self, kind: RecoveryKind) {
        self.recovery_opened
            .with_label_values(&[kind.as_str()])
            .inc();
    }

    /// One answered request (the layer [`count_requests`] calls it).
    pub fn http_request(&self, route: &str, method: &Method, status: u16) {
        // Only the standard methods are labels; anything else is "other",
        // so a client cannot mint label values.
        let method = match *method {
            Method::GET => "GET",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::DELETE => "DELETE",
            Method::HEAD => "HEAD",
            Method::OPTIONS => "OPTIONS",
            Method::PATCH => "PATCH",
            _ => "other",
        };
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.http_requests
            .with_label_values(&[route, method, class])
            .inc();
    }
}

/// Counts every request by its matched route template (`/v1/instances/{id}`),
/// or `unmatched` when no route matched: the path itself is never a label.
pub async fn count_requests(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let method = req.method().clone();
    let resp = next.run(req).await;
    s.metrics.http_request(
        route.as_deref().unwrap_or("unmatched"),
        &method,
        resp.status().as_u16(),
    );
    resp
}

/// `GET /metrics`: the operator token or the metrics token.
pub async fn scrape(State(s): State<Arc<AppState>>, _reader: MetricsReader) -> Response {
    match render(&s).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(prometheus::TEXT_FORMAT),
            )],
            text,
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// The whole exposition: event metrics and a fresh snapshot, by name.
pub async fn render(s: &Arc<AppState>) -> Result<String, ApiError> {
    let snap = snapshot::take(s).await?;
    let mut families = s.metrics.registry.gather();
    families.extend(snap.gather());
    families.sort_by(|a, b| a.name().cmp(b.name()));
    prometheus::TextEncoder::new()
        .encode_to_string(&families)
        .map_err(|e| ApiError::internal(format!("cannot encode the metrics: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ibkit_api::wire::StepOutcome as Outcome;

    fn finished(status: FinalStatus, timed_out: bool, started: i64, ended: i64) -> ReportEvent {
        ReportEvent::Finished(Box::new(Outcome {
            status,
            attempts: 1,
            exit_code: None,
            signal: None,
            timed_out,
            halted: false,
            started_at_ms: started,
            finished_at_ms: ended,
            log: String::new(),
            log_truncated_bytes: 0,
            result: String::new(),
            result_truncated_bytes: 0,
            structured_result: None,
            error: None,
        }))
    }

    #[test]
    fn outcomes_and_durations_of_finished_steps() {
        let of =
            |e: &ReportEvent, refused| FinishedStep::of(e, refused).map(|f| (f.outcome, f.seconds));
        let ok = finished(FinalStatus::Ok, false, 1_000, 3_500);
        assert_eq!(of(&ok, false), Some((StepOutcome::Ok, 2.5)));
        assert_eq!(of(&ok, true), Some((StepOutcome::Refused, 2.5)));
        let failed = finished(FinalStatus::Failed, false, 0, 10);
        assert_eq!(of(&failed, false), Some((StepOutcome::Failed, 0.01)));
        let timeout = finished(FinalStatus::Failed, true, 0, 0);
        assert_eq!(of(&timeout, false), Some((StepOutcome::Timeout, 0.0)));
        // A VM clock stepping back: zero, never a negative observation.
        let back = finished(FinalStatus::Ok, false, 5_000, 1_000);
        assert_eq!(of(&back, false), Some((StepOutcome::Ok, 0.0)));
        let running = ReportEvent::Running {
            attempt: 1,
            started_at_ms: 1,
        };
        assert_eq!(of(&running, false), None);
    }

    #[test]
    fn methods_and_unmatched_paths_stay_bounded() {
        let m = Metrics::new();
        let odd = Method::from_bytes(b"BREW").expect("an extension method");
        m.http_request("unmatched", &odd, 404);
        m.http_request("unmatched", &Method::GET, 999);
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&m.registry.gather())
            .expect("encodes");
        assert!(
            text.contains(
                r#"ibkit_http_requests_total{method="other",route="unmatched",status="4xx"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"ibkit_http_requests_total{method="GET",route="unmatched",status="5xx"} 1"#
            ),
            "{text}"
        );
        assert!(!text.contains("BREW"), "{text}");
    }
}
