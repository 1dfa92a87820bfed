//! PostgreSQL `numeric` (`utils/adt/numeric.c`): base-10000 digits with a
//! weight and a display scale, in a short or a long header form.
//!
//! Converted exactly to Arrow decimals (when the column has a typmod) or to
//! the same text `numeric_out` prints (when it has none). Nothing is ever
//! rounded: a value that does not fit is reported as such.

use super::{take, FormatError};
use arrow_buffer::i256;
use std::fmt::Write;

const NBASE: i64 = 10_000;
const DEC_DIGITS: i32 = 4;

/// A parsed numeric value, borrowing its digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Numeric<'a> {
    NaN,
    PosInfinity,
    NegInfinity,
    Finite {
        negative: bool,
        /// Power of NBASE of the first digit.
        weight: i16,
        /// Digits after the decimal point that `numeric_out` prints.
        dscale: u16,
        /// Base-10000 digits as little-endian `i16` pairs.
        digits: &'a [u8],
    },
}

/// Parses the payload of a numeric varlena (the bytes after its header).
pub fn parse(payload: &[u8]) -> Result<Numeric<'_>, FormatError> {
    let header = u16::from_le_bytes(take::<2>(payload, 0, "numeric")?);
    let (negative, weight, dscale, digits) = match header & 0xC000 {
        0xC000 => {
            return match header & 0xF000 {
                0xC000 => Ok(Numeric::NaN),
                0xD000 => Ok(Numeric::PosInfinity),
                0xF000 => Ok(Numeric::NegInfinity),
                _ => Err(FormatError::new("numeric", format!("unknown special value {header:#06x}"))),
            };
        }
        0x8000 => {
            let magnitude = (header & 0x003F) as i16;
            let weight = if header & 0x0040 != 0 { magnitude | !0x003F } else { magnitude };
            (header & 0x2000 != 0, weight, (header & 0x1F80) >> 7, &payload[2..])
        }
        sign => {
            let weight = i16::from_le_bytes(take::<2>(payload, 2, "numeric")?);
            (sign == 0x4000, weight, header & 0x3FFF, &payload[4..])
        }
    };
    if digits.len() % 2 != 0 {
        return Err(FormatError::new("numeric", "odd number of digit bytes"));
    }
    if let Some(bad) = digit_iter(digits).find(|d| !(0..NBASE as i16).contains(d)) {
        return Err(FormatError::new("numeric", format!("digit {bad} outside 0..9999")));
    }
    Ok(Numeric::Finite { negative, weight, dscale, digits })
}

fn digit_iter(digits: &[u8]) -> impl Iterator<Item = i16> + '_ {
    digits.chunks_exact(2).map(|d| i16::from_le_bytes([d[0], d[1]]))
}

/// Checks the precision bound and applies the sign.
fn finish_decimal<W: Wide>(unscaled: W, negative: bool, precision: u8) -> Option<W> {
    if unscaled >= W::pow10(precision.into())? {
        return None;
    }
    Some(if negative { unscaled.neg() } else { unscaled })
}

/// Integer arithmetic the decimal conversion needs, for i128 and i256.
trait Wide: Copy + Ord {
    const ZERO: Self;
    fn from_i64(v: i64) -> Self;
    fn checked_mul(self, other: Self) -> Option<Self>;
    fn checked_add(self, other: Self) -> Option<Self>;
    fn checked_div_exact(self, other: Self) -> Option<Self>;
    fn neg(self) -> Self;

    fn pow10(exp: u32) -> Option<Self> {
        (0..exp).try_fold(Self::from_i64(1), |acc, _| acc.checked_mul(Self::from_i64(10)))
    }
}

impl Wide for i128 {
    const ZERO: Self = 0;
    fn from_i64(v: i64) -> Self {
        v.into()
    }
    fn checked_mul(self, other: Self) -> Option<Self> {
        i128::checked_mul(self, other)
    }
    fn checked_add(self, other: Self) -> Option<Self> {
        i128::checked_add(self, other)
    }
    fn checked_div_exact(self, other: Self) -> Option<Self> {
        (self.checked_rem(other)? == 0).then(|| self / other)
    }
    fn neg(self) -> Self {
        -self
    }
}

impl Wide for i256 {
    const ZERO: Self = i256::ZERO;
    fn from_i64(v: i64) -> Self {
        i256::from_i128(v.into())
    }
    fn checked_mul(self, other: Self) -> Option<Self> {
        i256::checked_mul(self, other)
    }
    fn checked_add(self, other: Self) -> Option<Self> {
        i256::checked_add(self, other)
    }
    fn checked_div_exact(self, other: Self) -> Option<Self> {
        let (q, r) = self.checked_div_rem(other)?;
        (r == i256::ZERO).then_some(q)
    }
    fn neg(self) -> Self {
        -self
    }
}

