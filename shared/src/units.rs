//! Byte sizes written with units, as legacy workers and humans write them.
//!
//! The legacy RMA agent formats sizes with binary multiples but decimal-looking suffixes
//! (`psutil` bytes / 1024³ printed as "23.5GB"), so `GB` here means GiB, `MB` MiB, and so on.
//! The explicit binary suffixes (`GiB`, `MiB`, ...) mean the same.

use thiserror::Error;

/// 1 KiB.
pub const KIB: u64 = 1024;
/// 1 MiB.
pub const MIB: u64 = 1024 * KIB;
/// 1 GiB.
pub const GIB: u64 = 1024 * MIB;
/// 1 TiB.
pub const TIB: u64 = 1024 * GIB;

/// Why a size could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UnitError {
    /// Nothing but whitespace.
    #[error("is empty; expected a size such as \"16GB\"")]
    Empty,
    /// The number part is missing or not a number.
    #[error("{0:?} is not a size; expected a number with a unit such as \"23.5GB\" or \"4096MB\"")]
    NotANumber(String),
    /// The unit is not one we know.
    #[error("{unit:?} is not a size unit; use B, KB, MB, GB or TB")]
    UnknownUnit {
        /// The unit as written.
        unit: String,
    },
    /// Negative, not finite, or larger than 16 EiB.
    #[error("{0:?} is out of range")]
    OutOfRange(String),
}

/// Parses "23.5GB", "4096 MB", "1TB", "512MiB" or a bare number of bytes into bytes.
///
/// ```
/// use commons_shared::units::{parse_size, GIB};
/// assert_eq!(parse_size("4096MB"), Ok(4 * GIB));
/// assert_eq!(parse_size("23.5GB"), Ok(23 * GIB + GIB / 2));
/// ```
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(UnitError::Empty);
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() || num.starts_with('.') && num.len() == 1 {
        return Err(UnitError::NotANumber(text.to_owned()));
    }
    let value: f64 = num
        .parse()
        .map_err(|_| UnitError::NotANumber(text.to_owned()))?;
    let multiplier = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => KIB,
        "m" | "mb" | "mib" => MIB,
        "g" | "gb" | "gib" => GIB,
        "t" | "tb" | "tib" => TIB,
        _ => {
            return Err(UnitError::UnknownUnit {
                unit: unit.trim().to_owned(),
            });
        }
    };
    let bytes = value * multiplier as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes >= u64::MAX as f64 {
        return Err(UnitError::OutOfRange(text.to_owned()));
    }
    Ok(bytes.round() as u64)
}

/// Formats bytes the way people read them: "23.5 GiB".
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)];
    for (name, size) in UNITS {
        if bytes >= size {
            let v = bytes as f64 / size as f64;
            return if v >= 100.0 || (v - v.round()).abs() < 0.05 {
                format!("{v:.0} {name}")
            } else {
                format!("{v:.1} {name}")
            };
        }
    }
    format!("{bytes} B")
}

/// Bytes in binary units: "1.5 GiB".
pub fn binary(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_table() {
        let ok: &[(&str, u64)] = &[
            ("23.5GB", 23 * GIB + GIB / 2),
            ("252.0GB", 252 * GIB),
            ("4096MB", 4 * GIB),
            ("16GB", 16 * GIB),
            ("16 GB", 16 * GIB),
            ("16gib", 16 * GIB),
            ("1TB", TIB),
            ("1.5T", TIB + TIB / 2),
            ("512", 512),
            ("512B", 512),
            ("8KiB", 8 * KIB),
            (" 2G ", 2 * GIB),
            ("0GB", 0),
        ];
        for (text, want) in ok {
            assert_eq!(parse_size(text), Ok(*want), "{text}");
        }
    }

    #[test]
    fn bad_sizes_table() {
        let bad: &[(&str, UnitError)] = &[
            ("", UnitError::Empty),
            ("   ", UnitError::Empty),
            ("lots", UnitError::NotANumber("lots".into())),
            (
                "Unknown (AMD)",
                UnitError::NotANumber("Unknown (AMD)".into()),
            ),
            (".", UnitError::NotANumber(".".into())),
            ("1.2.3GB", UnitError::NotANumber("1.2.3GB".into())),
            ("-5GB", UnitError::NotANumber("-5GB".into())),
            (
                "12 parsecs",
                UnitError::UnknownUnit {
                    unit: "parsecs".into(),
                },
            ),
            (
                "99999999999999TB",
                UnitError::OutOfRange("99999999999999TB".into()),
            ),
        ];
        for (text, want) in bad {
            assert_eq!(parse_size(text).as_ref(), Err(want), "{text}");
        }
    }

    #[test]
    fn format_round_trips_for_humans() {
        assert_eq!(format_size(23 * GIB + GIB / 2), "23.5 GiB");
        assert_eq!(format_size(4 * GIB), "4 GiB");
        assert_eq!(format_size(100), "100 B");
        assert_eq!(format_size(3 * TIB), "3 TiB");
    }
}
