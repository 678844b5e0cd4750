//! Errors of the format crate.
//!
//! Rules: every variant carries what it is about (object key, provider, file);
//! no catch-all string variant; messages are lower-case and say what to do
//! when an operator can do something.
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {field}: {message}")]
    Config { file: PathBuf, line: usize, column: usize, field: String, message: String },
    #[error("{file}: {message}")]
    ConfigValue { file: PathBuf, message: String },
    #[error("{path}: not a bascule agent key file ({reason})")]
    KeyFile { path: PathBuf, reason: String },
    #[error("invalid age recipient {recipient:?}: {reason}")]
    Recipient { recipient: String, reason: String },
    #[error("invalid verify key {key:?}: expected ed25519:<64 hex digits>")]
    VerifyKey { key: String },
    #[error("{identity}: no age identity found; expected a file with AGE-SECRET-KEY-1… lines")]
    Identity { identity: String },
    #[error("sealing failed: {0}")]
    Seal(String),
    #[error("{key}: cannot be opened with the given identity; it was sealed to {recipients}")]
    WrongIdentity { key: String, recipients: String },
    #[error("{key}: decryption failed ({reason}); the object is damaged or forged")]
    Open { key: String, reason: String },
    #[error("{key}: plaintext hash mismatch (expected {expected}, got {actual})")]
    PlaintextHash { key: String, expected: String, actual: String },
    #[error("{key}: ciphertext hash mismatch on provider {provider} (expected {expected}, got {actual}): the copy is damaged or forged")]
    CiphertextHash { key: String, provider: String, expected: String, actual: String },
    #[error("{key}: bad signed envelope: {reason}")]
    Envelope { key: String, reason: String },
    #[error("{key}: signature does not verify with any registered agent key; refusing the object")]
    BadSignature { key: String },
    #[error("{key}: signed by a key not valid then: {reason}; refusing the object")]
    KeyNotValid { key: String, reason: crate::keys::NotValid },
    #[error("{key}: malformed body: {reason}")]
    Body { key: String, reason: String },
    #[error("provider {provider}: HEAD sequence {found} is below {seen}, already seen: the provider serves an older state (rollback); refusing it")]
    Rollback { provider: String, found: u64, seen: u64 },
    #[error(
        "provider {provider}: HEAD sequence {found} is signed by {key}, revoked, and is above {mark}, the highest seen when its \
         revocation was configured: a revoked key signs nothing new, whatever time it claims; refusing it"
    )]
    RevokedSigner { provider: String, key: String, found: u64, mark: u64 },
    #[error("provider {provider}: {}{key}: {source}", advice.as_deref().map(|a| format!("{a}; ")).unwrap_or_default())]
    Store {
        provider: String,
        key: String,
        #[source]
        source: Box<object_store::Error>,
        /// What the error most likely means and what to do, when the
        /// provider's answer says (see `provider::advice`).
        advice: Option<Box<String>>,
    },
    #[error("{key}: no provider took it ({reasons})")]
    Unwritten { key: String, reasons: String },
    #[error("provider {provider}: {key}: {size} bytes or more, above the {max} bytes such an object may have; refusing to read it")]
    TooLarge { provider: String, key: String, size: u64, max: u64 },
    #[error("provider {provider}: listing {prefix}: {why}; refusing to go on with it (a sound tenant stays far below; see the README's threat model)")]
    Listing { provider: String, prefix: String, why: String },
    #[error("{key}: not found on any provider")]
    Missing { key: String },
    #[error("{key}: no provider holds a good copy: {reasons}")]
    NoGoodCopy { key: String, reasons: String },
    #[error("rollback mark {name}: {reason}")]
    Mark { name: String, reason: String },
}

impl Error {
    /// For a provider's error, what it most likely means and what to do.
    pub fn advice(&self) -> Option<&str> {
        match self {
            Error::Store { advice, .. } => advice.as_deref().map(String::as_str),
            _ => None,
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
