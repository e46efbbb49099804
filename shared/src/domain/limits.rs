//! Per-user limits: requests per fixed window and jobs in flight, each set per tier.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// At most `requests` in each fixed window of `window`, windows aligned on the Unix epoch.
///
/// Fixed windows are one counter per user and window in the store, updated atomically, so they
/// hold across processes; a burst straddling a window boundary can reach twice the rate, which
/// is the usual price of that simplicity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests allowed per window.
    pub requests: u32,
    /// Window length.
    pub window: Duration,
}

impl RateLimit {
    /// Start of the window that holds `now`.
    pub fn window_start(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        let len = i64::try_from(self.window.as_millis())
            .unwrap_or(i64::MAX)
            .max(1);
        let ms = now.timestamp_millis();
        DateTime::from_timestamp_millis(ms - ms.rem_euclid(len)).unwrap_or(now)
    }

    /// Time from `now` until the next window opens.
    pub fn retry_after(&self, now: DateTime<Utc>) -> Duration {
        let end = self.window_start(now)
            + chrono::Duration::from_std(self.window).unwrap_or(chrono::Duration::MAX);
        (end - now).to_std().unwrap_or_default()
    }
}

impl FromStr for RateLimit {
    type Err = String;
    /// `N/s`, `N/min` or `N/h` (also `sec`, `second`, `m`, `minute`, `hour`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("expected N/s, N/min or N/h, as in 60/min (got {s:?})");
        let (n, unit) = s.split_once('/').ok_or_else(bad)?;
        let requests: u32 = n.trim().parse().map_err(|_| bad())?;
        let window = match unit.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        if requests == 0 {
            return Err("must allow at least 1 request; use `off` for no limit".into());
        }
        Ok(Self { requests, window })
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.window.as_secs() {
            1 => "s",
            3600 => "h",
            _ => "min",
        };
        write!(f, "{}/{unit}", self.requests)
    }
}

/// The limits of one tier; `None` is no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TierLimits {
    /// Requests per window.
    pub rate: Option<RateLimit>,
    /// Pending and running jobs at once.
    pub max_in_flight: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_align_and_say_when_the_next_opens() {
        let l: RateLimit = "60/min".parse().unwrap();
        assert_eq!(l.window, Duration::from_secs(60));
        let t = DateTime::from_timestamp(120 + 45, 0).unwrap();
        assert_eq!(l.window_start(t).timestamp(), 120);
        assert_eq!(l.retry_after(t), Duration::from_secs(15));
        for bad in ["60", "0/min", "x/min", "5/day"] {
            assert!(bad.parse::<RateLimit>().is_err(), "{bad}");
        }
        assert_eq!("600/h".parse::<RateLimit>().unwrap().to_string(), "600/h");
    }
}
