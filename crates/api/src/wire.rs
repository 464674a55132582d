//! Messages between agents, operators and the service.

use serde::{Deserialize, Serialize};

use crate::{Duration, HealthCheck, ScriptType, StepOptions, StructuredJson};

/// Largest body the service accepts for one report (`POST
/// /v1/agent/reports`). Agents cap the *serialized* report below it
/// ([`REPORT_BUDGET_BYTES`]) so a final report is never refused for size.
pub const MAX_REPORT_BYTES: usize = 16 << 20;

/// What an agent lets one serialized report reach: the limit less room
/// for headers and rounding.
pub const REPORT_BUDGET_BYTES: usize = MAX_REPORT_BYTES - (256 << 10);

/// Error body of every non-2xx answer.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Agent → service: exchange a host's pairing key for its credential.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairRequest {
    pub instance: String,
    pub host: String,
    pub pairing_key: String,
    pub agent_version: String,
    #[serde(default)]
    pub protocol: u32,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairResponse {
    /// Bearer credential of this host; the service keeps only its hash.
    pub credential: String,
    pub instance: String,
    pub host: String,
    pub heartbeat_interval: Duration,
}

/// Service → agent: the answer to a (long-polled) work request.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkResponse {
    /// The step to run now, if any. The same `exec_id` may be handed out
    /// again until its final report arrives; agents must not run it twice.
    pub work: Option<Work>,
    /// The health checks this host runs now (empty until its steps are done).
    pub health_checks: Vec<HealthCheck>,
    pub heartbeat_interval: Duration,
    /// Changes whenever `health_checks` or `heartbeat_interval` change; the
    /// agent passes it back so the long poll also ends on a config change.
    pub config_rev: String,
}

/// Operator → service: `GET /v1/service`, how the service is set up.
///
/// `ibkit deploy` reads the pins from here over an authenticated, pinned
/// connection before it writes them into a VM's user data.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    /// The URL installers and agents use.
    pub public_url: String,
    /// Hex SHA-256 of the service certificate's DER (what agents pin);
    /// null with plain HTTP and with an operator's own certificate
    /// (`--tls-cert`), which agents verify against the system's roots so
    /// they survive its renewal: only the generated one is pinned.
    pub cert_sha256: Option<String>,
    /// curl's `--pinnedpubkey` value (`sha256//BASE64` of the public key);
    /// null unless the certificate is the generated self-signed one.
    pub curl_pin: Option<String>,
    /// `--heartbeat-interval` (an instance with `detection_timeout` may get
    /// a shorter one).
    pub heartbeat_interval: Duration,
    /// `--agent-timeout`, for instances without `detection_timeout`.
    pub agent_timeout: Duration,
    /// `--health-timeout`, for instances without `detection_timeout`.
    pub health_timeout: Duration,
    /// The service's version.
    pub version: String,
}

/// `STATE_DIR/endpoint.json`, written by `ibkit serve` once it listens so a
/// local `ibkit deploy` can find the service from its state directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEndpoint {
    pub url: String,
    /// Hex SHA-256 of the certificate's DER; null with plain HTTP.
    pub cert_sha256: Option<String>,
}

impl ServiceEndpoint {
    /// Its file name in the state directory.
    pub const FILE_NAME: &'static str = "endpoint.json";
}

/// One step execution handed to an agent, references already resolved.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Work {
    pub exec_id: String,
    pub instance: String,
    pub group: String,
    pub index: u32,
    /// Hash of the step as specified (before references were resolved).
    pub hash: String,
    #[serde(rename = "type")]
    pub kind: ScriptType,
    pub content: String,
    pub options: StepOptions,
    /// Every result reference used by the step's content or environment,
    /// resolved. The agent also hands each one to the script as an
    /// environment variable and a file, so vendors need not paste a value
    /// into script text (where it could inject commands).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<ResolvedReference>,
}

/// One resolved result reference of a [`Work`].
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedReference {
    /// The reference as written, e.g. `{{ibkit.results.db.init.0.raw}}`.
    pub reference: String,
    /// Its environment variable and file name, from
    /// [`crate::Reference::env_name`], e.g. `IBKIT_RESULT_DB_INIT_0_RAW`.
    pub name: String,
    pub value: String,
}

/// Agent → service: a step event. Delivered at least once, applied once
/// (the service remembers `report_id`), in order per agent.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub report_id: String,
    pub exec_id: String,
    #[serde(flatten)]
    pub event: ReportEvent,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ReportEvent {
    /// An attempt started (attempt counts from 1).
    Running { attempt: u32, started_at_ms: i64 },
    /// The step ended: `ok` or `failed`.
    Finished(Box<StepOutcome>),
}

/// Final status of a step as the agent reports it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalStatus {
    Ok,
    Failed,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StepOutcome {
    /// On the wire `final_status`: a `Finished` report is tagged with
    /// `"status": "finished"`, so the outcome's own field cannot be
    /// `status` too (the JSON would have a duplicate key).
    #[serde(rename = "final_status")]
    pub status: FinalStatus,
    /// Attempts made, including interrupted ones.
    pub attempts: u32,
    /// Exit code of the last attempt, when it exited.
    pub exit_code: Option<i32>,
    /// Signal that ended the last attempt, when it was killed.
    pub signal: Option<i32>,
    pub timed_out: bool,
    /// The last exit code was a halt code: no further attempts were made.
    pub halted: bool,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    /// stdout and stderr of every attempt, interleaved as written.
    pub log: String,
    /// Bytes left out of `log` by the agent's size cap (0: complete).
    pub log_truncated_bytes: u64,
    /// stdout of the successful (or last) attempt: the raw result.
    pub result: String,
    pub result_truncated_bytes: u64,
    /// Compact JSON text of the structured result (a JSON string on the
    /// wire; see [`StructuredJson`]).
    pub structured_result: Option<StructuredJson>,
    /// Why the step failed, in words (exit code, timeout, bad structured
    /// result, interrupted by an agent restart…).
    pub error: Option<String>,
}

