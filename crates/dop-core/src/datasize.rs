//! Data sizes as plans write them: a byte count, or `1.5G`, `512M`, `10GB` (`K`/`M`/`G` are
//! binary, `KB`/`MB`/`GB` decimal), with the original tool's truncation to whole bytes.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A size in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DataSize(pub u64);

/// Why a size could not be read. The texts are the original tool's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DataSizeError {
    /// Neither an integer nor a string.
    #[error("invalid size {0}: it must be an integer or a string")]
    Type(String),
    /// Zero or negative.
    #[error("invalid size {0}: it must be greater than zero")]
    NotPositive(String),
    /// A string in another format.
    #[error(
        "invalid size '{0}': it must be a positive number followed by one of K, KB, M, MB, G, \
         GB (for example 512M or 1.5G)"
    )]
    Format(String),
}

impl DataSize {
    /// Parses the string form: `^(([1-9]\d*)(\.\d+)?|0\.(0*[1-9]\d*))[KMG]B?$`.
    pub fn parse(text: &str) -> Result<DataSize, DataSizeError> {
        let format = || DataSizeError::Format(text.to_string());
        let (number, unit) = if let Some(n) = text.strip_suffix("KB") {
            (n, 1_000f64)
        } else if let Some(n) = text.strip_suffix("MB") {
            (n, 1_000_000f64)
        } else if let Some(n) = text.strip_suffix("GB") {
            (n, 1_000_000_000f64)
        } else if let Some(n) = text.strip_suffix('K') {
            (n, 1024f64)
        } else if let Some(n) = text.strip_suffix('M') {
            (n, 1024f64 * 1024f64)
        } else if let Some(n) = text.strip_suffix('G') {
            (n, 1024f64 * 1024f64 * 1024f64)
        } else {
            return Err(format());
        };
        let (whole, fraction) = match number.split_once('.') {
            Some((w, f)) => (w, Some(f)),
            None => (number, None),
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let valid = match fraction {
            None => digits(whole) && !whole.starts_with('0'),
            Some(f) if whole == "0" => digits(f) && f.bytes().any(|b| b != b'0'),
            Some(f) => digits(whole) && !whole.starts_with('0') && digits(f),
        };
        if !valid {
            return Err(format());
        }
        let value: f64 = number.parse().map_err(|_| format())?;
        let bytes = value * unit;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(format());
        }
        // Truncation, as `(float * unit).to_i` in the original: 0.001K is 1 byte.
        Ok(DataSize(bytes as u64))
    }

    /// The size in bytes.
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl fmt::Display for DataSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const GIB: u64 = 1024 * 1024 * 1024;
        const MIB: u64 = 1024 * 1024;
        match self.0 {
            b if b >= GIB && b % GIB == 0 => write!(f, "{}G", b / GIB),
            b if b >= MIB && b % MIB == 0 => write!(f, "{}M", b / MIB),
            b => write!(f, "{b} bytes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_original_grammar() {
        assert_eq!(DataSize::parse("1000K").unwrap().bytes(), 1_024_000);
        assert_eq!(DataSize::parse("1KB").unwrap().bytes(), 1000);
        assert_eq!(DataSize::parse("1.5G").unwrap().bytes(), 1_610_612_736);
        assert_eq!(DataSize::parse("0.5G").unwrap().bytes(), 536_870_912);
        assert_eq!(DataSize::parse("0.001K").unwrap().bytes(), 1);
        assert_eq!(
            DataSize::parse("2500GB").unwrap().bytes(),
            2_500_000_000_000
        );
        for bad in [
            "1000", "10B", "1T", "500g", "2500m", "00.5G", "0G", "0.0G", "G", "1.G", ".5G",
        ] {
            assert!(DataSize::parse(bad).is_err(), "{bad} should be rejected");
        }
    }
}
