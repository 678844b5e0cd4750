//! Signs the JSON report (outputs replaced by their digests) and stores it
//! on both providers under `reports/`.
use bascule_core::keys::AgentKey;
use bascule_core::signed::Signed;

use super::Report;
use crate::context::{Controller, REPORTS};

/// Stores the signed report on every provider that takes it; returns where,
/// or why not, per provider.
pub async fn publish(r: &Report, controller: &Controller, key: &AgentKey) -> Vec<(String, Result<String, String>)> {
    let writer = controller.reports().writer();
    let _ = writer.put(&r.key(), bytes::Bytes::from(r.for_providers().sign(key))).await;
    let at = format!("{REPORTS}/{}", r.key());
    writer.outcome().into_iter().map(|(p, why)| (p, why.map_or_else(|| Ok(at.clone()), Err))).collect()
}
