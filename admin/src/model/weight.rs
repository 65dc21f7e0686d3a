//! The one weight type: a colour's share of new requests, in basis points
//! (0 to 10,000, so 1 bp is 0.01%). The state file, the rollout state machine
//! and the proxy work in basis points; people and the API see percent. Every
//! conversion between the two lives here.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A share of new requests, 0 to 10,000 basis points.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(try_from = "u32", into = "u32")]
pub struct Weight(u32);

/// The largest weight, in basis points.
const ALL_BP: u32 = 10_000;

impl Weight {
    /// No traffic.
    pub const NONE: Weight = Weight(0);
    /// All traffic.
    pub const ALL: Weight = Weight(ALL_BP);

    /// From basis points, capped at 100%.
    pub const fn from_bp(bp: u32) -> Weight {
        Weight(if bp > ALL_BP { ALL_BP } else { bp })
    }

    /// Basis points (0 to 10,000).
    pub const fn bp(self) -> u32 {
        self.0
    }

    /// Percent (0 to 100), as the API and people see it.
    pub fn percent(self) -> f64 {
        f64::from(self.0) / 100.0
    }

    /// What the other colour gets: 100% minus this.
    pub const fn rest(self) -> Weight {
        Weight(ALL_BP - self.0)
    }
}

/// A state file holding more than 100% is damaged, not clamped.
impl TryFrom<u32> for Weight {
    type Error = String;

    fn try_from(bp: u32) -> Result<Weight, String> {
        if bp > ALL_BP {
            return Err(format!(
                "a weight of {bp} basis points is above {ALL_BP} (100%)"
            ));
        }
        Ok(Weight(bp))
    }
}

impl From<Weight> for u32 {
    fn from(w: Weight) -> u32 {
        w.0
    }
}

/// `12.5%`, `100%`.
impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.percent())
    }
}

/// Share of new requests per colour, percent; they always sum to 100.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Weights {
    /// Blue's share, percent.
    pub blue: f64,
    /// Green's share, percent.
    pub green: f64,
}

/// From green's weight: blue has the rest.
impl From<Weight> for Weights {
    fn from(green: Weight) -> Weights {
        Weights {
            blue: green.rest().percent(),
            green: green.percent(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Weight;

    #[test]
    fn percent_rest_and_display() {
        let w = Weight::from_bp(1250);
        assert_eq!(w.percent(), 12.5);
        assert_eq!(w.rest(), Weight::from_bp(8750));
        assert_eq!(w.to_string(), "12.5%");
        assert_eq!(Weight::ALL.to_string(), "100%");
        assert_eq!(Weight::from_bp(20_000), Weight::ALL);
    }

    #[test]
    fn a_weight_above_100_percent_does_not_deserialize() {
        assert_eq!(
            serde_json::from_str::<Weight>("10000").unwrap(),
            Weight::ALL
        );
        let err = serde_json::from_str::<Weight>("10001")
            .unwrap_err()
            .to_string();
        assert!(err.contains("above 10000"), "{err}");
        assert_eq!(serde_json::to_string(&Weight::from_bp(5)).unwrap(), "5");
    }
}
