//! Parsers for flag values: byte sizes (`500MB`, `256KiB`, `1000000`) and durations (`200ms`, `10m`, `7d`).

use std::time::Duration;

/// Parse a byte size: a plain number, or one with a unit (kB/MB/GB are powers of 1000, KiB/MiB/GiB of 1024).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size: write it like 1000000, 500MB or 256KiB"))?;
    if unit.starts_with(['.', ',']) {
        return Err(format!("{s:?} has a fraction; a size is a whole number of a unit: write 1536MiB, not 1.5GiB"));
    }
    let mult = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" | "k" => 1000,
        "MB" | "M" => 1000 * 1000,
        "GB" | "G" => 1000 * 1000 * 1000,
        "KiB" => 1024,
        "MiB" => 1024 * 1024,
        "GiB" => 1024 * 1024 * 1024,
        other => return Err(format!("unknown size unit {other:?} in {s:?}: use B, kB, MB, GB, KiB, MiB or GiB")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

/// Parse a duration with a unit: ms, s, m, h or d.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    sluice_chunk::parse_duration(s)
        .ok_or_else(|| format!("{s:?} is not a duration: write it like 200ms, 30s, 10m, 2h or 7d"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_bytes("1000000"), Ok(1_000_000));
        assert_eq!(parse_bytes("500MB"), Ok(500_000_000));
        assert_eq!(parse_bytes("256KiB"), Ok(262_144));
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("1.5GiB").unwrap_err().contains("write 1536MiB"), "{:?}", parse_bytes("1.5GiB"));
        assert_eq!(parse_duration("200ms"), Ok(Duration::from_millis(200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse_duration("soon").is_err());
    }
}
