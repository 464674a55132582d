//! The service's storage: every SQL statement about instances, hosts,
//! steps, health results, reports, recovery requests, billing and the
//! deployment controller's published timelines lives in this
//! module, one file per table, with typed rows and its own error type.
//! Routes, dispatch and the monitor call these functions inside the
//! connection or transaction [`crate::db::Db`] gives them; statuses go in
//! and out as the enums of `ibkit_api`, never as string literals.

pub mod billing;
pub mod deployments;
pub mod health;
pub mod hosts;
pub mod instances;
pub mod recovery;
pub mod reports;
pub mod steps;

use ibkit_api::operator::{
    GroupName, HostHealth, HostName, InstanceId, PushScheme, RecoveryKind, RecoveryRequestId,
    RecoveryStatus,
};
use ibkit_api::wire::{InstanceStatus, StepStatus};

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    #[error("stored JSON unreadable: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("database task failed: {0}")]
    Task(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A value stored as text in a column: the API's enums and identifiers.
/// They are written with `as_str()`; [`col`] reads one back, and an
/// unknown value is an error naming it, never a silent default.
pub trait TextValue: Sized {
    fn from_text(text: &str) -> Option<Self>;
}

macro_rules! text_value {
    ($ty:ty, $from:expr) => {
        impl TextValue for $ty {
            fn from_text(text: &str) -> Option<Self> {
                let from: fn(&str) -> Option<$ty> = $from;
                from(text)
            }
        }
    };
}

text_value!(StepStatus, StepStatus::parse);
text_value!(InstanceStatus, InstanceStatus::parse);
text_value!(HostHealth, HostHealth::parse);
text_value!(RecoveryStatus, RecoveryStatus::parse);
text_value!(RecoveryKind, |s| Some(RecoveryKind::parse(s)));
text_value!(InstanceId, |s| InstanceId::parse(s).ok());
text_value!(HostName, |s| HostName::parse(s).ok());
text_value!(GroupName, |s| GroupName::parse(s).ok());
text_value!(RecoveryRequestId, |s| RecoveryRequestId::parse(s).ok());
text_value!(PushScheme, PushScheme::parse);

/// Column `i` of a row as a [`TextValue`].
pub fn col<T: TextValue>(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<T> {
    let text: String = row.get(i)?;
    T::from_text(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("unexpected {} {text:?}", std::any::type_name::<T>()).into(),
        )
    })
}

/// (host, group, index): a step of an instance.
pub type StepKey = (String, String, u32);
