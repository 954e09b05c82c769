//! Hostnames as routes, zones and pool monitors name them.

/// A route hostname: lowercase DNS labels, optionally starting with `*.`.
pub fn validate_hostname(hostname: &str) -> Result<(), String> {
    if hostname.is_empty() || hostname.len() > 253 {
        return Err("must be 1 to 253 characters".into());
    }
    let name = hostname.strip_prefix("*.").unwrap_or(hostname);
    if name.contains('*') {
        return Err("only a leading \"*.\" wildcard is allowed".into());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("labels must be 1 to 63 characters".into());
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(format!("label {label:?} may only hold a-z, 0-9 and '-'"));
        }
    }
    Ok(())
}
