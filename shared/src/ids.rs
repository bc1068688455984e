//! Identifiers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A worker's id: 128 random bits chosen by the coordinator, written as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkerId(pub u128);

impl WorkerId {
    /// The id from 16 random bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(u128::from_be_bytes(bytes))
    }
}

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Debug for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WorkerId({self})")
    }
}

/// A string that is not a worker id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a worker id: expected 32 hexadecimal digits")]
pub struct BadWorkerId;

impl FromStr for WorkerId {
    type Err = BadWorkerId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BadWorkerId);
        }
        u128::from_str_radix(s, 16)
            .map(WorkerId)
            .map_err(|_| BadWorkerId)
    }
}

impl Serialize for WorkerId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for WorkerId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let id = WorkerId(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        let s = id.to_string();
        assert_eq!(s, "0123456789abcdef0011223344556677");
        assert_eq!(s.parse::<WorkerId>(), Ok(id));
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(serde_json::from_str::<WorkerId>(&json).unwrap(), id);
    }

    #[test]
    fn rejects_other_shapes() {
        for bad in [
            "",
            "worker-195d5431",
            "0123456789abcdef001122334455667",
            "g123456789abcdef0011223344556677",
            "+123456789abcdef0011223344556677",
        ] {
            assert!(bad.parse::<WorkerId>().is_err(), "{bad}");
        }
    }
}
