//! The one typed resolver for scalar settings. A setting such as `port`,
//! `max_memory`, `cpu_time` or `tls.enabled` may be written as a TOML value
//! of its own type or as a string (which may hold `${NAME}` references);
//! each target type says here how to read either.

use std::time::Duration;

use crate::manifest::spec::MAX_DURATION;

/// A type a scalar setting converts to. Each method returns the problem
/// (without the key, which the resolver adds) when the value does not fit.
pub(super) trait Scalar: Sized {
    /// What the setting takes, for "expected ..., found ..." messages.
    const EXPECTED: &'static str;
    /// How to fix a bad value, when there is more to say than `EXPECTED`.
    const HELP: Option<&'static str> = None;

    fn from_integer(n: i64) -> Result<Self, String> {
        Err(format!("expected {}, found the number {n}", Self::EXPECTED))
    }

    fn from_bool(b: bool) -> Result<Self, String> {
        Err(format!("expected {}, found {b}", Self::EXPECTED))
    }

    fn from_text(text: &str) -> Result<Self, String>;
}

/// A TCP port (0 picks a free one).
pub(super) struct Port(pub(super) u16);

impl Scalar for Port {
    const EXPECTED: &'static str = "a number";
    const HELP: Option<&'static str> =
        Some("use a number from 0 to 65535 (0 picks a free port), or \"${NAME}\" of a property");

    fn from_integer(n: i64) -> Result<Self, String> {
        u16::try_from(n)
            .map(Port)
            .map_err(|_| format!("{n} is not a port number"))
    }

    fn from_text(text: &str) -> Result<Self, String> {
        text.trim()
            .parse()
            .map(Port)
            .map_err(|_| format!("`{text}` is not a port number"))
    }
}

/// A byte size: `1048576`, `"512KiB"`, `"64MiB"`, `"1GiB"`.
pub(super) struct Size(pub(super) usize);

impl Scalar for Size {
    const EXPECTED: &'static str = "a size such as \"64MiB\"";

    fn from_integer(n: i64) -> Result<Self, String> {
        usize::try_from(n)
            .map(Size)
            .map_err(|_| format!("{n} is not a size"))
    }

    fn from_text(text: &str) -> Result<Self, String> {
        parse_size(text).map(Size)
    }
}

/// A whole number of things (connections, lines, bytes).
pub(super) struct Count(pub(super) u64);

impl Scalar for Count {
    const EXPECTED: &'static str = "a whole number";

    fn from_integer(n: i64) -> Result<Self, String> {
        u64::try_from(n)
            .map(Count)
            .map_err(|_| format!("{n} is not a whole number"))
    }

    fn from_text(text: &str) -> Result<Self, String> {
        text.trim()
            .parse()
            .map(Count)
            .map_err(|_| format!("`{text}` is not a whole number"))
    }
}

impl Scalar for bool {
    const EXPECTED: &'static str = "true or false";

    fn from_bool(b: bool) -> Result<Self, String> {
        Ok(b)
    }

    fn from_text(text: &str) -> Result<Self, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(format!("`{text}` is not true or false")),
        }
    }
}

impl Scalar for Duration {
    const EXPECTED: &'static str = "a duration such as \"10s\"";

    fn from_text(text: &str) -> Result<Self, String> {
        parse_duration(text)
    }
}

