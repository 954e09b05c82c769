use serde::{Deserialize, Serialize};

/// A whole list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Items<T> {
    pub items: Vec<T>,
}

/// One page of a long list; `next` is the `after=` of the next page (none: the last).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// What a delete removed: a name, id or hostname.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deleted {
    pub deleted: String,
}

/// How many records a cleanup removed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Removed {
    pub removed: usize,
}

/// Every error answer: `{"error": {"code", "message", "field"?}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Machine-readable: `not_found`, `conflict`, `invalid`, `forbidden`, `unauthorized`, …
    pub code: String,
    /// What happened and what to do next.
    pub message: String,
    /// The request field at fault, for `invalid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}
