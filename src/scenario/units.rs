//! Parsing of the unit-bearing values of the scenario format: durations (`250ms`),
//! rates (`200/s`), fractions (`1%`, `0.01`).
//!
//! Each parser returns a plain `Result<_, String>` whose error is the hint shown to the
//! user; the caller adds file, line and key path. Nothing here knows about YAML.

use std::time::Duration;

/// Parses a duration written with a unit: `250ms`, `2s`, `1m`, `1m30s`.
///
/// A bare number is refused on purpose: `150` could mean seconds or milliseconds, and a
/// scenario that guesses wrong judges the wrong thing.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("expected a duration like `150ms`, got an empty value".into());
    }
    if trimmed.parse::<f64>().is_ok() {
        return Err(format!("expected a duration with a unit like `{trimmed}ms` or `{trimmed}s`, got `{trimmed}`"));
    }
    let d = humantime::parse_duration(trimmed)
        .map_err(|_| format!("expected a duration like `150ms`, `2s` or `1m`, got `{trimmed}`"))?;
    // `1m1m` would add up to 2m: a unit given twice is a typo more often than a sum.
    let units: Vec<&str> = trimmed
        .split(|c: char| c.is_ascii_digit() || c == '.' || c.is_whitespace())
        .filter(|u| !u.is_empty())
        .collect();
    if let Some(twice) = units.iter().enumerate().find_map(|(i, u)| units[..i].contains(u).then_some(*u)) {
        return Err(format!("`{trimmed}` gives the unit `{twice}` twice; write each unit once, like `1m30s`"));
    }
    if d > crate::limits::MAX_DURATION {
        return Err(format!("`{trimmed}` is longer than the longest duration stagegate schedules (366 days)"));
    }
    Ok(d)
}

/// Parses a rate of events per unit of time: `200/s`, `12000/m`, `5/ms`, `3600/h`.
/// Returns events per second.
pub fn parse_rate(text: &str) -> Result<f64, String> {
    let hint = || format!("expected a rate like `200/s` or `12000/m`, got `{}`", text.trim());
    let (count, unit) = text.trim().split_once('/').ok_or_else(hint)?;
    let count: f64 = count.trim().parse().map_err(|_| hint())?;
    let per_second = match unit.trim() {
        "ms" => 1000.0,
        "s" => 1.0,
        "m" | "min" => 1.0 / 60.0,
        "h" => 1.0 / 3600.0,
        _ => return Err(hint()),
    };
    if !count.is_finite() {
        return Err(format!("a rate is a finite number per unit of time, got `{}`", text.trim()));
    }
    if count < 0.0 {
        return Err(format!("a rate cannot be negative, got `{}`", text.trim()));
    }
    let rate = count * per_second;
    if rate > crate::limits::MAX_RATE {
        return Err(format!("`{}` is above the highest rate stagegate schedules (1000000/s)", text.trim()));
    }
    Ok(rate)
}

/// Parses a fraction: `1%`, `0.5%`, `0.01`. Returns a value in `0.0..=1.0`.
pub fn parse_fraction(text: &str) -> Result<f64, String> {
    let trimmed = text.trim();
    let value = if let Some(percent) = trimmed.strip_suffix('%') {
        percent
            .trim()
            .parse::<f64>()
            .map(|p| p / 100.0)
            .map_err(|_| format!("expected a fraction like `1%` or `0.01`, got `{trimmed}`"))?
    } else {
        trimmed.parse::<f64>().map_err(|_| format!("expected a fraction like `1%` or `0.01`, got `{trimmed}`"))?
    };
    if !(0.0..=1.0).contains(&value) {
        return Err(format!("a fraction must lie between 0% and 100%, got `{trimmed}`"));
    }
    Ok(value)
}

/// Renders a duration the way scenarios write them (`250ms`, `2s`, `1.5s`).
pub fn format_duration(d: Duration) -> String {
    let micros = d.as_micros();
    if micros == 0 {
        "0s".into()
    } else if micros < 1000 {
        format!("{micros}µs")
    } else if micros < 1_000_000 {
        let ms = micros as f64 / 1000.0;
        if ms.fract() == 0.0 { format!("{ms:.0}ms") } else { format!("{ms:.2}ms") }
    } else {
        let s = micros as f64 / 1e6;
        if s.fract() == 0.0 { format!("{s:.0}s") } else { format!("{s:.2}s") }
    }
}

/// Renders a share as a percentage without needless digits (`1%`, `0.5%`, `12.5%`).
pub fn format_share(share: f64) -> String {
    let percent = (share * 100.0 * 1000.0).round() / 1000.0;
    let text = format!("{percent:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_render_as_written() {
        assert_eq!(format_share(0.01), "1%");
        assert_eq!(format_share(0.005), "0.5%");
        assert_eq!(format_share(0.125), "12.5%");
        assert_eq!(format_share(1.0), "100%");
        assert_eq!(format_share(parse_fraction("0.3").unwrap()), "30%");
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("1m1m").unwrap_err().contains("the unit `m` twice"));
        let err = parse_duration("150").unwrap_err();
        assert!(err.contains("`150ms`"), "{err}");
        assert!(parse_duration("fast").is_err());
    }

    /// Regression: `duration: 5000000000000000h` validated, then panicked when the stage
    /// was scheduled (an instant overflowed); `rate: 1e18/s` validated, then hung.
    #[test]
    fn durations_and_rates_past_what_can_be_scheduled_are_refused() {
        assert!(parse_duration("5000000000000000h").unwrap_err().contains("366 days"));
        assert!(parse_duration("366days").is_ok());
        assert!(parse_rate("1e18/s").unwrap_err().contains("1000000/s"));
        assert!(parse_rate("1000000/s").is_ok());
    }

    #[test]
    fn rates_convert_to_per_second() {
        assert_eq!(parse_rate("200/s").unwrap(), 200.0);
        assert_eq!(parse_rate("12000/m").unwrap(), 200.0);
        assert!(parse_rate("200").is_err());
        assert!(parse_rate("200/week").is_err());
    }

    #[test]
    fn fractions_accept_percent_and_plain() {
        assert_eq!(parse_fraction("1%").unwrap(), 0.01);
        assert_eq!(parse_fraction("0.25").unwrap(), 0.25);
        assert!(parse_fraction("150%").is_err());
        assert!(parse_fraction("x%").is_err());
    }

    #[test]
    fn durations_render_compactly() {
        assert_eq!(format_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(format_duration(Duration::from_secs(2)), "2s");
        assert_eq!(format_duration(Duration::from_micros(1500)), "1.50ms");
    }
}
