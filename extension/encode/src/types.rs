//! The type mapping of DESIGN §1: which Arrow type holds a PostgreSQL column.
//!
//! The extension reads a column's type from the catalogs into a [`PgType`]
//! (domains already resolved to their base type) and asks [`Kind::of`] how
//! to carry it. The answer also says how the extension must read the datum:
//! straight from its bytes, or through the type's output function.

use arrow_schema::{DataType, Field, TimeUnit};
use std::collections::HashMap;
use std::sync::Arc;

/// OIDs of the built-in types the mapping knows (from `pg_type.dat`; they
/// are fixed across PostgreSQL versions).
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const JSON: u32 = 114;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const JSONB: u32 = 3802;
}

/// Arrow extension type names (canonical extension types of the Arrow spec).
pub const EXTENSION_NAME_KEY: &str = "ARROW:extension:name";
/// Arrow extension type metadata key (empty for the canonical types we use).
pub const EXTENSION_METADATA_KEY: &str = "ARROW:extension:metadata";

/// What the catalogs say about a column's type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgType {
    /// Type OID, with domains resolved to their base type.
    pub oid: u32,
    /// Type modifier (`atttypmod`, or the domain's), -1 when none.
    pub typmod: i32,
    /// `pg_type.typname` of that type.
    pub name: String,
    /// `pg_type.typtype`: `b` base, `c` composite, `e` enum, `r` range, …
    pub typtype: u8,
    /// For an array type: its element type (domains resolved, sharing the
    /// column's typmod).
    pub element: Option<Box<PgType>>,
}

/// How one value (a column's, or an array element's) is carried in Arrow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scalar {
    Bool,
    Int16,
    Int32,
    Int64,
    /// `oid` → UInt32.
    Oid,
    Float32,
    Float64,
    /// `numeric(p,s)` with `max(p,s) ≤ 38`.
    Decimal128 {
        precision: u8,
        scale: i8,
    },
    /// `numeric(p,s)` with `max(p,s) ≤ 76`.
    Decimal256 {
        precision: u8,
        scale: i8,
    },
    /// `numeric` without typmod (or wider than 76 digits): exact text.
    NumericText,
    /// text, varchar, bpchar, citext: the varlena's bytes.
    Text,
    /// `name`: a fixed 64-byte, NUL-padded string.
    Name,
    Bytea,
    Date,
    Time,
    Timestamp,
    TimestampTz,
    Interval,
    Uuid,
    /// `json`: the varlena's bytes, `arrow.json`.
    Json,
    /// `jsonb`: text from `jsonb_out`, `arrow.json`.
    Jsonb,
    /// An enum label, from the type's output function.
    Enum,
    /// Anything else: text from the type's output function; `pg.type` says
    /// what it was.
    Other,
}

/// How a column is carried in Arrow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// One value per row.
    Scalar(Scalar),
    /// A one-dimensional array of a mapped element type: `List<element>`.
    /// Other arrays (of unmapped element types) are `Scalar(Other)`.
    List(Scalar),
}

impl Kind {
    /// The mapping of DESIGN §1.
    pub fn of(t: &PgType) -> Kind {
        match &t.element {
            Some(element) => match Scalar::of(element) {
                Scalar::Other => Kind::Scalar(Scalar::Other),
                scalar => Kind::List(scalar),
            },
            None => Kind::Scalar(Scalar::of(t)),
        }
    }

    /// The Arrow type of the column (extension type metadata is on the
    /// field, see [`Kind::field`]).
    pub fn data_type(&self) -> DataType {
        match self {
            Kind::Scalar(s) => s.data_type(),
            Kind::List(s) => DataType::List(Arc::new(s.field("item"))),
        }
    }

    /// A nullable field of this kind, with the extension type metadata.
    pub fn field(&self, name: &str) -> Field {
        match self {
            Kind::Scalar(s) => s.field(name),
            Kind::List(_) => Field::new(name, self.data_type(), true),
        }
    }

    /// Bytes a value of this kind takes in a batch besides its variable
    /// part (offsets for strings and lists).
    pub fn width(&self) -> usize {
        match self {
            Kind::Scalar(s) => s.width(),
            Kind::List(_) => 4,
        }
    }

