//! CronJob schedules as upstream reads them (robfig/cron `ParseStandard`): five
//! fields, the `@yearly|@annually|@monthly|@weekly|@daily|@midnight|@hourly`
//! nicknames, `@every DURATION`, and a `CRON_TZ=`/`TZ=` prefix or `spec.timeZone`
//! for the zone (default UTC, the controller's zone). Field matching and next-time
//! search are croner's, on jiff zoned times (DST-correct through the tz database).

use std::time::Duration;

use croner::parser::{CronParser, Seconds};
use croner::Cron;
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScheduleError {
    #[error("unparseable schedule {0:?}: {1}")]
    Parse(String, String),
    #[error("unknown time zone {0:?}")]
    TimeZone(String),
}

#[derive(Debug, Clone)]
enum Kind {
    Cron(Box<Cron>),
    /// `@every D`: every D after the previous run (robfig `ConstantDelaySchedule`).
    Every(Duration),
}

#[derive(Debug, Clone)]
pub struct Schedule {
    kind: Kind,
    tz: TimeZone,
}

/// Go's `time.ParseDuration` for the forms `@every` takes (`90s`, `1m30s`, `2h`).
fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut num = String::new();
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let c = rest.chars().next()?;
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            rest = &rest[1..];
            continue;
        }
        let (unit, len) = ["ms", "us", "µs", "ns", "h", "m", "s"]
            .iter()
            .find(|u| rest.starts_with(**u))
            .map(|u| (*u, u.len()))?;
        let v: f64 = num.parse().ok()?;
        num.clear();
        total += v * match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            _ => 1e-9,
        };
        rest = &rest[len..];
    }
    if !num.is_empty() {
        return None;
    }
    Some(Duration::from_secs_f64(total))
}

impl Schedule {
    /// Parses `schedule` in `time_zone` (`spec.timeZone`; a `CRON_TZ=` prefix wins).
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let mut s = schedule.trim();
        let mut zone = time_zone.map(str::to_string);
        for prefix in ["CRON_TZ=", "TZ="] {
            if let Some(rest) = s.strip_prefix(prefix) {
                let (z, tail) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                zone = Some(z.to_string());
                s = tail.trim();
            }
        }
        let tz = match zone.as_deref() {
            None | Some("") | Some("UTC") | Some("Etc/UTC") => TimeZone::UTC,
            Some(z) => TimeZone::get(z).map_err(|_| ScheduleError::TimeZone(z.into()))?,
        };
        let err = |m: String| ScheduleError::Parse(schedule.to_string(), m);
        if let Some(d) = s.strip_prefix("@every ") {
            let d = parse_go_duration(d).ok_or_else(|| err("bad @every duration".into()))?;
            if d.is_zero() {
                return Err(err("@every needs a positive duration".into()));
            }
            return Ok(Schedule {
                kind: Kind::Every(d),
                tz,
            });
        }
        let s = if s.eq_ignore_ascii_case("@midnight") {
            "0 0 * * *"
        } else {
            s
        };
        if !s.starts_with('@') && s.split_whitespace().count() != 5 {
            return Err(err(format!(
                "expected exactly 5 fields, found {}",
                s.split_whitespace().count()
            )));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .build()
            .parse(s)
            .map_err(|e| err(e.to_string()))?;
        Ok(Schedule {
            kind: Kind::Cron(Box::new(cron)),
            tz,
        })
    }

