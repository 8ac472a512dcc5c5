//! Durations from outside: flags, `config.toml`, HTTP headers and registry tags, all in
//! one syntax and all overflow-checked.
//!
//! Accepted: `250ms`, `1.5s`, `90s`, `2m`, `1h30m`, `2d` (humantime's units, fractions
//! included) and bare seconds (`15`, `0.5`). Anything negative, not a number, or longer
//! than [`MAX`] is refused with an error that quotes the value; callers add the key or
//! flag. A value from a peer (a `Retry-After` header) is clamped instead of refused: a
//! receiver's nonsense must not stop delivery.

use std::time::Duration;

/// The longest duration accepted anywhere (100 years of humantime's 365.25 days, so that
/// "100y" itself is accepted): far beyond any sensible setting, far below where `Instant`
/// or `SystemTime` arithmetic could overflow.
pub const MAX: Duration = Duration::from_secs(100 * 365 * 86_400 + 25 * 86_400);

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("'{0}' is not a duration (use e.g. 250ms, 1.5s, 90s, 2m, 1h30m, 2d, or seconds)")]
    Syntax(String),
    #[error("'{0}' is negative")]
    Negative(String),
    #[error("'{0}' is too long (at most 100 years)")]
    TooLong(String),
}

/// Parses a duration (see the module docs).
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let t = s.trim();
    let shown = || t.chars().take(64).collect::<String>();
    if t.is_empty() {
        return Err(DurationError::Syntax(shown()));
    }
    if let Ok(secs) = t.parse::<f64>() {
        return from_secs(secs).map_err(|e| match e {
            DurationError::Syntax(_) => DurationError::Syntax(shown()),
            DurationError::Negative(_) => DurationError::Negative(shown()),
            DurationError::TooLong(_) => DurationError::TooLong(shown()),
        });
    }
    if t.starts_with('-') {
        return Err(DurationError::Negative(shown()));
    }
    match humantime::parse_duration(t) {
        Ok(d) if d <= MAX => Ok(d),
        Ok(_) | Err(humantime::DurationError::NumberOverflow) => {
            Err(DurationError::TooLong(shown()))
        }
        Err(_) => Err(DurationError::Syntax(shown())),
    }
}

/// A number of seconds as a duration, refused when NaN, negative or beyond [`MAX`].
pub fn from_secs(secs: f64) -> Result<Duration, DurationError> {
    if secs.is_nan() {
        Err(DurationError::Syntax(secs.to_string()))
    } else if secs < 0.0 {
        Err(DurationError::Negative(secs.to_string()))
    } else if secs > MAX.as_secs_f64() {
        Err(DurationError::TooLong(secs.to_string()))
    } else {
        Ok(Duration::from_secs_f64(secs))
    }
}

/// A clap value parser: the flag's name is added by clap.
pub fn parse_flag(s: &str) -> Result<Duration, String> {
    parse(s).map_err(|e| e.to_string())
}

/// A clap value parser for a duration flag kept as written (checked here, used later).
pub fn check_flag(s: &str) -> Result<String, String> {
    parse(s).map(|_| s.to_string()).map_err(|e| e.to_string())
}

/// A `Retry-After` value from a peer (RFC 9110: seconds or an HTTP date), clamped to
/// `0..=max`. `None` when it says nothing usable.
pub fn retry_after(value: &[u8], max: Duration) -> Option<Duration> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if text.is_empty() {
        return None;
    }
    let wait = if text.bytes().all(|b| b.is_ascii_digit()) {
        // Saturating: "99999999999999999999999" means "a long time", not an error.
        Duration::from_secs(text.parse::<u64>().unwrap_or(u64::MAX))
    } else if let Ok(secs) = text.parse::<f64>() {
        // Not what the RFC allows ("1e20", "1.5"), but its meaning is clear enough.
        if secs.is_nan() {
            return None;
        }
        Duration::from_secs_f64(secs.clamp(0.0, max.as_secs_f64()))
    } else {
        let at = httpdate::parse_http_date(text).ok()?;
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO)
    };
    Some(wait.min(max))
}

