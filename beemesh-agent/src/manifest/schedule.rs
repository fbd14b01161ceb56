//! CronJob schedules: a standard five-field cron line, or a nickname (`@hourly`, `@daily`,
//! `@midnight`, `@weekly`, `@monthly`, `@yearly`), read as Kubernetes reads it (robfig/cron's
//! standard parser: minute hour day-of-month month day-of-week, Sunday 0 or 7, names allowed,
//! and a day matching either day field when both are restricted), in the CronJob's IANA
//! `timeZone` (UTC when unset). croner does the matching on jiff's civil time, so a daylight
//! saving gap or fold is handled as jiff resolves it. Pure: the caller passes the instant.

use croner::parser::{CronParser, Seconds, Year};
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// A parsed schedule in its time zone.
#[derive(Clone, Debug)]
pub struct Schedule {
    cron: croner::Cron,
    tz: TimeZone,
}

impl Schedule {
    /// `schedule` in `time_zone`, or why it is not one.
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Schedule, String> {
        let tz = match time_zone {
            None => TimeZone::UTC,
            Some(name) if name.eq_ignore_ascii_case("local") || name.is_empty() => {
                return Err(format!(
                    "{name:?}: a time zone must be named as in the IANA database (e.g. Europe/Berlin)"
                ))
            }
            Some(name) => jiff::tz::db()
                .get(name)
                .map_err(|_| format!("unknown time zone {name:?} (not in the IANA database)"))?,
        };
        let line = schedule.trim();
        if line.contains("TZ=") {
            return Err("a time zone in the schedule is not allowed: set spec.timeZone".into());
        }
        let line = if line.eq_ignore_ascii_case("@midnight") { "@daily" } else { line };
        if !line.starts_with('@') && line.split_whitespace().count() != 5 {
            return Err(format!(
                "{schedule:?}: expected five fields (minute hour day-of-month month day-of-week) or a @nickname"
            ));
        }
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(line)
            .map_err(|e| format!("{schedule:?}: {e}"))?;
        Ok(Schedule { cron, tz })
    }

    fn zoned(&self, ms: i64) -> Option<jiff::Zoned> {
        Some(Timestamp::from_millisecond(ms).ok()?.to_zoned(self.tz.clone()))
    }

    /// The first scheduled instant strictly after `after_ms` (milliseconds since the epoch).
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let next = self.cron.find_next_occurrence(&self.zoned(after_ms)?, false).ok()?;
        Some(next.timestamp().as_millisecond())
    }

    /// The latest scheduled instant after `after_ms` and at or before `now_ms`: the one run a
    /// controller that missed several starts makes (as Kubernetes starts only the most recent).
    pub fn latest_due(&self, after_ms: i64, now_ms: i64) -> Option<i64> {
        let last = self.cron.find_previous_occurrence(&self.zoned(now_ms)?, true).ok()?;
        let at = last.timestamp().as_millisecond();
        (at > after_ms).then_some(at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> i64 {
        text.parse::<Timestamp>().expect("instant").as_millisecond()
    }

    #[test]
    fn schedules_read_as_kubernetes_reads_them() {
        let every_15 = Schedule::parse("*/15 * * * *", None).expect("parses");
        assert_eq!(every_15.next_after(ms("2026-12-01T10:07:00Z")), Some(ms("2026-12-01T10:15:00Z")));
        assert_eq!(every_15.next_after(ms("2026-12-01T10:15:00Z")), Some(ms("2026-12-01T10:30:00Z")));
        // Day of month or day of week when both are restricted: the 1st, and every Monday.
        let either = Schedule::parse("0 9 1 * MON", None).expect("parses");
        // 2026-12-01 is a Tuesday (the 1st), 2026-12-07 a Monday.
        assert_eq!(either.next_after(ms("2026-11-30T12:00:00Z")), Some(ms("2026-12-01T09:00:00Z")));
        assert_eq!(either.next_after(ms("2026-12-01T09:00:00Z")), Some(ms("2026-12-07T09:00:00Z")));
        // Sunday is 0 and 7.
        let sun0 = Schedule::parse("0 0 * * 0", None).expect("parses");
        let sun7 = Schedule::parse("0 0 * * 7", None).expect("parses");
        let t = ms("2026-12-01T00:00:00Z");
        assert_eq!(sun0.next_after(t), sun7.next_after(t));
        assert_eq!(sun0.next_after(t), Some(ms("2026-12-06T00:00:00Z")));
        let midnight = Schedule::parse("@midnight", None).expect("parses");
        assert_eq!(midnight.next_after(t), Some(ms("2026-12-02T00:00:00Z")));
    }

    #[test]
    fn a_time_zone_moves_the_instants_and_follows_daylight_saving() {
        let berlin = Schedule::parse("30 2 * * *", Some("Europe/Berlin")).expect("parses");
        // Winter: UTC+1.
        assert_eq!(berlin.next_after(ms("2026-12-01T00:00:00Z")), Some(ms("2026-12-01T01:30:00Z")));
        // Summer: UTC+2.
        assert_eq!(berlin.next_after(ms("2026-07-01T00:00:00Z")), Some(ms("2026-07-01T00:30:00Z")));
    }

    #[test]
    fn the_latest_missed_start_is_the_one_made() {
        let minutely = Schedule::parse("* * * * *", None).expect("parses");
        let last = ms("2026-12-01T10:00:00Z");
        assert_eq!(minutely.latest_due(last, ms("2026-12-01T10:00:59Z")), None);
        assert_eq!(minutely.latest_due(last, ms("2026-12-01T10:01:00Z")), Some(ms("2026-12-01T10:01:00Z")));
        assert_eq!(minutely.latest_due(last, ms("2026-12-01T10:05:30Z")), Some(ms("2026-12-01T10:05:00Z")));
    }

    #[test]
    fn bad_schedules_and_zones_say_why() {
        for bad in ["", "* * * *", "0 * * * * *", "61 * * * *", "* * * * * 2026", "CRON_TZ=UTC 0 * * * *"] {
            assert!(Schedule::parse(bad, None).is_err(), "{bad:?} was accepted");
        }
        let e = Schedule::parse("0 * * * *", Some("Mars/Olympus")).expect_err("unknown zone");
        assert!(e.contains("Mars/Olympus"), "{e}");
        assert!(Schedule::parse("0 * * * *", Some("Local")).is_err());
    }
}