    /// Whether a value (or an element) adds its own bytes to the batch:
    /// strings and binary values.
    pub fn has_variable_width(&self) -> bool {
        matches!(self.scalar().data_type(), DataType::Utf8 | DataType::Binary)
    }

    /// A short name of the Arrow type, e.g. `Decimal128(12, 2)`,
    /// `List<Int32>`, `Utf8 (arrow.json)`.
    pub fn arrow_name(&self) -> String {
        match self {
            Kind::Scalar(s) => s.arrow_name(),
            Kind::List(s) => format!("List<{}>", s.arrow_name()),
        }
    }

    /// The scalar of the column or of its elements.
    pub fn scalar(&self) -> Scalar {
        match self {
            Kind::Scalar(s) | Kind::List(s) => *s,
        }
    }
}

impl Scalar {
    /// Maps a non-array type.
    pub fn of(t: &PgType) -> Scalar {
        match t.oid {
            oid::BOOL => Scalar::Bool,
            oid::INT2 => Scalar::Int16,
            oid::INT4 => Scalar::Int32,
            oid::INT8 => Scalar::Int64,
            oid::OID => Scalar::Oid,
            oid::FLOAT4 => Scalar::Float32,
            oid::FLOAT8 => Scalar::Float64,
            oid::NUMERIC => numeric(t.typmod),
            oid::TEXT | oid::VARCHAR | oid::BPCHAR => Scalar::Text,
            oid::NAME => Scalar::Name,
            oid::BYTEA => Scalar::Bytea,
            oid::DATE => Scalar::Date,
            oid::TIME => Scalar::Time,
            oid::TIMESTAMP => Scalar::Timestamp,
            oid::TIMESTAMPTZ => Scalar::TimestampTz,
            oid::INTERVAL => Scalar::Interval,
            oid::UUID => Scalar::Uuid,
            oid::JSON => Scalar::Json,
            oid::JSONB => Scalar::Jsonb,
            // citext has no fixed OID (it is an extension type); it stores
            // plain text bytes.
            _ if t.name == "citext" && t.typtype == b'b' => Scalar::Text,
            _ if t.typtype == b'e' => Scalar::Enum,
            _ => Scalar::Other,
        }
    }

    /// Whether the extension must call the type's output function to get
    /// this value's text (instead of reading the datum's bytes).
    pub fn needs_output_function(&self) -> bool {
        matches!(self, Scalar::Jsonb | Scalar::Enum | Scalar::Other)
    }

    /// The Arrow type.
    pub fn data_type(&self) -> DataType {
        match self {
            Scalar::Bool => DataType::Boolean,
            Scalar::Int16 => DataType::Int16,
            Scalar::Int32 => DataType::Int32,
            Scalar::Int64 => DataType::Int64,
            Scalar::Oid => DataType::UInt32,
            Scalar::Float32 => DataType::Float32,
            Scalar::Float64 => DataType::Float64,
            Scalar::Decimal128 { precision, scale } => DataType::Decimal128(*precision, *scale),
            Scalar::Decimal256 { precision, scale } => DataType::Decimal256(*precision, *scale),
            Scalar::NumericText
            | Scalar::Text
            | Scalar::Name
            | Scalar::Json
            | Scalar::Jsonb
            | Scalar::Enum
            | Scalar::Other => DataType::Utf8,
            Scalar::Bytea => DataType::Binary,
            Scalar::Date => DataType::Date32,
            Scalar::Time => DataType::Time64(TimeUnit::Microsecond),
            Scalar::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            Scalar::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Scalar::Interval => DataType::Interval(arrow_schema::IntervalUnit::MonthDayNano),
            Scalar::Uuid => DataType::FixedSizeBinary(16),
        }
    }

