//! Hostnames as routes and zones name them (the check lives with the API contract).

pub use burrow_api::hostnames::validate_hostname;
