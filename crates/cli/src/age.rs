//! How long ago an endpoint started. Registrants write `start_time` as
//! `YYYY-MM-DD HH:MM:SS` in their local time (SPEC §6); it is read here in
//! this machine's local time, which is right when both share a time zone.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds from `start_time` to now; `None` when it is missing or not in
/// the SPEC's form. Negative when it lies in the future (clock skew).
pub fn seconds_since(start_time: &str) -> Option<i64> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs() as i64;
    Some(now - parse_local(start_time)?)
}

/// `YYYY-MM-DD HH:MM:SS` in local time, as seconds since the epoch.
fn parse_local(text: &str) -> Option<i64> {
    let (date, time) = text.trim().split_once(' ')?;
    let fields: Vec<i32> = date
        .split('-')
        .chain(time.split(':'))
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let [year, month, day, hour, min, sec] = fields[..] else {
        return None;
    };
    let in_range = (1..=12).contains(&month)
        && (1..=31).contains(&day)
        && (0..24).contains(&hour)
        && (0..60).contains(&min)
        && (0..=60).contains(&sec);
    if !in_range {
        return None;
    }
    // SAFETY: a zeroed `tm` is a valid value; mktime reads and normalises
    // only the struct it is given.
    let t = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        tm.tm_year = year - 1900;
        tm.tm_mon = month - 1;
        tm.tm_mday = day;
        tm.tm_hour = hour;
        tm.tm_min = min;
        tm.tm_sec = sec;
        tm.tm_isdst = -1; // let the time zone rules decide
        libc::mktime(&mut tm)
    };
    (t != -1).then_some(t as i64)
}

/// `45s ago`, `3m12s ago`, `2h05m ago`, `3d04h ago`; `in 5s` for a start
/// in the future.
pub fn human(seconds: i64) -> String {
    let span = rpc_config::human_duration(std::time::Duration::from_secs(seconds.unsigned_abs()));
    if seconds < 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `t` (seconds since the epoch) written the way registrants write it.
    fn local_text(t: i64) -> String {
        rpc_registry::local_time(t)
    }

    #[test]
    fn reads_back_what_a_registrant_wrote() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let text = local_text(now - 192);
        assert_eq!(parse_local(&text), Some(now - 192));
        let ago = seconds_since(&text).unwrap();
        assert!((192..195).contains(&ago), "{ago}");
    }

    #[test]
    fn missing_or_malformed_times_have_no_age() {
        for bad in [
            "",
            "2026-11-24",
            "2026-11-24T20:21:43",
            "2026-13-01 00:00:00",
            "2026-11-24 20:21",
            "2026-11-24 20:21:43:01",
            "yesterday at noon",
        ] {
            assert_eq!(seconds_since(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn human_spans() {
        assert_eq!(human(0), "0s ago");
        assert_eq!(human(45), "45s ago");
        assert_eq!(human(192), "3m12s ago");
        assert_eq!(human(2 * 3600 + 5 * 60 + 9), "2h05m ago");
        assert_eq!(human(3 * 86400 + 4 * 3600), "3d04h ago");
        assert_eq!(human(-5), "in 5s");
    }
}
