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

/// A count in at most 4 characters: "999", "9851", "10k", "150k", "1.2M", "3.4G".
pub fn count(n: u64) -> String {
    match n {
        0..10_000 => n.to_string(),
        10_000..999_500 => format!("{}k", (n + 500) / 1000),
        999_500..9_950_000 => format!("{:.1}M", n as f64 / 1e6),
        9_950_000..999_500_000 => format!("{}M", (n + 500_000) / 1_000_000),
        999_500_000..9_950_000_000 => format!("{:.1}G", n as f64 / 1e9),
        _ => format!("{:.0}G", n as f64 / 1e9),
    }
}

/// `s` cut to `width` terminal columns (wide characters take two), with an ellipsis when cut.
pub fn fit(s: &str, width: usize) -> String {
    use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};
    if s.width() <= width {
        return s.to_string();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = c.width().unwrap_or(0);
        if used + w + 1 > width {
            break;
        }
        out.push(c);
        used += w;
    }
    out.push('…');
    out
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
    fn counts_fit_four_characters_and_never_lie_by_cutting() {
        for (n, want) in [
            (0, "0"),
            (9851, "9851"),
            (10_000, "10k"),
            (150_000, "150k"),
            (999_499, "999k"),
            (999_500, "1.0M"),
            (1_234_567, "1.2M"),
            (12_345_678, "12M"),
            (u64::MAX, "18446744074G"),
        ] {
            assert_eq!(count(n), want, "{n}");
        }
        for n in (0..40).map(|i| 7u64.pow(i / 2) * (i as u64 + 1)) {
            let c = count(n);
            assert!(n >= 1_000_000_000_000 || c.chars().count() <= 4, "{n}: {c}");
        }
    }

    #[test]
    fn names_are_cut_by_screen_columns() {
        assert_eq!(fit("決済サービス-東京", 12), "決済サービ…");
        // 17 columns, not 9 characters: whole when there is room, marked when cut.
        assert_eq!(fit("決済サービス-東京", 17), "決済サービス-東京");
        assert_ne!(fit("決済サービス-東京", 17), fit("決済サービス-大阪", 17));
        assert!(fit("決済サービス-東京", 16).ends_with('…'));
        assert_eq!(fit("payments", 8), "payments");
        assert_eq!(fit("payments-eu", 8), "payment…");
    }

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
