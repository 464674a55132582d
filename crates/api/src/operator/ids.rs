//! Typed identifiers of the operator API: an instance id is a UUID, a host
//! name is a valid name ([`crate::is_valid_name`]). Parsed once at the edge
//! (path, query, JSON), so handlers and clients never check strings again.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a text is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not {what}")]
pub struct IdError {
    pub text: String,
    pub what: &'static str,
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $valid:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// `text` if it is valid.
            pub fn parse(text: &str) -> Result<Self, IdError> {
                let valid: fn(&str) -> bool = $valid;
                if valid(text) {
                    Ok($name(text.to_string()))
                } else {
                    Err(IdError {
                        text: text.chars().take(80).collect(),
                        what: $what,
                    })
                }
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.pad(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                self.0 == *other
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                Self::parse(&text).map_err(serde::de::Error::custom)
            }
        }
    };
}

fn is_uuid(text: &str) -> bool {
    uuid::Uuid::try_parse(text).is_ok_and(|u| u.hyphenated().to_string() == text)
}

string_id!(
    /// An instance id: a lower-case hyphenated UUID, as the service issues them.
    InstanceId,
    "an instance id (a UUID)",
    is_uuid
);

string_id!(
    /// A host of an instance (`[A-Za-z0-9_-]{1,63}`).
    HostName,
    "a host name ([A-Za-z0-9_-], at most 63)",
    crate::is_valid_name
);

string_id!(
    /// A group of steps (`[A-Za-z0-9_-]{1,63}`).
    GroupName,
    "a group name ([A-Za-z0-9_-], at most 63)",
    crate::is_valid_name
);

string_id!(
    /// A recovery request id (a UUID).
    RecoveryRequestId,
    "a recovery request id (a UUID)",
    is_uuid
);

impl InstanceId {
    /// A fresh random id.
    pub fn new_v4() -> InstanceId {
        InstanceId(uuid::Uuid::new_v4().hyphenated().to_string())
    }
}

impl From<uuid::Uuid> for InstanceId {
    fn from(u: uuid::Uuid) -> InstanceId {
        InstanceId(u.hyphenated().to_string())
    }
}

impl InstanceId {
    /// The id as a UUID (always valid: checked when parsed).
    pub fn to_uuid(&self) -> uuid::Uuid {
        uuid::Uuid::try_parse(&self.0).unwrap_or_default()
    }
}

impl RecoveryRequestId {
    /// A fresh random id.
    pub fn new_v4() -> RecoveryRequestId {
        RecoveryRequestId(uuid::Uuid::new_v4().hyphenated().to_string())
    }
}

#[cfg(feature = "openapi")]
mod schema {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaFormat, Type};
    use utoipa::openapi::{RefOr, Schema};

    macro_rules! string_schema {
        ($name:ident, $desc:literal, $format:expr) => {
            impl utoipa::PartialSchema for super::$name {
                fn schema() -> RefOr<Schema> {
                    let format: Option<SchemaFormat> = $format;
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .format(format)
                        .description(Some($desc))
                        .into()
                }
            }
            impl utoipa::ToSchema for super::$name {}
        };
    }

    string_schema!(
        InstanceId,
        "An instance id (a UUID)",
        Some(SchemaFormat::Custom("uuid".into()))
    );
    string_schema!(
        RecoveryRequestId,
        "A recovery request id (a UUID)",
        Some(SchemaFormat::Custom("uuid".into()))
    );
    string_schema!(HostName, "A host name ([A-Za-z0-9_-]{1,63})", None);
    string_schema!(GroupName, "A group name ([A-Za-z0-9_-]{1,63})", None);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_at_the_edge() {
        let id = InstanceId::new_v4();
        assert_eq!(InstanceId::parse(id.as_str()), Ok(id.clone()));
        let json = serde_json::to_string(&id).unwrap_or_default();
        assert_eq!(serde_json::from_str::<InstanceId>(&json).ok(), Some(id));
        for bad in ["", "x", "0000", "6F9619FF-8B86-D011-B42D-00C04FC964FF"] {
            assert!(InstanceId::parse(bad).is_err(), "{bad}");
        }
        let e = serde_json::from_str::<HostName>("\"a b\"").map(|_| ());
        assert!(
            e.is_err_and(|e| e.to_string().contains("is not a host name")),
            "a bad host name is refused with its reason"
        );
        assert!(HostName::parse("web-1").is_ok());
        assert!(HostName::parse(&"h".repeat(64)).is_err());
    }
}