/// Agent → service, every `heartbeat_interval`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Heartbeat {
    pub agent_version: String,
    pub uptime_s: u64,
    /// The step execution running now, if any.
    pub running_exec: Option<String>,
    /// Reports waiting on the agent's disk for delivery.
    pub queued_reports: u64,
}

/// Agent → service: one health check result.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthReport {
    pub check: String,
    pub ok: bool,
    pub detail: String,
    pub at_ms: i64,
    pub duration_ms: u64,
}

/// The answer to `POST /v1/agent/reports`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportAck {
    /// The report changed the step (false once the step is final).
    pub applied: bool,
    /// Present (true) when the `report_id` was seen before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
}

/// The answer to `POST /v1/agent/heartbeat` and `POST /v1/agent/health`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub ok: bool,
}

/// `GET /v1/agent/billing-token` (agent → service): the instance's
/// marketplace API access keys, for the token file the agent keeps current
/// (VK's `ivkcs_user_data` `token_file_path`, `token_rotate`). The same
/// shape as the marketplace's `GET …/v1-public/auth/key`, plus when to ask
/// again.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingToken {
    /// The marketplace's instance id (ibkit's instance id).
    pub instance_uuid: String,
    /// The newest key: what the token file holds.
    pub key: String,
    /// The previous key while it is still valid (the overlap of a
    /// rotation); absent when there is only one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_key: Option<String>,
    /// Ask again after this long (milliseconds): before the newest key is
    /// due to be replaced.
    pub refresh_after_ms: u64,
}

impl std::fmt::Debug for BillingToken {
    // The keys are secrets: never in logs or panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BillingToken")
            .field("instance_uuid", &self.instance_uuid)
            .field("refresh_after_ms", &self.refresh_after_ms)
            .finish_non_exhaustive()
    }
}

/// A step's status as the service tracks it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Not started yet (waiting for earlier steps, groups or results).
    Pending,
    /// The agent reported that an attempt started (a step handed out but
    /// not yet started stays `pending`: statuses never run ahead).
    Running,
    Ok,
    Failed,
    /// A `once` step that already succeeded on this host in an earlier run.
    Skipped,
}

/// By name, so maps keyed by status list them as they always did.
impl Ord for StepStatus {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialOrd for StepStatus {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl StepStatus {
    /// Every status.
    pub const ALL: [StepStatus; 5] = [
        StepStatus::Pending,
        StepStatus::Running,
        StepStatus::Ok,
        StepStatus::Failed,
        StepStatus::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Ok => "ok",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => StepStatus::Pending,
            "running" => StepStatus::Running,
            "ok" => StepStatus::Ok,
            "failed" => StepStatus::Failed,
            "skipped" => StepStatus::Skipped,
            _ => return None,
        })
    }

    pub fn is_done(self) -> bool {
        matches!(self, StepStatus::Ok | StepStatus::Skipped)
    }
}

/// Status of a service instance (SPEC §2).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceStatus {
    Applying,
    Running,
    Failed,
    Deleted,
}

impl InstanceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceStatus::Applying => "applying",
            InstanceStatus::Running => "running",
            InstanceStatus::Failed => "failed",
            InstanceStatus::Deleted => "deleted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "applying" => InstanceStatus::Applying,
            "running" => InstanceStatus::Running,
            "failed" => InstanceStatus::Failed,
            "deleted" => InstanceStatus::Deleted,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_wire_shape() {
        let r = Report {
            report_id: "r1".into(),
            exec_id: "e1".into(),
            event: ReportEvent::Running {
                attempt: 2,
                started_at_ms: 5,
            },
        };
        let v = serde_json::to_value(&r).expect("serialises");
        assert_eq!(
            v,
            serde_json::json!({"report_id":"r1","exec_id":"e1","status":"running","attempt":2,"started_at_ms":5})
        );
        let back: Report = serde_json::from_value(v).expect("parses");
        assert!(matches!(
            back.event,
            ReportEvent::Running { attempt: 2, .. }
        ));
    }

    #[test]
    fn finished_report_round_trips() {
        let outcome = StepOutcome {
            status: FinalStatus::Ok,
            attempts: 1,
            exit_code: Some(0),
            signal: None,
            timed_out: false,
            halted: false,
            started_at_ms: 1,
            finished_at_ms: 2,
            log: "l".into(),
            log_truncated_bytes: 0,
            result: "r".into(),
            result_truncated_bytes: 0,
            structured_result: None,
            error: None,
        };
        let r = Report {
            report_id: "r2".into(),
            exec_id: "e1".into(),
            event: ReportEvent::Finished(Box::new(outcome.clone())),
        };
        let text = serde_json::to_string(&r).expect("serialises");
        assert!(text.contains(r#""status":"finished""#), "{text}");
        assert!(text.contains(r#""final_status":"ok""#), "{text}");
        let back: Report = serde_json::from_str(&text).expect("parses");
        assert!(matches!(back.event, ReportEvent::Finished(o) if *o == outcome));
    }
}
