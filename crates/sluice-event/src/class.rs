//! The classes of problem a line can have, and a small bitset of them.
//!
//! This module only names and collects classes; deciding which classes a line has is `check.rs`.

use std::fmt;

/// One class of problem found on a line (SPEC §1). The snake_case [`name`](BadClass::name) is what
/// appears in `sluice_bad` and is stable: consumers and metrics match on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum BadClass {
    /// The line has no bytes at all.
    Empty,
    /// The line is longer than [`Limits::line_bytes_max`](crate::Limits).
    TooLong,
    /// The line is not UTF-8.
    InvalidUtf8,
    /// The line is not one JSON value (or has bytes after it, or contains a raw `'\n'`).
    NotJson,
    /// The line is JSON but not an object.
    NotObject,
    /// The object has no `time_ns` key.
    MissingTimeNs,
    /// `time_ns` is not an integer from 0 to 2^63-1.
    InvalidTimeNs,
    /// The object has `time_ns` and no other key.
    OnlyTimeNs,
    /// A value is a number with a fraction or an exponent.
    Float,
    /// A value is a negative number (including `-0`).
    Negative,
    /// A value is an integer above `u64::MAX`.
    IntegerOverflow,
    /// A value is `true` or `false`.
    Bool,
    /// A value is `null`.
    Null,
    /// A value is an object or an array.
    Nested,
    /// A key appears more than once (compared after unescaping).
    DuplicateKey,
    /// A key starts with `sluice_` (after unescaping).
    ReservedKey,
}

impl BadClass {
    /// Every class, in the order used when joining names into `sluice_bad`.
    pub const ALL: [BadClass; 16] = [
        BadClass::Empty,
        BadClass::TooLong,
        BadClass::InvalidUtf8,
        BadClass::NotJson,
        BadClass::NotObject,
        BadClass::MissingTimeNs,
        BadClass::InvalidTimeNs,
        BadClass::OnlyTimeNs,
        BadClass::Float,
        BadClass::Negative,
        BadClass::IntegerOverflow,
        BadClass::Bool,
        BadClass::Null,
        BadClass::Nested,
        BadClass::DuplicateKey,
        BadClass::ReservedKey,
    ];

    /// The stable snake_case name written into `sluice_bad`.
    pub fn name(self) -> &'static str {
        match self {
            BadClass::Empty => "empty",
            BadClass::TooLong => "too_long",
            BadClass::InvalidUtf8 => "invalid_utf8",
            BadClass::NotJson => "not_json",
            BadClass::NotObject => "not_object",
            BadClass::MissingTimeNs => "missing_time_ns",
            BadClass::InvalidTimeNs => "invalid_time_ns",
            BadClass::OnlyTimeNs => "only_time_ns",
            BadClass::Float => "float",
            BadClass::Negative => "negative",
            BadClass::IntegerOverflow => "integer_overflow",
            BadClass::Bool => "bool",
            BadClass::Null => "null",
            BadClass::Nested => "nested",
            BadClass::DuplicateKey => "duplicate_key",
            BadClass::ReservedKey => "reserved_key",
        }
    }

    /// Position in [`BadClass::ALL`] (0..16), for per-class counters.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The class with this [`name`](BadClass::name), if any.
    pub fn from_name(name: &str) -> Option<BadClass> {
        BadClass::ALL.into_iter().find(|c| c.name() == name)
    }

    pub(crate) fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

impl fmt::Display for BadClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The set of classes found on one line; empty means the line is valid.
#[derive(Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct BadClasses(u32);

impl BadClasses {
    /// The empty set (a valid line).
    pub const NONE: BadClasses = BadClasses(0);

    /// True when no class was found: the line is valid.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// True when `c` is in the set.
    pub fn contains(self, c: BadClass) -> bool {
        self.0 & c.bit() != 0
    }

    /// The classes in the set, in [`BadClass::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = BadClass> {
        BadClass::ALL.into_iter().filter(move |c| self.contains(*c))
    }

    /// Number of classes in the set.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// Adds `c` to the set.
    pub fn insert(&mut self, c: BadClass) {
        self.0 |= c.bit();
    }

    /// Adds the classes whose [`BadClass::bit`]s are set in `bits`.
    pub(crate) fn insert_bits(&mut self, bits: u32) {
        self.0 |= bits;
    }

    /// The set with `c` added.
    #[must_use]
    pub fn with(mut self, c: BadClass) -> BadClasses {
        self.insert(c);
        self
    }

    /// The set holding only `c`.
    pub fn only(c: BadClass) -> BadClasses {
        BadClasses(c.bit())
    }
}

impl From<BadClass> for BadClasses {
    fn from(c: BadClass) -> Self {
        BadClasses::only(c)
    }
}

impl FromIterator<BadClass> for BadClasses {
    fn from_iter<I: IntoIterator<Item = BadClass>>(iter: I) -> Self {
        let mut set = BadClasses::NONE;
        for c in iter {
            set.insert(c);
        }
        set
    }
}

/// The names joined by `,` in [`BadClass::ALL`] order: exactly the value of `sluice_bad`.
impl fmt::Display for BadClasses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, c) in self.iter().enumerate() {
            if n > 0 {
                f.write_str(",")?;
            }
            f.write_str(c.name())?;
        }
        Ok(())
    }
}

impl fmt::Debug for BadClasses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BadClasses({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_declaration_order_and_names_round_trip() {
        for (i, c) in BadClass::ALL.into_iter().enumerate() {
            assert_eq!(c.index(), i);
            assert_eq!(BadClass::from_name(c.name()), Some(c));
        }
        assert_eq!(BadClass::from_name("nope"), None);
    }

    #[test]
    fn set_operations() {
        let set: BadClasses = [BadClass::Nested, BadClass::Float].into_iter().collect();
        assert!(!set.is_empty());
        assert!(set.contains(BadClass::Float));
        assert!(!set.contains(BadClass::Bool));
        assert_eq!(set.len(), 2);
        assert_eq!(set.to_string(), "float,nested");
        assert_eq!(format!("{set:?}"), "BadClasses(float,nested)");
        assert!(BadClasses::default().is_empty());
    }
}
