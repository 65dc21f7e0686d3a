//! The two colours of a blue-green deployment.

use std::fmt;

/// Which pool a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Colour {
    Blue,
    Green,
}

impl Colour {
    pub const ALL: [Colour; 2] = [Colour::Blue, Colour::Green];

    /// The lowercase name used in the API, metrics and headers.
    pub const fn as_str(self) -> &'static str {
        match self {
            Colour::Blue => "blue",
            Colour::Green => "green",
        }
    }

    /// The other colour.
    pub const fn other(self) -> Colour {
        match self {
            Colour::Blue => Colour::Green,
            Colour::Green => Colour::Blue,
        }
    }

    /// Index into per-colour arrays.
    pub const fn index(self) -> usize {
        match self {
            Colour::Blue => 0,
            Colour::Green => 1,
        }
    }

    /// Parses "blue" or "green" (ASCII case-insensitive).
    pub fn parse(s: &[u8]) -> Option<Colour> {
        if s.eq_ignore_ascii_case(b"blue") {
            Some(Colour::Blue)
        } else if s.eq_ignore_ascii_case(b"green") {
            Some(Colour::Green)
        } else {
            None
        }
    }
}

impl fmt::Display for Colour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Colour {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Colour {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Colour, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Colour::parse(s.as_bytes())
            .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not blue or green")))
    }
}
