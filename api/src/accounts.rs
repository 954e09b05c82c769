use burrow_protocol::AccountId;
use serde::{Deserialize, Serialize};

/// An account: what owns tunnels, routes, pools, plugins and zones.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Account {
    pub id: AccountId,
    pub name: String,
    pub created: u64,
}
