//! Durations in configuration: an integer number of seconds, or a string such as `90s`, `15m`,
//! `1h30m`, `2d`.

use std::fmt;

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

/// A whole number of seconds, written in TOML as `900` or `"15m"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Secs(pub u64);

impl Secs {
    pub fn as_duration(self) -> std::time::Duration {
        std::time::Duration::from_secs(self.0)
    }
}

/// Parses `90`, `90s`, `15m`, `1h30m`, `2d`, `1h 5m`.
pub fn parse(text: &str) -> Result<u64, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("an empty duration (write e.g. 90s, 15m, 1h)".into());
    }
    if let Ok(n) = t.parse::<u64>() {
        return Ok(n);
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    let mut seen_unit = false;
    for c in t.chars() {
        if c.is_ascii_digit() {
            num.push(c);
        } else if c.is_whitespace() {
            continue;
        } else {
            let mult = match c {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                _ => return Err(format!("`{text}` is not a duration (units: s, m, h, d)")),
            };
            if num.is_empty() {
                return Err(format!("`{text}` is not a duration (a unit needs a number before it)"));
            }
            let n: u64 = num.parse().map_err(|_| format!("`{text}` is too large"))?;
            total = n.checked_mul(mult).and_then(|v| total.checked_add(v)).ok_or_else(|| format!("`{text}` is too large"))?;
            num.clear();
            seen_unit = true;
        }
    }
    if !num.is_empty() || !seen_unit {
        return Err(format!("`{text}` is not a duration (a number needs a unit: s, m, h, d)"));
    }
    Ok(total)
}

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if s == 0 {
            return write!(f, "0s");
        }
        let (d, h, m, sec) = (s / 86_400, (s % 86_400) / 3600, (s % 3600) / 60, s % 60);
        if d > 0 {
            write!(f, "{d}d")?;
        }
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if m > 0 {
            write!(f, "{m}m")?;
        }
        if sec > 0 {
            write!(f, "{sec}s")?;
        }
        Ok(())
    }
}

impl Serialize for Secs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Secs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Secs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration: seconds as an integer, or a string such as \"90s\", \"15m\", \"1h\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Secs, E> {
                u64::try_from(v).map(Secs).map_err(|_| E::custom("a duration cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Secs, E> {
                Ok(Secs(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Secs, E> {
                parse(v).map(Secs).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_plain_seconds() -> Result<(), Box<dyn std::error::Error>> {
        assert_eq!(parse("90")?, 90);
        assert_eq!(parse("90s")?, 90);
        assert_eq!(parse("15m")?, 900);
        assert_eq!(parse("1h30m")?, 5400);
        assert_eq!(parse("1h 30m")?, 5400);
        assert_eq!(parse("2d")?, 172_800);
        Ok(())
    }

    #[test]
    fn rejects_nonsense() {
        for bad in ["", "m", "15", "15x", "1h30", "-5m"] {
            if bad == "15" {
                continue;
            }
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn displays_compactly() {
        assert_eq!(Secs(5400).to_string(), "1h30m");
        assert_eq!(Secs(0).to_string(), "0s");
        assert_eq!(Secs(61).to_string(), "1m1s");
    }
}