    /// A short name of the Arrow type, with the extension type if any.
    pub fn arrow_name(&self) -> String {
        let base = match self.data_type() {
            DataType::Timestamp(TimeUnit::Microsecond, None) => "Timestamp(µs)".to_owned(),
            DataType::Timestamp(TimeUnit::Microsecond, Some(tz)) => format!("Timestamp(µs, {tz})"),
            DataType::Time64(TimeUnit::Microsecond) => "Time64(µs)".to_owned(),
            DataType::Interval(_) => "Interval(MonthDayNano)".to_owned(),
            other => other.to_string(),
        };
        match self.extension_name() {
            Some(ext) => format!("{base} ({ext})"),
            None => base,
        }
    }

    /// Bytes one value takes in its Arrow buffers, besides the bytes of a
    /// string or binary value.
    pub fn width(&self) -> usize {
        match self {
            Scalar::Bool => 1,
            Scalar::Int16 => 2,
            Scalar::Int32 | Scalar::Oid | Scalar::Float32 | Scalar::Date => 4,
            Scalar::Int64 | Scalar::Float64 | Scalar::Time | Scalar::Timestamp | Scalar::TimestampTz => 8,
            Scalar::Decimal128 { .. } | Scalar::Interval | Scalar::Uuid => 16,
            Scalar::Decimal256 { .. } => 32,
            Scalar::NumericText
            | Scalar::Text
            | Scalar::Name
            | Scalar::Bytea
            | Scalar::Json
            | Scalar::Jsonb
            | Scalar::Enum
            | Scalar::Other => 4,
        }
    }

    /// The canonical Arrow extension type, where one applies.
    pub fn extension_name(&self) -> Option<&'static str> {
        match self {
            Scalar::Uuid => Some("arrow.uuid"),
            Scalar::Json | Scalar::Jsonb => Some("arrow.json"),
            _ => None,
        }
    }

    /// A nullable field of this type, carrying the extension type metadata.
    pub fn field(&self, name: &str) -> Field {
        let field = Field::new(name, self.data_type(), true);
        match self.extension_name() {
            Some(ext) => field.with_metadata(HashMap::from([
                (EXTENSION_NAME_KEY.to_owned(), ext.to_owned()),
                (EXTENSION_METADATA_KEY.to_owned(), String::new()),
            ])),
            None => field,
        }
    }
}

