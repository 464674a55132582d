//! The operator side of `ibkit serve`'s API: its answer types and its
//! endpoints ([`endpoint`]), owned here so the service that answers and
//! every client that asks (`ibkit deploy`, the tests, `ibkit-client`)
//! share one definition.
//!
//! Fields are added, never renamed or removed, without a new API version;
//! clients ignore fields they do not know, so a newer service still works.

pub mod endpoint;
mod ids;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use ids::{GroupName, HostName, IdError, InstanceId, RecoveryRequestId};

use crate::InstanceSpec;
use crate::wire::{InstanceStatus, StepStatus};

/// Step counts by status.
pub type StepCounts = BTreeMap<StepStatus, i64>;

/// An instance in the list of `GET /v1/instances`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceSummary {
    pub id: InstanceId,
    pub name: String,
    pub status: InstanceStatus,
    /// Why the instance is `failed` (or `deleted`), or what it waits for.
    pub status_reason: Option<String>,
    /// Counts spec updates and redeploys, from 1.
    pub generation: i64,
    /// Unix time in milliseconds.
    pub created_at: i64,
    /// Unix time in milliseconds.
    pub updated_at: i64,
}

/// `GET /v1/instances/{id}`: the instance with its spec, hosts and step counts.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceDetail {
    pub id: InstanceId,
    pub name: String,
    pub status: InstanceStatus,
    pub status_reason: Option<String>,
    pub generation: i64,
    pub created_at: i64,
    pub updated_at: i64,
    /// The instance's current spec.
    pub spec: InstanceSpec,
    pub hosts: Vec<HostView>,
    /// Step counts of all hosts, every status present.
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, i64>))]
    pub steps: StepCounts,
}

/// Health of a host as the service judges it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostHealth {
    #[default]
    Unknown,
    Healthy,
    Unhealthy,
}

impl HostHealth {
    pub fn as_str(self) -> &'static str {
        match self {
            HostHealth::Unknown => "unknown",
            HostHealth::Healthy => "healthy",
            HostHealth::Unhealthy => "unhealthy",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "unknown" => HostHealth::Unknown,
            "healthy" => HostHealth::Healthy,
            "unhealthy" => HostHealth::Unhealthy,
            _ => return None,
        })
    }
}

/// A host of an instance as the operator sees it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostView {
    pub name: HostName,
    /// The host holds a live credential.
    pub paired: bool,
    pub paired_at: Option<i64>,
    pub last_heartbeat_at: Option<i64>,
    pub agent_version: Option<String>,
    pub health: HostHealth,
    pub unhealthy_reason: Option<String>,
    pub unhealthy_since: Option<i64>,
    /// Since when the host's health checks count (its steps are done).
    pub checks_active_since: Option<i64>,
    /// When the host's current pairing key stops being accepted.
    pub pairing_key_expires_at: Option<i64>,
    /// When the current pairing key was used (keys are single-use).
    pub pairing_key_used_at: Option<i64>,
    /// Why the last pairing attempt for this host was refused (a reused or
    /// expired key, a wrong key, an agent too old): a reused key means
    /// someone else holds it.
    pub last_pairing_refusal: Option<String>,
    pub last_pairing_refusal_at: Option<i64>,
    /// Step counts of this host by status (only statuses present).
    #[cfg_attr(feature = "openapi", schema(value_type = BTreeMap<String, i64>))]
    pub steps: StepCounts,
}

impl HostView {
    /// Steps still `pending` or `running`.
    pub fn steps_not_done(&self) -> i64 {
        [StepStatus::Pending, StepStatus::Running]
            .iter()
            .filter_map(|s| self.steps.get(s))
            .sum()
    }
}

/// A host's pairing key and the command that installs its agent; in the
/// answer of `POST /v1/instances` and of `…/pairing-key`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct HostPairing {
    pub name: HostName,
    /// Shown once: the service keeps only its hash. Single-use.
    pub pairing_key: String,
    /// Unix time in milliseconds after which the key is refused.
    pub pairing_key_expires_at: i64,
    /// `curl … | IBKIT_PAIRING_KEY='…' sh -s -- --instance … --host …`:
    /// the key is in the installer's environment, not on a command line.
    pub install_command: String,
}

impl std::fmt::Debug for HostPairing {
    // The key is a secret: never in logs or panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostPairing")
            .field("name", &self.name)
            .field("pairing_key_expires_at", &self.pairing_key_expires_at)
            .finish_non_exhaustive()
    }
}

/// `POST /v1/instances`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceCreated {
    pub id: InstanceId,
    pub name: String,
    pub status: InstanceStatus,
    pub hosts: Vec<HostPairing>,
}

/// `PUT` and `DELETE /v1/instances/{id}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceStatusView {
    pub id: InstanceId,
    pub status: InstanceStatus,
}

