//! Dates and times: PostgreSQL counts from 2000-01-01, Arrow from 1970-01-01.
//!
//! Rules for values with no faithful Arrow form:
//! * `infinity` / `-infinity` dates and timestamps become `i32::MAX` /
//!   `-i32::MAX` (dates) and `i64::MAX` / `-i64::MAX` (timestamps), the
//!   sentinels DuckDB uses for the same values. No finite PostgreSQL value
//!   maps onto them: finite values that would (timestamps after the year
//!   294246) are refused and travel as text in `_unmapped`.
//! * `time '24:00:00'` is refused (Arrow's time of day stays below 24h).
//! * Intervals whose time part overflows nanoseconds (over 292 years of
//!   hours) are refused the same way.

use super::{take, FormatError};
use arrow_buffer::IntervalMonthDayNano;

/// Days from 1970-01-01 to 2000-01-01.
pub const EPOCH_SHIFT_DAYS: i32 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
pub const EPOCH_SHIFT_MICROS: i64 = EPOCH_SHIFT_DAYS as i64 * 86_400 * 1_000_000;

/// A PostgreSQL `date` as Arrow `Date32`, or `None` if it has no faithful form.
pub fn date(pg_days: i32) -> Option<i32> {
    match pg_days {
        i32::MAX => Some(i32::MAX),
        i32::MIN => Some(-i32::MAX),
        days => days.checked_add(EPOCH_SHIFT_DAYS).filter(|d| *d != i32::MAX && *d > -i32::MAX),
    }
}

/// A PostgreSQL `timestamp`/`timestamptz` as Arrow microseconds, or `None`
/// if it has no faithful form.
pub fn timestamp(pg_micros: i64) -> Option<i64> {
    match pg_micros {
        i64::MAX => Some(i64::MAX),
        i64::MIN => Some(-i64::MAX),
        micros => micros.checked_add(EPOCH_SHIFT_MICROS).filter(|m| *m != i64::MAX && *m > -i64::MAX),
    }
}

/// A PostgreSQL `time` as Arrow `Time64(µs)`, or `None` for `24:00:00`,
/// which PostgreSQL allows and Arrow's time of day (below 24 hours) does not.
pub fn time(micros: i64) -> Option<i64> {
    (0..MICROS_PER_DAY).contains(&micros).then_some(micros)
}

const MICROS_PER_DAY: i64 = 86_400 * 1_000_000;

/// A PostgreSQL `interval` as Arrow `MonthDayNano`, or `None` if its time
/// part does not fit in nanoseconds.
pub fn interval(micros: i64, days: i32, months: i32) -> Option<IntervalMonthDayNano> {
    Some(IntervalMonthDayNano::new(months, days, micros.checked_mul(1_000)?))
}

/// The fields of PostgreSQL's 16-byte `Interval` struct:
/// `{ int64 time; int32 day; int32 month; }`.
pub fn interval_fields(bytes: &[u8]) -> Result<(i64, i32, i32), FormatError> {
    Ok((
        i64::from_le_bytes(take::<8>(bytes, 0, "interval")?),
        i32::from_le_bytes(take::<4>(bytes, 8, "interval")?),
        i32::from_le_bytes(take::<4>(bytes, 12, "interval")?),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_shift_epochs_and_keep_infinities() {
        assert_eq!(date(0), Some(10_957)); // 2000-01-01
        assert_eq!(date(-10_957), Some(0)); // 1970-01-01
        assert_eq!(date(-2_451_545 + 1), Some(-2_440_587)); // 4713-11-25 BC (julian day 1)
        assert_eq!(date(i32::MAX), Some(i32::MAX));
        assert_eq!(date(i32::MIN), Some(-i32::MAX));
        // PostgreSQL's last date, 5874897-12-31, stays finite.
        assert_eq!(date(2_145_031_948), Some(2_145_042_905));
    }

    #[test]
    fn timestamps_shift_epochs_refuse_overflow_and_keep_infinities() {
        assert_eq!(timestamp(0), Some(946_684_800_000_000));
        assert_eq!(timestamp(-946_684_800_000_000), Some(0));
        // 1900-01-01 00:00:00 is 2208988800 s before 1970.
        assert_eq!(timestamp(-3_155_673_600_000_000), Some(-2_208_988_800_000_000));
        assert_eq!(timestamp(i64::MAX), Some(i64::MAX));
        assert_eq!(timestamp(i64::MIN), Some(-i64::MAX));
        // Finite values near PostgreSQL's upper bound would reach the sentinel.
        assert_eq!(timestamp(i64::MAX - EPOCH_SHIFT_MICROS), None);
        assert_eq!(timestamp(i64::MAX - EPOCH_SHIFT_MICROS - 1), Some(i64::MAX - 1));
        assert_eq!(timestamp(9_223_371_331_199_999_999), None);
    }

    #[test]
    fn times_stay_below_a_day() {
        assert_eq!(time(0), Some(0));
        assert_eq!(time(MICROS_PER_DAY - 1), Some(MICROS_PER_DAY - 1));
        assert_eq!(time(MICROS_PER_DAY), None, "24:00:00 has no Arrow form");
    }

    #[test]
    fn intervals() {
        let mut bytes = 3_600_000_001i64.to_le_bytes().to_vec();
        bytes.extend_from_slice(&(-2i32).to_le_bytes());
        bytes.extend_from_slice(&14i32.to_le_bytes());
        let (micros, days, months) = interval_fields(&bytes).unwrap();
        assert_eq!(interval(micros, days, months), Some(IntervalMonthDayNano::new(14, -2, 3_600_000_001_000)));
        assert_eq!(interval(i64::MAX / 999, 0, 0), None);
        assert!(interval_fields(&bytes[..15]).is_err());
    }
}
