//! The kernel's HZ (jiffies per second): a connect deadline below the kernel's 1 s initial SYN
//! timeout is given to the kernel in jiffies. Nothing exposes HZ directly: the build config
//! says it, or the jiffies counter in /proc/timer_list shows it moving.

use std::time::{Duration, Instant};

/// HZ values the kernel can be built with.
const KNOWN: [u32; 4] = [100, 250, 300, 1000];
/// When nothing says: the lowest. A deadline's first SYN timer then fires early (a spurious
/// SYN retransmission), never late; the user timeout still decides when the connect fails.
pub const FALLBACK: u32 = 100;

/// HZ, and where it was found (for the log).
pub fn detect() -> (u32, String) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let path = format!("/boot/config-{}", release.trim());
    if let Some(hz) = std::fs::read_to_string(&path)
        .ok()
        .and_then(|c| from_config(&c))
    {
        return (hz, path);
    }
    if let Some(hz) = from_timer_list() {
        return (hz, "/proc/timer_list".into());
    }
    (FALLBACK, "nowhere (assumed)".into())
}

pub fn from_config(config: &str) -> Option<u32> {
    config
        .lines()
        .find_map(|l| l.strip_prefix("CONFIG_HZ="))
        .and_then(|v| v.trim().parse().ok())
        .filter(|hz| KNOWN.contains(hz))
}

fn jiffies() -> Option<u64> {
    let list = std::fs::read_to_string("/proc/timer_list").ok()?;
    list.lines()
        .find_map(|l| l.strip_prefix("jiffies:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Two readings 60 ms apart, rounded to the nearest value a kernel can have.
fn from_timer_list() -> Option<u32> {
    let (j0, t0) = (jiffies()?, Instant::now());
    std::thread::sleep(Duration::from_millis(60));
    let (j1, t1) = (jiffies()?, Instant::now());
    let rate = j1.checked_sub(j0)? as f64 / (t1 - t0).as_secs_f64();
    nearest(rate)
}

pub fn nearest(rate: f64) -> Option<u32> {
    if !(rate.is_finite() && rate > 0.0) {
        return None;
    }
    KNOWN.iter().copied().min_by(|a, b| {
        let (da, db) = ((f64::from(*a) - rate).abs(), (f64::from(*b) - rate).abs());
        da.total_cmp(&db)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_build_config() {
        assert_eq!(
            from_config("# x\nCONFIG_HZ_250=y\nCONFIG_HZ=250\n"),
            Some(250)
        );
        assert_eq!(from_config("CONFIG_HZ=123\n"), None);
        assert_eq!(from_config(""), None);
    }

    #[test]
    fn rounds_a_measured_rate() {
        assert_eq!(nearest(233.0), Some(250));
        assert_eq!(nearest(283.0), Some(300));
        assert_eq!(nearest(96.0), Some(100));
        assert_eq!(nearest(870.0), Some(1000));
        assert_eq!(nearest(0.0), None);
    }

    #[test]
    fn this_kernel_has_one() {
        let (hz, from) = detect();
        assert!(KNOWN.contains(&hz), "{hz} from {from}");
    }
}
