//! Wire types shared by `ibkit-agent` and `ibkit serve`.
//!
//! Everything that crosses the network, or that both sides must compute the
//! same way (step options with their SPEC §2 defaults, the step hash, result
//! references), lives here so the two binaries cannot drift apart.

pub mod dist;
pub mod duration;
pub mod health;
pub mod operator;
#[cfg(feature = "pinning")]
pub mod pin;
pub mod reference;
pub mod report_fit;
pub mod spec;
pub mod step;
pub mod structured;
pub mod wire;

pub use duration::Duration;
pub use health::{HealthCheck, HealthKind};
pub use reference::{Reference, ReferenceTarget};
pub use spec::{BillingSpec, GroupSpec, HostSpec, InstanceSpec, SpecError};
pub use step::{ScriptType, StepOptions, StepSpec, step_hash};
pub use structured::StructuredJson;

/// Version of the wire protocol; sent by agents and checked by the service.
///
/// 2: `structured_result` travels as JSON text ([`StructuredJson`]) and
/// work carries resolved references ([`wire::ResolvedReference`]).
pub const PROTOCOL_VERSION: u32 = 2;

/// Oldest agent protocol the service pairs with.
pub const MIN_PROTOCOL_VERSION: u32 = 2;

/// A name of a host, group or health check: `[A-Za-z0-9_-]{1,63}`.
///
/// Restricted so it can appear in result references (`.`-separated), paths
/// on the VM's disk and URLs without escaping.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
