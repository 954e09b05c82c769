use burrow_protocol::AccountId;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ZoneSource {
    /// Assigned by the operator.
    Operator,
    /// Claimed by the account and proven with a DNS TXT record.
    Dns,
}

/// A domain an account may route hostnames under (the zone itself, and every name below it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Zone {
    pub zone: String,
    pub account: AccountId,
    pub created: u64,
    pub source: ZoneSource,
}

/// `POST /v1/zones`: claim a zone (where the edge lets accounts claim them).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimZone {
    pub zone: String,
}

/// A claim waiting for its TXT record: publish `txt_value` at `txt_name`, then verify.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ZoneClaimView {
    pub zone: String,
    pub txt_name: String,
    pub txt_value: String,
}

/// `GET /v1/zones`: the account's zones and pending claims.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Zones {
    pub items: Vec<Zone>,
    pub claims: Vec<ZoneClaimView>,
}