/// Parse a byte size: `1048576`, `512KiB`, `64MiB`, `1GiB`.
pub(crate) fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| format!("`{text}` does not start with a whole number"))?;
    let scale: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "`{other}` is not a size unit; use B, KiB, MiB or GiB"
            ));
        }
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Parse `500ms`, `10s`, `5m`, `1h`; at most [`MAX_DURATION`].
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` has no unit; write e.g. \"500ms\", \"10s\", \"5m\""))?;
    let (number, unit) = text.split_at(split);
    let millis_per_unit: u64 = match unit.trim() {
        "ms" => 1,
        "s" => 1000,
        "m" => 60 * 1000,
        "h" => 3600 * 1000,
        other => {
            return Err(format!(
                "`{other}` is not a duration unit; use ms, s, m or h"
            ));
        }
    };
    let too_long = || format!("`{text}` is longer than the maximum of 8760h (365 days)");
    let number: u64 =
        number
            .parse()
            .map_err(|error: std::num::ParseIntError| match error.kind() {
                std::num::IntErrorKind::PosOverflow => too_long(),
                _ => format!("`{text}` does not start with a whole number"),
            })?;
    number
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .filter(|duration| *duration <= MAX_DURATION)
        .ok_or_else(too_long)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parses_sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert!(parse_size("1MB").is_err());
        assert!(parse_size("lots").is_err());
    }

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("ten s").is_err());
        assert!(parse_duration("5 days").is_err());
    }

    const DURATION_UNITS: [(&str, u64); 4] =
        [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000)];
    const SIZE_UNITS: [(&str, usize); 5] = [
        ("", 1),
        ("B", 1),
        ("KiB", 1 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn size_and_duration_parsing_never_panics(text in "\\PC{0,32}") {
            let _ = parse_size(&text);
            let _ = parse_duration(&text);
        }

        #[test]
        fn number_like_text_never_panics(text in "[0-9]{0,26} ?[a-zA-Z]{0,4}") {
            let _ = parse_size(&text);
            let _ = parse_duration(&text);
        }

        #[test]
        fn a_formatted_duration_parses_back(number in any::<u64>(), unit in 0..DURATION_UNITS.len(), small in any::<bool>()) {
            let (suffix, millis) = DURATION_UNITS[unit];
            // Half the cases within the maximum, half anywhere.
            let max = MAX_DURATION.as_millis() as u64 / millis;
            let number = if small { number % (max + 1) } else { number };
            let parsed = parse_duration(&format!("{number}{suffix}"));
            match number.checked_mul(millis).map(Duration::from_millis) {
                Some(duration) if duration <= MAX_DURATION => prop_assert_eq!(parsed, Ok(duration)),
                _ => prop_assert!(parsed.unwrap_err().contains("longer than the maximum")),
            }
        }

        #[test]
        fn a_formatted_size_parses_back(number in any::<usize>(), unit in 0..SIZE_UNITS.len(), small in any::<bool>()) {
            let (suffix, scale) = SIZE_UNITS[unit];
            let number = if small { number / scale } else { number };
            let parsed = parse_size(&format!("{number}{suffix}"));
            match number.checked_mul(scale) {
                Some(size) => prop_assert_eq!(parsed, Ok(size)),
                None => prop_assert!(parsed.unwrap_err().contains("too large")),
            }
        }
    }

    #[test]
    fn durations_beyond_the_maximum_are_refused_without_overflow() {
        assert_eq!(MAX_DURATION, Duration::from_secs(365 * 24 * 3600));
        assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("525600m"), Ok(MAX_DURATION));
        let too_long = "is longer than the maximum of 8760h (365 days)";
        for text in [
            "8761h",
            "525601m",
            "31536001s",
            "31536000001ms",
            "5124095576030432h",
            "307445734561825861m",
            "18446744073709551615s",
            "18446744073709551615ms",
            "18446744073709551616s",
            "99999999999999999999999h",
        ] {
            let error = parse_duration(text).unwrap_err();
            assert_eq!(error, format!("`{text}` {too_long}"), "{text}");
        }
    }

    #[test]
    fn each_type_reads_its_own_toml_type_and_text() {
        assert_eq!(Port::from_integer(8080).unwrap().0, 8080);
        assert_eq!(Port::from_text(" 8080 ").unwrap().0, 8080);
        assert!(Port::from_integer(70000).is_err());
        assert!(Port::from_bool(true).is_err());
        assert_eq!(Size::from_text("2MiB").unwrap().0, 2 << 20);
        assert!(Size::from_integer(-1).is_err());
        assert!(bool::from_text("TRUE").unwrap());
        assert!(bool::from_text("yes").is_err());
        assert!(Duration::from_integer(5).is_err());
        assert_eq!(Count::from_text("7").unwrap().0, 7);
    }
}