    /// The first schedule time strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        match &self.kind {
            Kind::Every(d) => {
                let whole = Timestamp::from_second(t.as_second()).ok()?;
                whole.checked_add(*d).ok()
            }
            Kind::Cron(c) => c
                .find_next_occurrence(&t.to_zoned(self.tz.clone()), false)
                .ok()
                .map(|z: Zoned| z.timestamp()),
        }
    }

    /// The latest schedule time in `(earliest, now]`, and how many were in that
    /// window (upstream `mostRecentScheduleTime`, whose caller warns past 100).
    pub fn most_recent(&self, earliest: Timestamp, now: Timestamp) -> (Option<Timestamp>, u64) {
        let Some(first) = self.next_after(earliest) else {
            return (None, 0);
        };
        if first > now {
            return (None, 0);
        }
        match &self.kind {
            Kind::Every(d) => {
                let span = (now.as_millisecond() - first.as_millisecond()) as u128;
                let step = d.as_millis().max(1);
                let n = span / step;
                let last = first
                    .checked_add(Duration::from_millis((n * step) as u64))
                    .unwrap_or(first);
                (Some(last), n as u64 + 1)
            }
            Kind::Cron(c) => {
                let last = c
                    .find_previous_occurrence(&now.to_zoned(self.tz.clone()), true)
                    .map(|z: Zoned| z.timestamp())
                    .unwrap_or(first);
                // Counting is only for the "too many missed" warning: estimate from
                // the first gap instead of walking every occurrence.
                let gap = self
                    .next_after(first)
                    .map(|second| (second.as_second() - first.as_second()).max(1))
                    .unwrap_or(1);
                let n = ((last.as_second() - first.as_second()) / gap) as u64 + 1;
                (Some(last.max(first)), n)
            }
        }
    }

    /// A schedule time rendered in the schedule's zone (RFC 3339).
    pub fn render(&self, t: Timestamp) -> String {
        let z = t.to_zoned(self.tz.clone());
        z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn standard_fields_and_nicknames() {
        let s = Schedule::parse("*/15 * * * *", None).unwrap();
        assert_eq!(
            s.next_after(ts("2026-01-01T10:07:30Z")),
            Some(ts("2026-01-01T10:15:00Z"))
        );
        let h = Schedule::parse("@hourly", None).unwrap();
        assert_eq!(
            h.next_after(ts("2026-01-01T10:00:00Z")),
            Some(ts("2026-01-01T11:00:00Z"))
        );
        let m = Schedule::parse("@midnight", None).unwrap();
        assert_eq!(
            m.next_after(ts("2026-01-01T10:00:00Z")),
            Some(ts("2026-01-02T00:00:00Z"))
        );
        let w = Schedule::parse("0 9 * * MON-FRI", None).unwrap();
        // 2026-01-03 is a Saturday: next is Monday the 5th.
        assert_eq!(
            w.next_after(ts("2026-01-03T12:00:00Z")),
            Some(ts("2026-01-05T09:00:00Z"))
        );
        assert!(Schedule::parse("* * * *", None).is_err());
        assert!(Schedule::parse("61 * * * *", None).is_err());
        assert!(Schedule::parse("0 * * * *", Some("Mars/Olympus")).is_err());
    }

    #[test]
    fn time_zones_from_spec_or_prefix() {
        // 09:00 in New York (EST, UTC-5 in January) is 14:00 UTC.
        let s = Schedule::parse("0 9 * * *", Some("America/New_York")).unwrap();
        assert_eq!(
            s.next_after(ts("2026-01-01T00:00:00Z")),
            Some(ts("2026-01-01T14:00:00Z"))
        );
        let p = Schedule::parse("CRON_TZ=Asia/Tokyo 0 9 * * *", None).unwrap();
        assert_eq!(
            p.next_after(ts("2026-01-01T00:00:00Z")),
            Some(ts("2026-01-02T00:00:00Z"))
        );
        assert_eq!(
            p.render(ts("2026-01-02T00:00:00Z")),
            "2026-01-02T09:00:00+09:00"
        );
    }

    #[test]
    fn most_recent_unmet_time() {
        let s = Schedule::parse("*/5 * * * *", None).unwrap();
        let (t, n) = s.most_recent(ts("2026-01-01T10:00:00Z"), ts("2026-01-01T10:17:00Z"));
        assert_eq!(t, Some(ts("2026-01-01T10:15:00Z")));
        assert_eq!(n, 3);
        // Nothing due yet.
        let (t, _) = s.most_recent(ts("2026-01-01T10:15:00Z"), ts("2026-01-01T10:17:00Z"));
        assert_eq!(t, None);
        let e = Schedule::parse("@every 5s", None).unwrap();
        let (t, n) = e.most_recent(ts("2026-01-01T10:00:00Z"), ts("2026-01-01T10:00:12Z"));
        assert_eq!(t, Some(ts("2026-01-01T10:00:10Z")));
        assert_eq!(n, 2);
        assert_eq!(
            e.next_after(ts("2026-01-01T10:00:10.5Z")),
            Some(ts("2026-01-01T10:00:15Z"))
        );
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("5"), None);
    }
}