/// `serde` adapters for `config.toml` keys holding a duration, written either as a
/// string with units or as a number of seconds.
pub mod serde_secs {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(f64),
        Text(String),
    }

    /// Deserializes into seconds (`f64`), through [`super::parse`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        let parsed = match Raw::deserialize(d)? {
            Raw::Number(n) => super::from_secs(n),
            Raw::Text(t) => super::parse(&t),
        };
        parsed
            .map(|d| d.as_secs_f64())
            .map_err(serde::de::Error::custom)
    }
}

/// `serde` adapter for an optional duration kept as written (checked later by
/// [`super::parse`] with the key's name): a string, or a number of seconds.
pub mod serde_text {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Number(f64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(Option::<Raw>::deserialize(d)?.map(|r| match r {
            Raw::Number(n) => n.to_string(),
            Raw::Text(t) => t,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_form() {
        let ok = |s: &str, ms: u64| assert_eq!(parse(s), Ok(Duration::from_millis(ms)), "{s}");
        ok("250ms", 250);
        ok("1.5s", 1500);
        ok("90s", 90_000);
        ok("2m", 120_000);
        ok("1h30m", 5_400_000);
        ok("1h 30m", 5_400_000);
        ok("2d", 172_800_000);
        ok("24h", 86_400_000);
        ok("15", 15_000);
        ok(" 0.5 ", 500);
        ok("0", 0);
    }

    #[test]
    fn refuses_what_is_not_a_sane_duration() {
        for s in [
            "", "soon", "5x", "h", "1e20", "inf", "NaN", "-1", "-5s", "1e400",
        ] {
            assert!(parse(s).is_err(), "{s} parsed");
        }
        assert!(matches!(parse("1e20"), Err(DurationError::TooLong(_))));
        assert!(matches!(parse("-3"), Err(DurationError::Negative(_))));
        assert!(matches!(
            parse("99999999999999999999999d"),
            Err(DurationError::TooLong(_))
        ));
        assert!(matches!(parse("200y"), Err(DurationError::TooLong(_))));
        // The bound itself is accepted, however it is written; a second more is not.
        assert_eq!(parse("100y"), Ok(MAX));
        assert_eq!(parse("100 years"), Ok(MAX));
        assert_eq!(parse(&MAX.as_secs().to_string()), Ok(MAX));
        assert!(matches!(
            parse(&(MAX.as_secs() + 1).to_string()),
            Err(DurationError::TooLong(_))
        ));
        assert!(matches!(parse("100y 1s"), Err(DurationError::TooLong(_))));
        // An error quotes at most 64 characters of what it was given.
        let long = "x".repeat(10_000);
        assert!(parse(&long).unwrap_err().to_string().len() < 200);
    }

    #[test]
    fn retry_after_is_clamped_never_fatal() {
        let max = Duration::from_secs(300);
        let ra = |s: &[u8]| retry_after(s, max);
        assert_eq!(ra(b"7"), Some(Duration::from_secs(7)));
        assert_eq!(ra(b"1e20"), Some(max));
        assert_eq!(ra(b"99999999999999999999999999"), Some(max));
        assert_eq!(ra(b"-5"), Some(Duration::ZERO));
        assert_eq!(ra(b"inf"), Some(max));
        assert_eq!(ra(b"NaN"), None);
        assert_eq!(ra(b"soon"), None);
        assert_eq!(ra(b"\xff\xfe"), None);
        assert_eq!(ra(b"Wed, 21 Oct 2015 07:28:00 GMT"), Some(Duration::ZERO));
        let later =
            httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(120));
        let got = ra(later.as_bytes()).unwrap();
        assert!(got > Duration::from_secs(100) && got <= Duration::from_secs(120));
        let far = httpdate::fmt_http_date(
            std::time::SystemTime::now() + Duration::from_secs(86_400 * 365),
        );
        assert_eq!(ra(far.as_bytes()), Some(max));
    }

    #[test]
    fn config_keys_take_numbers_and_units() {
        #[derive(serde::Deserialize)]
        struct K {
            #[serde(with = "serde_secs")]
            w: f64,
        }
        let k: K = toml::from_str("w = \"1m\"").unwrap();
        assert_eq!(k.w, 60.0);
        let k: K = toml::from_str("w = 2.5").unwrap();
        assert_eq!(k.w, 2.5);
        let e = toml::from_str::<K>("w = \"1e20\"")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("too long"), "{e}");
        assert!(toml::from_str::<K>("w = -1").is_err());
    }
}