/// `POST /v1/instances/{id}/redeploy`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Redeployed {
    pub id: InstanceId,
    pub status: InstanceStatus,
    pub generation: i64,
}

/// One step of a host, with its last execution's log and results.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepView {
    pub host: HostName,
    pub group: GroupName,
    pub index: u32,
    /// The step hash (see `ibkit_api::step_hash`).
    pub hash: String,
    pub once: bool,
    pub status: StepStatus,
    pub exec_id: Option<String>,
    pub dispatched_at: Option<i64>,
    pub attempts: i64,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub timed_out: bool,
    pub halted: bool,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub log: Option<String>,
    pub log_truncated_bytes: i64,
    pub result: Option<String>,
    pub result_truncated_bytes: i64,
    /// The structured result; null when there is none, or when the listing
    /// already parsed its share (then `structured_result_bytes` is set and
    /// the result route has it).
    pub structured_result: Option<serde_json::Value>,
    /// Size of the stored structured result (compact JSON), if any.
    pub structured_result_bytes: Option<i64>,
    pub error: Option<String>,
    /// The step succeeded on this host at least once.
    pub ever_ok: bool,
}

/// `GET /v1/instances/{id}/results/{host}/{group}/{index}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepResult {
    pub status: StepStatus,
    /// stdout of the step: the raw result.
    pub raw: Option<String>,
    /// The JSON object of its `structured_result_file`.
    pub structured: Option<serde_json::Value>,
}

/// The latest result of one health check on a host.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthResultView {
    pub check: String,
    pub ok: bool,
    pub detail: String,
    /// When the agent ran the check (its clock).
    pub at_ms: i64,
    /// When the service received it.
    pub received_at: i64,
    pub last_ok_at: Option<i64>,
}

/// Open or resolved.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryStatus {
    Open,
    Resolved,
}

impl RecoveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryStatus::Open => "open",
            RecoveryStatus::Resolved => "resolved",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "open" => RecoveryStatus::Open,
            "resolved" => RecoveryStatus::Resolved,
            _ => return None,
        })
    }
}

/// Why the service asks for a host's VM to be recreated.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryKind {
    /// The agent reported a failure it cannot recover from.
    AgentFailed,
    /// No heartbeat within the agent timeout.
    AgentSilent,
    /// A health check had no passing result within the health timeout.
    HealthMissing,
    /// A kind this client does not know (a newer service).
    #[serde(other)]
    Other,
}

impl RecoveryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RecoveryKind::AgentFailed => "agent_failed",
            RecoveryKind::AgentSilent => "agent_silent",
            RecoveryKind::HealthMissing => "health_missing",
            RecoveryKind::Other => "other",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "agent_failed" => RecoveryKind::AgentFailed,
            "agent_silent" => RecoveryKind::AgentSilent,
            "health_missing" => RecoveryKind::HealthMissing,
            _ => RecoveryKind::Other,
        }
    }
}

/// The wire spelling, padded as asked (`{:<8}`).
macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
    )*};
}

display_as_str!(
    RecoveryKind,
    RecoveryStatus,
    HostHealth,
    StepStatus,
    InstanceStatus
);

/// A request to recreate a host's VM.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryRequest {
    pub id: RecoveryRequestId,
    pub instance: InstanceId,
    pub host: HostName,
    pub kind: RecoveryKind,
    pub reason: String,
    pub created_at: i64,
    pub status: RecoveryStatus,
    pub resolved_at: Option<i64>,
}

/// `PUT`/`GET /v1/instances/{id}/deployment`: what the deployment
/// controller (`ibkit deploy`) did to run the instance — its attempts and
/// VM recoveries with their milestones. The controller owns this record
/// (it lives in its state directory) and publishes a copy after each
/// change, so the console can show it; the service only stores and
/// validates it.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentTimeline {
    /// The deployment's name in `ibkit deploy`.
    pub deployment: String,
    /// Where its VMs run, in words ("the local QEMU backend", "OpenStack cloud X").
    pub backend: String,
    /// `applying`, `running`, `failed` or `deleted`.
    pub status: String,
    pub status_reason: Option<String>,
    /// Oldest first; the newest [`MAX_TIMELINE_ENTRIES`] are kept.
    pub attempts: Vec<DeployAttemptView>,
    /// Oldest first; the newest [`MAX_TIMELINE_ENTRIES`] are kept.
    pub recoveries: Vec<VmRecoveryView>,
    /// Unix time in milliseconds the controller published this copy.
    pub published_at: i64,
}

/// How many attempts and recoveries a published timeline may hold.
pub const MAX_TIMELINE_ENTRIES: usize = 50;
/// The longest text (a failure, a reason) a timeline may hold; the
/// publisher keeps the tail, where the error is.
pub const MAX_TIMELINE_TEXT: usize = 8 * 1024;

