//! Times and durations as people read them: local wall-clock times and `2h10m`.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `2026-12-02 09:14:05` in the local time zone (the C library's, from `TZ` or
/// `/etc/localtime`).
pub fn local_time(unix_s: u64) -> String {
    let t = unix_s as libc::time_t;
    // SAFETY: localtime_r writes only into `tm`, which lives for the call.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if !ok {
        return format!("unix time {unix_s}");
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// `45s`, `12m`, `2h10m`, `3d4h`: the two largest units.
pub fn duration(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => {
            let (m, r) = (s / 60, s % 60);
            if r == 0 || m >= 10 {
                format!("{m}m")
            } else {
                format!("{m}m{r}s")
            }
        }
        3600..86_400 => {
            let (h, m) = (s / 3600, s % 3600 / 60);
            if m == 0 {
                format!("{h}h")
            } else {
                format!("{h}h{m}m")
            }
        }
        _ => {
            let (d, h) = (s / 86_400, s % 86_400 / 3600);
            if h == 0 {
                format!("{d}d")
            } else {
                format!("{d}d{h}h")
            }
        }
    }
}

/// A moment relative to now: `in 2h10m`, `5m ago`.
pub fn relative(at_ms: u64) -> String {
    let now = now_ms();
    if at_ms > now {
        format!("in {}", duration((at_ms - now).div_ceil(1000)))
    } else {
        format!("{} ago", duration((now - at_ms) / 1000))
    }
}

/// `2026-12-02 09:14:05 (in 2h10m)`.
pub fn when(at_ms: u64) -> String {
    format!("{} ({})", local_time(at_ms / 1000), relative(at_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(90), "1m30s");
        assert_eq!(duration(12 * 60 + 5), "12m");
        assert_eq!(duration(2 * 3600 + 10 * 60 + 7), "2h10m");
        assert_eq!(duration(3 * 86_400 + 4 * 3600), "3d4h");
        assert!(relative(now_ms() + 7_800_000).starts_with("in 2h1"));
        assert!(relative(now_ms() - 300_000).ends_with("m ago"));
        let t = local_time(1_796_180_121);
        assert_eq!(t.len(), 19, "{t}");
        assert!(t.starts_with("2026-"), "{t}");
    }
}
