//! Short, fixed-width renderings of numbers and times for the dashboard's cells.

/// "-", "0", "12.5", "950", "12k", "3.4M".
pub fn rate(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(0.0) => "0".into(),
        Some(v) if v < 100.0 => format!("{v:.1}"),
        Some(v) if v < 10_000.0 => format!("{v:.0}"),
        Some(v) if v < 10_000_000.0 => format!("{:.0}k", v / 1e3),
        Some(v) => format!("{:.1}M", v / 1e6),
    }
}

/// "-", "0%", "5.3%", "100%".
pub fn pct(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v == 0.0 || v >= 100.0 => format!("{v:.0}%"),
        Some(v) => format!("{v:.1}%"),
    }
}

/// Milliseconds: "-", "0.05", "12.3", "1534".
pub fn ms(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v < 10.0 => format!("{v:.2}"),
        Some(v) if v < 1000.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.0}"),
    }
}

/// "42s", "3m04s", "1h02m", "2d03h".
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// Seconds since the epoch as UTC "HH:MM:SS".
pub fn clock(epoch: f64) -> String {
    let s = epoch.max(0.0) as u64 % 86400;
    format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_stay_short() {
        assert_eq!(rate(Some(12.34)), "12.3");
        assert_eq!(rate(Some(12_345.0)), "12k");
        assert_eq!(pct(Some(5.26)), "5.3%");
        assert_eq!(pct(Some(100.0)), "100%");
        assert_eq!(ms(Some(0.049)), "0.05");
        assert_eq!(duration(3725.0), "1h02m");
        assert_eq!(duration(184.0), "3m04s");
        assert_eq!(clock(1_795_000_000.0 + 3661.0), "12:07:41");
    }
}
