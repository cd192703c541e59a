//! Budget periods: calendar day, week (from Monday), month in UTC, or total.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Week,
    #[default]
    Month,
    Total,
}

const DAY: u64 = 86_400;

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
            Period::Total => "total",
        }
    }

    pub fn parse(s: &str) -> Option<Period> {
        [Period::Day, Period::Week, Period::Month, Period::Total]
            .into_iter()
            .find(|p| p.as_str() == s)
    }

    /// The Unix second the period holding `now` began (0 for `total`).
    pub fn start(self, now: u64) -> u64 {
        let day = now / DAY;
        match self {
            Period::Day => day * DAY,
            // 1970-01-01 was a Thursday: Monday-based weekday is (day + 3) % 7.
            Period::Week => (day - (day + 3) % 7) * DAY,
            Period::Month => {
                let (y, m, _) = civil_from_days(day as i64);
                days_from_civil(y, m, 1) as u64 * DAY
            }
            Period::Total => 0,
        }
    }

    /// The Unix second the period holding `now` ends (`None` for `total`).
    pub fn end(self, now: u64) -> Option<u64> {
        let start = self.start(now);
        match self {
            Period::Day => Some(start + DAY),
            Period::Week => Some(start + 7 * DAY),
            Period::Month => {
                let (y, m, _) = civil_from_days((start / DAY) as i64);
                let (y, m) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                Some(days_from_civil(y, m, 1) as u64 * DAY)
            }
            Period::Total => None,
        }
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day number since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// `YYYY-MM-DD` of a Unix second.
pub fn date_of(secs: u64) -> String {
    let (y, m, d) = civil_from_days((secs / DAY) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(y: i64, m: u32, d: u32, h: u64) -> u64 {
        days_from_civil(y, m, d) as u64 * DAY + h * 3600
    }

    #[test]
    fn periods_begin_and_end_on_utc_calendar_bounds() {
        // 2026-12-09 is a Wednesday.
        let now = at(2026, 12, 9, 15);
        assert_eq!(Period::Day.start(now), at(2026, 12, 9, 0));
        assert_eq!(Period::Day.end(now), Some(at(2026, 12, 10, 0)));
        assert_eq!(Period::Week.start(now), at(2026, 12, 7, 0));
        assert_eq!(Period::Week.end(now), Some(at(2026, 12, 14, 0)));
        assert_eq!(Period::Month.start(now), at(2026, 12, 1, 0));
        assert_eq!(Period::Month.end(now), Some(at(2027, 1, 1, 0)));
        assert_eq!(Period::Total.start(now), 0);
        assert_eq!(Period::Total.end(now), None);
        // A Monday is its own week's start.
        assert_eq!(Period::Week.start(at(2026, 12, 7, 1)), at(2026, 12, 7, 0));
        assert_eq!(date_of(now), "2026-12-09");
        assert_eq!(civil_from_days(days_from_civil(2028, 2, 29)), (2028, 2, 29));
    }
}
