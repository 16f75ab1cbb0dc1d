//! Value types the manifest accepts in human form: durations (`500ms`, `30s`, `5m`), byte sizes
//! (`"100MB"`, `"64KiB"`), ratios (`0.01` or `"1%"`) and traffic weights (0-100).
//!
//! Parsing here is pure string work; where in the file a value came from is the reader's business.

use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// A duration written the human way in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }

    pub const fn from_millis(millis: u64) -> Self {
        Duration(std::time::Duration::from_millis(millis))
    }

    pub fn as_std(self) -> std::time::Duration {
        self.0
    }
}

impl FromStr for Duration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.is_empty() {
            return Err("the duration is empty".to_owned());
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("`{text}` has no unit"));
        }
        humantime::parse_duration(text)
            .map(Duration)
            .map_err(|error| format!("`{text}` is not a duration ({error})"))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A number of bytes written the human way: `"100MB"` (decimal units: kB/KB, MB, GB) or `"64KiB"`
/// (binary units: KiB, MiB, GiB), or `"512B"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub const fn mebibytes(n: u64) -> Self {
        ByteSize(n * 1024 * 1024)
    }

    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        let digits_end = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(digits_end);
        if number.is_empty() {
            return Err(format!("`{trimmed}` does not start with a number"));
        }
        let multiplier: u64 = match unit.trim() {
            "" => return Err(format!("`{trimmed}` has no unit")),
            "B" => 1,
            "kB" | "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            other => return Err(format!("`{other}` is not a unit of bytes")),
        };
        number
            .parse::<u64>()
            .ok()
            .and_then(|number| number.checked_mul(multiplier))
            .map(ByteSize)
            .ok_or_else(|| format!("`{trimmed}` is too large"))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u64, &str); 6] = [
            (1 << 30, "GiB"),
            (1_000_000_000, "GB"),
            (1 << 20, "MiB"),
            (1_000_000, "MB"),
            (1 << 10, "KiB"),
            (1_000, "kB"),
        ];
        for (size, unit) in UNITS {
            if self.0 >= size && self.0.is_multiple_of(size) {
                return write!(f, "{}{unit}", self.0 / size);
            }
        }
        write!(f, "{}B", self.0)
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// A share between 0 and 1 inclusive, such as an error rate.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Serialize)]
pub struct Ratio(f64);

impl Ratio {
    /// Returns `None` outside 0..=1 or for NaN.
    pub fn new(value: f64) -> Option<Self> {
        (0.0..=1.0).contains(&value).then_some(Ratio(value))
    }

    pub fn get(self) -> f64 {
        self.0
    }

    /// Parses `"1%"` or `"0.5%"`.
    pub fn from_percent(text: &str) -> Result<Self, String> {
        let number = text
            .trim()
            .strip_suffix('%')
            .ok_or_else(|| format!("`{text}` is not a percentage"))?;
        let value: f64 = number
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not a percentage"))?;
        Ratio::new(value / 100.0).ok_or_else(|| format!("`{text}` is outside 0%..100%"))
    }
}

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A traffic weight in percent, 0-100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Weight(u8);

impl Weight {
    pub const FULL: Weight = Weight(100);

    pub fn new(value: i64) -> Option<Self> {
        u8::try_from(value).ok().filter(|v| *v <= 100).map(Weight)
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

#[cfg(test)]
mod tests;
