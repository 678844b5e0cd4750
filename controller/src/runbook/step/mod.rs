//! A runbook step: what every step has (id, timeout, retries, markers…) and
//! its one kind, a file each: its schema, its validation, how the plan
//! shows it, and one attempt of it (`run`).
//!
//! The YAML names the kind by its one kind key (`shell: {…}`); the step is
//! read by hand from the map so that a step with no kind, or two, is an
//! error that points at the key, and every kind is read by its own schema.
//! [`step_kinds!`] lists the kinds once: the enum, the names and every
//! dispatch come from that list, so the compiler checks each kind is handled.
mod approval;
pub mod context;
mod http;
pub mod needs;
mod promote;
mod readiness;
mod restore;
mod shell;
mod sleep;
mod sql;
mod verify;
mod wait_replicated;

use std::fmt;
use std::time::Duration;

use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, Visitor};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

pub use approval::{ApprovalStep, OnTimeout};
pub use context::{redact, resolve_secrets, DrillContext, StepContext};
pub use http::{HttpMethod, HttpStep};
pub use promote::{is_standby, PromoteStep};
pub use readiness::ReadinessStep;
pub use restore::RestoreStep;
pub use shell::ShellStep;
pub use sleep::SleepStep;
pub use sql::SqlStep;
pub use verify::{HeartbeatCheck, RowCountCheck, VerifyStep};
pub use wait_replicated::WaitReplicatedStep;

use super::Runbook;
use crate::model::Mode;

/// What a successful attempt did.
#[derive(Debug, Default)]
pub struct StepOutcome {
    /// What it did (kept, truncated, in the drill store and the report).
    pub output: String,
    /// The recovery point found: the newest heartbeat of the recovered
    /// database (`verify: heartbeat`), the restored export's time, the last
    /// commit a point-in-time restore replayed.
    pub recovery_point: Option<chrono::DateTime<chrono::Utc>>,
    /// A variable set for later steps (`sql: save_as`).
    pub save: Option<(String, String)>,
}

impl StepOutcome {
    pub fn text(output: impl Into<String>) -> StepOutcome {
        StepOutcome { output: output.into(), ..StepOutcome::default() }
    }
}

/// Why an attempt did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// It ran and failed; the text says why (kept as the attempt's output).
    #[error("{0}")]
    Failed(String),
    /// The drill was cancelled while it ran.
    #[error("cancelled")]
    Cancelled,
}

impl From<String> for StepError {
    fn from(s: String) -> Self {
        StepError::Failed(s)
    }
}

impl From<&str> for StepError {
    fn from(s: &str) -> Self {
        StepError::Failed(s.into())
    }
}

/// `{e:#}` of an error, as a step's failure.
pub fn failed(e: anyhow::Error) -> StepError {
    StepError::Failed(format!("{e:#}"))
}

/// A kind's validation error: the field under the step (`restore`,
/// `sql.save_as`) and what is wrong.
#[derive(Debug)]
pub struct Invalid {
    pub field: String,
    pub message: String,
}

impl Invalid {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Invalid {
        Invalid { field: field.into(), message: message.into() }
    }
}

/// Lists the kinds: key in the YAML, variant, schema type.
macro_rules! step_kinds {
    ($($key:literal => $variant:ident($ty:ty)),+ $(,)?) => {
        /// What a step does: exactly one kind.
        #[derive(Debug)]
        pub enum StepKind {
            $($variant($ty)),+
        }

        impl StepKind {
            /// The kind keys, as written in a runbook.
            pub const NAMES: &'static [&'static str] = &[$($key),+];

            /// The kind key of this step.
            pub fn name(&self) -> &'static str {
                match self {
                    $(StepKind::$variant(_) => $key),+
                }
            }

            /// One attempt of the step.
            pub async fn run(&self, ctx: &StepContext<'_>, cancel: CancellationToken) -> Result<StepOutcome, StepError> {
                match self {
                    $(StepKind::$variant(k) => k.run(ctx, cancel).await),+
                }
            }

            /// What the step will do, for `drill plan` (`sub` fills in the variables).
            pub fn describe(&self, sub: &dyn Fn(&str) -> String) -> String {
                match self {
                    $(StepKind::$variant(k) => k.describe(sub)),+
                }
            }

            /// What the step needs of the world (`sub` fills in the variables).
            pub fn needs(&self, sub: &dyn Fn(&str) -> String) -> needs::Needs {
                match self {
                    $(StepKind::$variant(k) => k.needs(sub)),+
                }
            }

            /// Checks what the schema alone cannot.
            pub fn validate(&self, runbook: &Runbook) -> Result<(), Invalid> {
                match self {
                    $(StepKind::$variant(k) => k.validate(runbook)),+
                }
            }

            /// Reads the kind named `key` from the map's next value; `None`
            /// when `key` names no kind.
            fn next_value<'de, A: MapAccess<'de>>(key: &str, map: &mut A) -> Option<Result<StepKind, A::Error>> {
                match key {
                    $($key => Some(map.next_value::<$ty>().map(StepKind::$variant)),)+
                    _ => None,
                }
            }
        }
    };
}