/// A stage reached, in milliseconds since the epoch.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Milestone {
    /// `vms_created`, `HOST.paired`, `HOST.steps_done`, `steps_done`,
    /// `health_passed`; for a recovery `recreated`, `paired`, `steps_done`,
    /// `running`.
    pub name: String,
    pub at: i64,
}

/// One attempt of `ibkit deploy up` to bring the instance to `running`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployAttemptView {
    /// 1, 2, … over the deployment's life.
    pub number: u32,
    /// `create`, `update` or `retry`.
    pub kind: String,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    /// `running` or `failed`; none while in progress.
    pub outcome: Option<String>,
    pub failure: Option<String>,
    pub milestones: Vec<Milestone>,
}

/// One VM found dead and recreated by the controller.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmRecoveryView {
    pub host: HostName,
    /// `vm_stopped`, `vm_missing`, or the service's recovery kind.
    pub kind: String,
    pub reason: String,
    pub detected_at: i64,
    pub recreated_at: Option<i64>,
    /// When the instance was `running` again.
    pub recovered_at: Option<i64>,
    pub old_vm: Option<String>,
    pub new_vm: Option<String>,
    pub failure: Option<String>,
    pub milestones: Vec<Milestone>,
}

impl DeploymentTimeline {
    /// Why the timeline may not be stored (limits on counts and text), or
    /// `None`.
    pub fn problem(&self) -> Option<String> {
        let texts = [&self.deployment, &self.backend, &self.status]
            .into_iter()
            .chain(self.status_reason.iter())
            .chain(self.attempts.iter().flat_map(|a| {
                [&a.kind]
                    .into_iter()
                    .chain(a.outcome.iter())
                    .chain(a.failure.iter())
                    .chain(a.milestones.iter().map(|m| &m.name))
            }))
            .chain(self.recoveries.iter().flat_map(|r| {
                [&r.kind, &r.reason]
                    .into_iter()
                    .chain(r.old_vm.iter())
                    .chain(r.new_vm.iter())
                    .chain(r.failure.iter())
                    .chain(r.milestones.iter().map(|m| &m.name))
            }));
        if self.attempts.len() > MAX_TIMELINE_ENTRIES {
            return Some(format!(
                "{} attempts: at most {MAX_TIMELINE_ENTRIES} may be published",
                self.attempts.len()
            ));
        }
        if self.recoveries.len() > MAX_TIMELINE_ENTRIES {
            return Some(format!(
                "{} recoveries: at most {MAX_TIMELINE_ENTRIES} may be published",
                self.recoveries.len()
            ));
        }
        let milestones = self
            .attempts
            .iter()
            .map(|a| a.milestones.len())
            .chain(self.recoveries.iter().map(|r| r.milestones.len()))
            .max()
            .unwrap_or(0);
        if milestones > 64 {
            return Some(format!("{milestones} milestones in one entry: at most 64"));
        }
        for t in texts {
            if t.len() > MAX_TIMELINE_TEXT {
                return Some(format!(
                    "a text of {} bytes: at most {MAX_TIMELINE_TEXT}",
                    t.len()
                ));
            }
        }
        None
    }
}

/// `PUT /v1/instances/{id}/deployment`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeploymentStored {
    pub id: InstanceId,
    /// Unix time in milliseconds the service stored it.
    pub stored_at: i64,
}

/// `POST /v1/recovery-requests/{id}/resolve`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveryResolved {
    pub id: RecoveryRequestId,
    pub status: RecoveryStatus,
}

/// `GET /v1/billing/public-key`: the key the billing emulator's secure
/// push encrypts to and signs its answers with (VK sends vendors the
/// marketplace's by e-mail).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingPublicKey {
    /// SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`): what
    /// Python's `load_pem_public_key` and `openssl pkeyutl -pubin` read.
    pub public_key_pem: String,
    /// PKCS#1 PEM (`-----BEGIN RSA PUBLIC KEY-----`): what VK's Go example
    /// parses (`x509.ParsePKCS1PublicKey`).
    pub rsa_public_key_pem: String,
}

/// `GET /v1/instances/{id}/billing`: the instance's marketplace
/// credentials, as the vendor's application would hold them.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceBilling {
    /// `x-service-token` of the simple push (`…/api/v1-public/usages`).
    pub service_token: String,
    /// The newest access key of the secure push (`Authorization: Bearer`);
    /// asking may rotate it, as `GET …/v1-public/auth/key` does.
    pub key: String,
    /// The previous key while it is still valid (rotation overlap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secondary_key: Option<String>,
    /// Unix time in milliseconds when `key` stops being accepted.
    pub key_expires_at: i64,
    /// The options usage may be pushed for.
    pub params: Vec<String>,
}

