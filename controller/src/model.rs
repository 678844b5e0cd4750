//! The words a drill is told in, shared by runbooks, the drill store, the
//! engine and reports: the mode a drill runs in, how a step ended, where a
//! drill stands, and what it measured. Each is stored and shown as the same
//! short text (`failed (not critical)`, `rolling-back`…).
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// When a step applies; what a drill is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// A scheduled exercise: the same path as a failover, on purpose.
    Drill,
    /// The real thing.
    Failover,
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    #[serde(rename = "passed")]
    Passed,
    #[serde(rename = "failed")]
    Failed,
    /// Failed, but the step is not critical: the drill went on.
    #[serde(rename = "failed (not critical)")]
    Tolerated,
    /// Not run: a critical step before it failed.
    #[serde(rename = "skipped")]
    Skipped,
}

/// Where a drill stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DrillStatus {
    Running,
    /// A critical step failed: the `on_failure` steps run.
    RollingBack,
    Passed,
    Failed,
    Aborted,
}

/// What a drill measured.
#[derive(Debug, Clone, Default)]
pub struct Measures {
    pub rto: Option<std::time::Duration>,
    pub rpo: Option<std::time::Duration>,
    /// The cut-over instant (start of the `rto: start` step).
    pub cut: Option<chrono::DateTime<chrono::Utc>>,
    /// The newest data found on the recovered side (heartbeat, export time, last replayed commit).
    pub recovery_point: Option<chrono::DateTime<chrono::Utc>>,
}

/// A text that names none of the values of a word.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {found:?}: expected one of {expected}")]
pub struct Unknown {
    pub what: &'static str,
    pub found: String,
    pub expected: String,
}

/// The text of each value, both ways.
macro_rules! words {
    ($ty:ident, $what:literal, $($variant:ident => $text:literal),+ $(,)?) => {
        impl $ty {
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = Unknown;
            fn from_str(s: &str) -> Result<Self, Unknown> {
                match s {
                    $($text => Ok($ty::$variant),)+
                    _ => Err(Unknown { what: $what, found: s.into(), expected: [$($text),+].join(", ") }),
                }
            }
        }
    };
}

words!(Mode, "mode", Drill => "drill", Failover => "failover");
words!(Outcome, "outcome", Passed => "passed", Failed => "failed", Tolerated => "failed (not critical)", Skipped => "skipped");
words!(
    DrillStatus, "status",
    Running => "running", RollingBack => "rolling-back", Passed => "passed", Failed => "failed", Aborted => "aborted"
);

impl DrillStatus {
    /// Whether the drill is over.
    pub fn finished(self) -> bool {
        matches!(self, DrillStatus::Passed | DrillStatus::Failed | DrillStatus::Aborted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_reads_back_as_itself_in_text_and_json() {
        for m in Mode::ALL {
            assert_eq!(m.as_str().parse::<Mode>().unwrap(), *m);
            assert_eq!(serde_json::to_string(m).unwrap(), format!("\"{m}\""));
        }
        for o in Outcome::ALL {
            assert_eq!(o.as_str().parse::<Outcome>().unwrap(), *o);
            assert_eq!(serde_json::to_string(o).unwrap(), format!("\"{o}\""));
        }
        for s in DrillStatus::ALL {
            assert_eq!(s.as_str().parse::<DrillStatus>().unwrap(), *s);
            assert_eq!(serde_json::to_string(s).unwrap(), format!("\"{s}\""));
        }
        assert!("maybe".parse::<Mode>().unwrap_err().to_string().contains("drill, failover"));
    }
}
