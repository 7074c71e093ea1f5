//! Calendar dates in UTC, for programme periods, report windows and statement months: the
//! days-from-civil conversion on the proleptic Gregorian calendar, no time zones.

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    // Shift the year to start in March, so that the leap day is the year's last day.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

fn days_in_month(y: i64, m: u32) -> u32 {
    let next = if m == 12 {
        days_from_civil(y + 1, 1, 1)
    } else {
        days_from_civil(y, m + 1, 1)
    };
    (next - days_from_civil(y, m, 1)) as u32
}

fn num(s: &str, what: &str) -> Result<u32, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{what} {s:?} is not a number"));
    }
    s.parse().map_err(|_| format!("{what} {s:?} is too large"))
}

/// Seconds since the epoch of `YYYY-MM-DD` (midnight UTC), `YYYY-MM-DDTHH:MM:SSZ`, or a
/// plain number of seconds since the epoch.
pub fn parse_time_s(s: &str) -> Result<u64, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map_err(|_| format!("{s:?} is too large for a time"));
    }
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let parts: Vec<&str> = date.split('-').collect();
    let [y, m, d] = parts[..] else {
        return Err(format!(
            "{s:?} is not a date (YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ, UTC)"
        ));
    };
    let (y, m, d) = (num(y, "year")? as i64, num(m, "month")?, num(d, "day")?);
    if !(1970..=9999).contains(&y) {
        return Err(format!("{s:?}: the year must be in 1970..=9999"));
    }
    if !(1..=12).contains(&m) {
        return Err(format!("{s:?}: the month must be in 1..=12"));
    }
    if d < 1 || d > days_in_month(y, m) {
        return Err(format!("{s:?}: no such day in that month"));
    }
    let mut t = days_from_civil(y, m, d) as u64 * 86_400;
    if let Some(time) = time {
        let time = time
            .strip_suffix('Z')
            .ok_or_else(|| format!("{s:?}: a time must be UTC, ending in Z"))?;
        let hms: Vec<&str> = time.split(':').collect();
        let [h, mi, sec] = hms[..] else {
            return Err(format!("{s:?}: the time must be HH:MM:SS"));
        };
        let (h, mi, sec) = (num(h, "hour")?, num(mi, "minute")?, num(sec, "second")?);
        if h > 23 || mi > 59 || sec > 59 {
            return Err(format!("{s:?}: no such time of day"));
        }
        t += h as u64 * 3600 + mi as u64 * 60 + sec as u64;
    }
    Ok(t)
}

/// `YYYY-MM` → the month's first second and the next month's first second.
pub fn parse_month(s: &str) -> Result<(u64, u64), String> {
    let Some((y, m)) = s.split_once('-') else {
        return Err(format!("{s:?} is not a month (YYYY-MM)"));
    };
    let (y, m) = (num(y, "year")? as i64, num(m, "month")?);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) {
        return Err(format!("{s:?} is not a month (YYYY-MM)"));
    }
    let from = days_from_civil(y, m, 1) as u64 * 86_400;
    let to = from + days_in_month(y, m) as u64 * 86_400;
    Ok((from, to))
}

/// The UTC date of a time, `YYYY-MM-DD`.
pub fn date(t_s: u64) -> String {
    let (y, m, d) = civil_from_days((t_s / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// A time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn date_time(t_s: u64) -> String {
    let s = t_s % 86_400;
    format!(
        "{}T{:02}:{:02}:{:02}Z",
        date(t_s),
        s / 3600,
        s % 3600 / 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_and_bad_ones_are_named() {
        assert_eq!(parse_time_s("1970-01-01"), Ok(0));
        assert_eq!(parse_time_s("2026-11-01"), Ok(1_793_491_200));
        assert_eq!(parse_time_s("2024-02-29T12:00:00Z"), Ok(1_709_208_000));
        assert_eq!(date(1_793_491_200), "2026-11-01");
        assert_eq!(date_time(1_709_208_000), "2024-02-29T12:00:00Z");
        assert_eq!(
            parse_month("2026-11"),
            Ok((1_793_491_200, 1_793_491_200 + 30 * 86_400))
        );
        assert_eq!(
            parse_month("2026-12").unwrap().1,
            parse_time_s("2027-01-01").unwrap()
        );
        for bad in [
            "2026-02-29",
            "2026-13-01",
            "26-1-1",
            "2026-11-01T25:00:00Z",
            "x",
            "2026-11-01T10:00:00",
        ] {
            assert!(parse_time_s(bad).is_err(), "{bad}");
        }
        for d in (0..20_000i64).step_by(37) {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
    }
}