impl std::fmt::Debug for InstanceBilling {
    // Tokens and keys are secrets: never in logs or panics.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceBilling")
            .field("key_expires_at", &self.key_expires_at)
            .field("params", &self.params)
            .finish_non_exhaustive()
    }
}

/// Usage of one option on one UTC day.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DayUsage {
    /// `2024-03-20` (UTC, from the push's `base_date`).
    pub day: String,
    /// Sum of the values pushed.
    pub total: f64,
    /// Number of values pushed.
    pub count: i64,
}

/// Usage of one option of an instance.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamUsage {
    pub param: String,
    pub total: f64,
    pub count: i64,
    /// Per UTC day, oldest first.
    pub days: Vec<DayUsage>,
    /// Unix time in milliseconds of the last push counted (none yet: null).
    pub last_push_at: Option<i64>,
}

/// `GET /v1/instances/{id}/usage`: what the billing emulator counted.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceUsage {
    pub id: InstanceId,
    /// Every option the spec bills, in its order (also those without usage
    /// yet), then options counted before the spec dropped them, by name.
    pub params: Vec<ParamUsage>,
    /// The pushes of this instance, accepted and refused, oldest first
    /// (the newest [`MAX_PUSH_LOG`] are kept).
    #[serde(default)]
    pub pushes: Vec<PushRecord>,
    /// The access keys issued to it, oldest first (no secrets): which one
    /// a push used shows whether the app followed a rotation.
    #[serde(default)]
    pub keys: Vec<AccessKeyView>,
}

impl InstanceUsage {
    /// Issue times of the access keys the accepted pushes used: more than
    /// one means the app followed a rotation.
    pub fn keys_used(&self) -> std::collections::BTreeSet<i64> {
        self.pushes
            .iter()
            .filter(|p| p.status == 200)
            .filter_map(|p| p.key_created_at)
            .collect()
    }
}

/// How many pushes of an instance the service remembers.
pub const MAX_PUSH_LOG: usize = 200;

/// The billing scheme a push used.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushScheme {
    /// `POST …/api/v1-public/usages` with `x-service-token`.
    Simple,
    /// `POST …/v1-public/metrics/push` (counted).
    Secure,
    /// `POST …/v1-public/metrics/decrypt` (checked, not counted).
    Decrypt,
}

impl PushScheme {
    /// The name stored and shown (`simple`, `secure`, `decrypt`).
    pub fn as_str(self) -> &'static str {
        match self {
            PushScheme::Simple => "simple",
            PushScheme::Secure => "secure",
            PushScheme::Decrypt => "decrypt",
        }
    }

    /// The scheme of a stored name.
    pub fn parse(text: &str) -> Option<Self> {
        [PushScheme::Simple, PushScheme::Secure, PushScheme::Decrypt]
            .into_iter()
            .find(|s| s.as_str() == text)
    }
}

/// One push the emulator answered, once its credential named the instance.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushRecord {
    /// Unix time in milliseconds.
    pub at: i64,
    pub scheme: PushScheme,
    /// The HTTP status answered (200 accepted).
    pub status: u16,
    /// Metrics or usages in the push (0 when it could not be read).
    pub metrics: u32,
    /// Values counted (re-sent metric ids are not counted again).
    pub counted: u32,
    /// `created_at` of the access key a secure push used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_created_at: Option<i64>,
    /// Why it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// An access key issued to an instance, without the key.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessKeyView {
    /// Unix time in milliseconds.
    pub created_at: i64,
    pub expires_at: i64,
}

/// `?pairing_key_ttl=` of instance creation and key re-issue.
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairingKeyQuery {
    /// How long the pairing keys issued stay valid (`30m`, `2h`; at most
    /// 30 days). On creation it is also the instance's lifetime for keys
    /// re-issued later; default `--pairing-key-ttl` (1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pairing_key_ttl: Option<String>,
}

/// The query of instance creation: `?pairing_key_ttl=` and `?id=`.
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateInstanceQuery {
    /// As [`PairingKeyQuery::pairing_key_ttl`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pairing_key_ttl: Option<String>,
    /// Create the instance under this id (a package's marketplace
    /// `instance_uuid`, which its billing pushes name); default: a new
    /// random one. 409 when an instance (even a deleted one) has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", param(value_type = Option<String>))]
    pub id: Option<InstanceId>,
}

/// Filters of `GET /v1/recovery-requests`.
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecoveryQuery {
    /// `open` or `resolved`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RecoveryStatus>,
    /// Only requests of this instance id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceId>,
}

/// The query of a route that takes no parameters: an unknown one is
/// refused, never ignored.
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoQuery {}

/// The body of a route that takes none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct NoBody;