step_kinds! {
    "http" => Http(HttpStep),
    "shell" => Shell(ShellStep),
    "sql" => Sql(SqlStep),
    "wait_replicated" => WaitReplicated(WaitReplicatedStep),
    "restore" => Restore(RestoreStep),
    "promote" => Promote(PromoteStep),
    "readiness" => Readiness(ReadinessStep),
    "verify" => Verify(VerifyStep),
    "approval" => Approval(ApprovalStep),
    "sleep" => Sleep(SleepStep),
}

/// Where the recovery time starts or ends being measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RtoMarker {
    Start,
    End,
}

#[derive(Debug)]
pub struct Step {
    /// Unique in the runbook (letters, digits, `-`, `_`).
    pub id: String,
    pub description: String,
    pub kind: StepKind,
    /// The whole step, each attempt included (default: none for approval, 1h otherwise).
    pub timeout: Option<Duration>,
    /// Further attempts after a failure.
    pub retries: u32,
    /// Wait before the first retry; doubles at each further one.
    pub backoff: Duration,
    /// A critical step's failure aborts the runbook and runs `on_failure`.
    pub critical: bool,
    /// The modes the step runs in (default both).
    pub modes: Vec<Mode>,
    /// Marks where the recovery time starts (the first disruptive step) or ends.
    pub rto: Option<RtoMarker>,
}

impl Step {
    /// The kind key of this step.
    pub fn kind(&self) -> &'static str {
        self.kind.name()
    }
}

/// The fields every step has, besides its kind.
const COMMON: &[&str] = &["id", "description", "timeout", "retries", "backoff", "critical", "modes", "rto"];

/// Every field a step may have: the common ones and the kind keys.
static FIELDS: std::sync::LazyLock<Vec<&'static str>> =
    std::sync::LazyLock::new(|| COMMON.iter().chain(StepKind::NAMES).copied().collect());

/// A duration as a runbook writes it (`30s`, `2m`).
#[derive(Deserialize)]
#[serde(transparent)]
struct Human(#[serde(with = "humantime_serde")] Duration);

/// Refuses the value of a second kind key, with the error placed at that key.
struct SecondKind(String);

impl<'de> DeserializeSeed<'de> for SecondKind {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, _: D) -> Result<(), D::Error> {
        Err(D::Error::custom(self.0))
    }
}

impl<'de> Deserialize<'de> for Step {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(StepVisitor)
    }
}

struct StepVisitor;

impl<'de> Visitor<'de> for StepVisitor {
    type Value = Step;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a step: an id and one kind (")?;
        f.write_str(&StepKind::NAMES.join(", "))?;
        f.write_str(")")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Step, A::Error> {
        let (mut id, mut description, mut kind) = (None::<String>, None, None::<StepKind>);
        let (mut timeout, mut retries, mut backoff, mut critical, mut modes, mut rto) = (None, None, None, None, None, None);
        fn once<T, E: serde::de::Error>(slot: &mut Option<T>, v: T, name: &'static str) -> Result<(), E> {
            match slot.replace(v) {
                Some(_) => Err(E::duplicate_field(name)),
                None => Ok(()),
            }
        }
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "id" => once(&mut id, map.next_value()?, "id")?,
                "description" => once(&mut description, map.next_value::<String>()?, "description")?,
                "timeout" => once(&mut timeout, map.next_value::<Option<Human>>()?.map(|h| h.0), "timeout")?,
                "retries" => once(&mut retries, map.next_value::<u32>()?, "retries")?,
                "backoff" => once(&mut backoff, map.next_value::<Human>()?.0, "backoff")?,
                "critical" => once(&mut critical, map.next_value::<bool>()?, "critical")?,
                "modes" => once(&mut modes, map.next_value::<Vec<Mode>>()?, "modes")?,
                "rto" => once(&mut rto, map.next_value::<Option<RtoMarker>>()?, "rto")?,
                other if StepKind::NAMES.contains(&other) => {
                    if let Some(first) = &kind {
                        let step = id.as_ref().map(|i| format!("step {i:?}")).unwrap_or_else(|| "the step".into());
                        let msg = format!("{step} has two kinds ({}, {other}); give one", first.name());
                        // the error is raised reading this key's value, so that it points at it
                        map.next_value_seed(SecondKind(msg.clone()))?;
                        return Err(A::Error::custom(msg));
                    }
                    kind = StepKind::next_value(other, &mut map).transpose()?;
                }
                other => return Err(A::Error::unknown_field(other, &FIELDS)),
            }
        }
        let id = id.ok_or_else(|| A::Error::missing_field("id"))?;
        let kind = kind.ok_or_else(|| A::Error::custom(format!("step {id:?} has no kind: give one of {}", StepKind::NAMES.join(", "))))?;
        Ok(Step {
            id,
            description: description.unwrap_or_default(),
            kind,
            timeout: timeout.flatten(),
            retries: retries.unwrap_or(0),
            backoff: backoff.unwrap_or(Duration::from_secs(1)),
            critical: critical.unwrap_or(true),
            modes: modes.unwrap_or_else(|| vec![Mode::Drill, Mode::Failover]),
            rto: rto.flatten(),
        })
    }
}