impl Numeric<'_> {
    /// The unscaled value of a `Decimal128(precision, scale)`, or `None`
    /// when the value is not finite or does not fit exactly.
    pub fn to_decimal128(self, precision: u8, scale: i8) -> Option<i128> {
        self.to_decimal(precision, scale)
    }

    /// The unscaled value of a `Decimal256(precision, scale)`, or `None`
    /// when the value is not finite or does not fit exactly.
    pub fn to_decimal256(self, precision: u8, scale: i8) -> Option<i256> {
        self.to_decimal(precision, scale)
    }

    fn to_decimal<W: Wide>(self, precision: u8, scale: i8) -> Option<W> {
        let Numeric::Finite { negative, weight, digits, .. } = self else { return None };
        let count = digits.len() / 2;
        // Digit i is worth NBASE^(weight - i); times 10^scale, the last
        // digit's power of ten is:
        let last_exponent = DEC_DIGITS * (i32::from(weight) + 1 - count as i32) + i32::from(scale);
        let mut acc = W::ZERO;
        for (i, digit) in digit_iter(digits).enumerate() {
            let digit = i64::from(digit);
            acc = if i + 1 < count || last_exponent >= 0 {
                acc.checked_mul(W::from_i64(NBASE))?.checked_add(W::from_i64(digit))?
            } else if last_exponent > -DEC_DIGITS {
                // The last digit reaches past the scale: its dropped decimal
                // digits must be zeros (numeric(p,s) rounds on input), and
                // dividing it, a number below 10000, is cheap.
                let cut = 10i64.pow(last_exponent.unsigned_abs());
                if digit % cut != 0 {
                    return None;
                }
                acc.checked_mul(W::from_i64(NBASE / cut))?.checked_add(W::from_i64(digit / cut))?
            } else {
                // A whole digit beyond the scale: only exact if it and the
                // digits before it reach no further than the scale.
                return self.to_decimal_by_division(precision, scale);
            };
        }
        let unscaled = if last_exponent > 0 { acc.checked_mul(W::pow10(last_exponent.unsigned_abs())?)? } else { acc };
        finish_decimal(unscaled, negative, precision)
    }

    /// The general case: accumulate every digit, then divide exactly.
    fn to_decimal_by_division<W: Wide>(self, precision: u8, scale: i8) -> Option<W> {
        let Numeric::Finite { negative, weight, digits, .. } = self else { return None };
        let count = digits.len() / 2;
        let mut acc = W::ZERO;
        for digit in digit_iter(digits) {
            acc = acc.checked_mul(W::from_i64(NBASE))?.checked_add(W::from_i64(digit.into()))?;
        }
        let exponent = DEC_DIGITS * (i32::from(weight) + 1 - count as i32) + i32::from(scale);
        let unscaled = if exponent >= 0 {
            acc.checked_mul(W::pow10(exponent.unsigned_abs())?)?
        } else {
            acc.checked_div_exact(W::pow10(exponent.unsigned_abs())?)?
        };
        finish_decimal(unscaled, negative, precision)
    }

    /// Appends the text `numeric_out` prints for this value.
    pub fn write_text(&self, out: &mut String) {
        let (negative, weight, dscale, digits) = match *self {
            Numeric::NaN => return out.push_str("NaN"),
            Numeric::PosInfinity => return out.push_str("Infinity"),
            Numeric::NegInfinity => return out.push_str("-Infinity"),
            Numeric::Finite { negative, weight, dscale, digits } => {
                (negative, i32::from(weight), i32::from(dscale), digits)
            }
        };
        let digit = |d: i32| -> i16 {
            usize::try_from(d)
                .ok()
                .and_then(|d| digits.get(2 * d..2 * d + 2))
                .map_or(0, |b| i16::from_le_bytes([b[0], b[1]]))
        };
        if negative {
            out.push('-');
        }
        if weight < 0 {
            out.push('0');
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "{}", digit(0));
            for d in 1..=weight {
                let _ = write!(out, "{:04}", digit(d));
            }
        }
        if dscale > 0 {
            out.push('.');
            let mut written = 0;
            let mut d = weight + 1;
            while written < dscale {
                let group = format!("{:04}", digit(d));
                let wanted = (dscale - written).min(DEC_DIGITS) as usize;
                out.push_str(&group[..wanted]);
                written += DEC_DIGITS;
                d += 1;
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a long-form numeric payload from its parts, as PostgreSQL
    /// stores values that do not fit the short form.
    pub(crate) fn long_form(negative: bool, weight: i16, dscale: u16, digits: &[i16]) -> Vec<u8> {
        let mut out = (if negative { 0x4000 } else { 0 } | dscale).to_le_bytes().to_vec();
        out.extend_from_slice(&weight.to_le_bytes());
        digits.iter().for_each(|d| out.extend_from_slice(&d.to_le_bytes()));
        out
    }

    /// Builds a short-form payload (|weight| < 64, dscale < 64).
    fn short_form(negative: bool, weight: i16, dscale: u16, digits: &[i16]) -> Vec<u8> {
        let mut header: u16 = 0x8000 | (dscale << 7) | (weight as u16 & 0x3F);
        if weight < 0 {
            header |= 0x0040;
        }
        if negative {
            header |= 0x2000;
        }
        let mut out = header.to_le_bytes().to_vec();
        digits.iter().for_each(|d| out.extend_from_slice(&d.to_le_bytes()));
        out
    }

    fn text(payload: &[u8]) -> String {
        let mut s = String::new();
        parse(payload).unwrap().write_text(&mut s);
        s
    }

    #[test]
    fn text_matches_numeric_out() {
        // 12345.678 : digits [1, 2345, 6780], weight 1, dscale 3
        assert_eq!(text(&short_form(false, 1, 3, &[1, 2345, 6780])), "12345.678");
        assert_eq!(text(&long_form(true, 1, 3, &[1, 2345, 6780])), "-12345.678");
        // 0.0001 : digits [1], weight -1, dscale 4
        assert_eq!(text(&short_form(false, -1, 4, &[1])), "0.0001");
        // 0.00000001 : weight -2
        assert_eq!(text(&short_form(false, -2, 8, &[1])), "0.00000001");
        // 0 with dscale 2 : no digits
        assert_eq!(text(&short_form(false, 0, 2, &[])), "0.00");
        // 1000000 : digits [100], weight 1 (trailing zero groups stripped)
        assert_eq!(text(&short_form(false, 1, 0, &[100])), "1000000");
        // 1.50 with dscale 2
        assert_eq!(text(&short_form(false, 0, 2, &[1, 5000])), "1.50");
        assert_eq!(text(&0xC000u16.to_le_bytes()), "NaN");
        assert_eq!(text(&0xD000u16.to_le_bytes()), "Infinity");
        assert_eq!(text(&0xF000u16.to_le_bytes()), "-Infinity");
    }

    #[test]
    fn forty_digit_values_survive_as_text_and_decimal256() {
        // 1234567890123456789012345678901234567890 (40 digits): groups of four from the right.
        let digits = [1234, 5678, 9012, 3456, 7890, 1234, 5678, 9012, 3456, 7890];
        let payload = long_form(false, 9, 0, &digits);
        assert_eq!(text(&payload), "1234567890123456789012345678901234567890");
        let n = parse(&payload).unwrap();
        assert_eq!(n.to_decimal128(38, 0), None);
        assert_eq!(
            n.to_decimal256(40, 0),
            Some(i256::from_string("1234567890123456789012345678901234567890").unwrap())
        );
        assert_eq!(
            n.to_decimal256(45, 5),
            Some(i256::from_string("123456789012345678901234567890123456789000000").unwrap())
        );
    }

    #[test]
    fn decimals_are_exact_or_refused() {
        let bytes = short_form(true, 1, 3, &[1, 2345, 6780]);
        let n = parse(&bytes).unwrap();
        assert_eq!(n.to_decimal128(12, 3), Some(-12_345_678));
        assert_eq!(n.to_decimal128(12, 5), Some(-1_234_567_800));
        assert_eq!(n.to_decimal128(12, 2), None, "12345.678 is not exact at scale 2");
        assert_eq!(n.to_decimal128(7, 3), None, "8 digits do not fit precision 7");
        // 99000 in numeric(2,-3) is 99 × 10^3
        let bytes = short_form(false, 1, 0, &[9, 9000]);
        let n = parse(&bytes).unwrap();
        assert_eq!(n.to_decimal128(2, -3), Some(99));
        assert_eq!(parse(&short_form(false, 0, 0, &[])).unwrap().to_decimal128(10, 2), Some(0));
        assert_eq!(parse(&0xC000u16.to_le_bytes()).unwrap().to_decimal128(10, 2), None);
        // A whole zero digit group past the scale (PostgreSQL strips those,
        // but the bytes allow it) takes the division path.
        let bytes = long_form(false, 0, 0, &[7, 0, 0]);
        assert_eq!(parse(&bytes).unwrap().to_decimal128(5, 2), Some(700));
        let bytes = long_form(false, 0, 0, &[7, 0, 1]);
        assert_eq!(parse(&bytes).unwrap().to_decimal128(5, 2), None);
        // The largest numeric(38,0): 38 nines.
        let mut digits = vec![99];
        digits.extend([9999; 9]);
        let bytes = long_form(false, 9, 0, &digits);
        let max = parse(&bytes).unwrap();
        assert_eq!(max.to_decimal128(38, 0), Some(10i128.pow(38) - 1));
    }

    #[test]
    fn malformed_payloads_are_errors() {
        assert!(parse(&[]).is_err());
        assert!(parse(&[0x00]).is_err());
        assert!(parse(&0xE000u16.to_le_bytes()).is_err());
        assert!(parse(&short_form(false, 0, 0, &[10_000])).is_err());
        assert!(parse(&[0x00, 0x80, 0x01]).is_err(), "odd digit bytes");
    }
}