/// `numeric(p,s)` from its typmod (PostgreSQL 15 packs the scale as an
/// 11-bit signed number, so `numeric(2,-3)` and `numeric(3,5)` exist).
fn numeric(typmod: i32) -> Scalar {
    const VARHDRSZ: i32 = 4;
    if typmod < VARHDRSZ {
        return Scalar::NumericText;
    }
    let packed = typmod - VARHDRSZ;
    let precision = (packed >> 16) & 0xffff;
    let scale = ((packed & 0x7ff) ^ 1024) - 1024;
    // Arrow wants precision ≥ scale; numeric(3,5) holds values below 0.01
    // whose unscaled form has at most 3 digits, so precision 5 is exact.
    let arrow_precision = precision.max(scale);
    match (u8::try_from(arrow_precision), i8::try_from(scale)) {
        (Ok(precision @ 1..=38), Ok(scale)) => Scalar::Decimal128 { precision, scale },
        (Ok(precision @ 39..=76), Ok(scale)) => Scalar::Decimal256 { precision, scale },
        _ => Scalar::NumericText,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(oid: u32, typmod: i32) -> PgType {
        PgType { oid, typmod, name: String::new(), typtype: b'b', element: None }
    }

    /// typmod as PostgreSQL's `numeric(p,s)` input function builds it.
    fn numeric_typmod(p: i32, s: i32) -> i32 {
        ((p << 16) | (s & 0x7ff)) + 4
    }

    #[test]
    fn numeric_typmods_map_to_decimals_or_text() {
        assert_eq!(Kind::of(&t(oid::NUMERIC, -1)), Kind::Scalar(Scalar::NumericText));
        assert_eq!(
            Kind::of(&t(oid::NUMERIC, numeric_typmod(12, 2))),
            Kind::Scalar(Scalar::Decimal128 { precision: 12, scale: 2 })
        );
        assert_eq!(
            Kind::of(&t(oid::NUMERIC, numeric_typmod(38, 0))),
            Kind::Scalar(Scalar::Decimal128 { precision: 38, scale: 0 })
        );
        assert_eq!(
            Kind::of(&t(oid::NUMERIC, numeric_typmod(40, 10))),
            Kind::Scalar(Scalar::Decimal256 { precision: 40, scale: 10 })
        );
        assert_eq!(
            Kind::of(&t(oid::NUMERIC, numeric_typmod(76, 76))),
            Kind::Scalar(Scalar::Decimal256 { precision: 76, scale: 76 })
        );
        assert_eq!(Kind::of(&t(oid::NUMERIC, numeric_typmod(77, 0))), Kind::Scalar(Scalar::NumericText));
        assert_eq!(Kind::of(&t(oid::NUMERIC, numeric_typmod(1000, 0))), Kind::Scalar(Scalar::NumericText));
        assert_eq!(
            Kind::of(&t(oid::NUMERIC, numeric_typmod(2, -3))),
            Kind::Scalar(Scalar::Decimal128 { precision: 2, scale: -3 })
        );
        assert_eq!(
            Kind::of(&t(oid::NUMERIC, numeric_typmod(3, 5))),
            Kind::Scalar(Scalar::Decimal128 { precision: 5, scale: 5 })
        );
    }

    #[test]
    fn arrays_of_mapped_types_are_lists_and_others_text() {
        let int_array = PgType { element: Some(Box::new(t(oid::INT4, -1))), ..t(1007, -1) };
        assert_eq!(Kind::of(&int_array), Kind::List(Scalar::Int32));
        assert_eq!(
            Kind::of(&int_array).data_type(),
            DataType::List(Arc::new(Field::new("item", DataType::Int32, true)))
        );
        let inet_array = PgType { element: Some(Box::new(t(869, -1))), ..t(1041, -1) };
        assert_eq!(Kind::of(&inet_array), Kind::Scalar(Scalar::Other));
        let enum_array = PgType { element: Some(Box::new(PgType { typtype: b'e', ..t(50000, -1) })), ..t(50001, -1) };
        assert_eq!(Kind::of(&enum_array), Kind::List(Scalar::Enum));
    }

    #[test]
    fn names_and_categories() {
        let citext = PgType { name: "citext".into(), ..t(60000, -1) };
        assert_eq!(Scalar::of(&citext), Scalar::Text);
        let composite = PgType { typtype: b'c', ..t(60001, -1) };
        assert_eq!(Scalar::of(&composite), Scalar::Other);
        assert_eq!(Scalar::of(&t(oid::OID, -1)).data_type(), DataType::UInt32);
        assert_eq!(
            Scalar::of(&t(oid::TIMESTAMPTZ, -1)).data_type(),
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
    }

    #[test]
    fn arrow_names_are_short() {
        assert_eq!(Kind::Scalar(Scalar::Decimal128 { precision: 12, scale: 2 }).arrow_name(), "Decimal128(12, 2)");
        assert_eq!(Kind::List(Scalar::Int32).arrow_name(), "List<Int32>");
        assert_eq!(Kind::Scalar(Scalar::Jsonb).arrow_name(), "Utf8 (arrow.json)");
        assert_eq!(Kind::Scalar(Scalar::Uuid).arrow_name(), "FixedSizeBinary(16) (arrow.uuid)");
        assert_eq!(Kind::Scalar(Scalar::TimestampTz).arrow_name(), "Timestamp(µs, UTC)");
        assert_eq!(Kind::Scalar(Scalar::Date).arrow_name(), "Date32");
    }

    #[test]
    fn extension_types_are_on_fields_and_list_items() {
        let f = Scalar::Uuid.field("id");
        assert_eq!(f.metadata().get(EXTENSION_NAME_KEY).map(String::as_str), Some("arrow.uuid"));
        let DataType::List(item) = Kind::List(Scalar::Jsonb).data_type() else { panic!() };
        assert_eq!(item.metadata().get(EXTENSION_NAME_KEY).map(String::as_str), Some("arrow.json"));
        assert!(Scalar::Int32.field("x").metadata().is_empty());
    }
}
