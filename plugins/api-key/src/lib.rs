//! `api-key`: only requests presenting one of the configured API keys get through. The config
//! holds SHA-256 digests of the keys, never the keys, so it can be stored and shown safely.
//!
//! Config (JSON):
//! `{"header": "x-api-key", "query": "api_key", "keys": [{"id": "ci", "sha256": "<hex>"}],
//!   "forward-as": "x-api-key-id"}`.
//! The key is taken from the header, else (if `query` is set) from that query parameter; it is
//! removed from the request before forwarding, and with `forward-as` the matching key's `id` is
//! passed to the origin instead.

use std::collections::HashMap;

use burrow_plugin::{Action, Level, Plugin, Request};
use sha2::{Digest, Sha256};

/// Longest key looked at (anything longer is not one of ours).
const MAX_KEY: usize = 1024;

#[derive(serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
struct Config {
    #[serde(default = "default_header")]
    header: String,
    /// Also accept the key in this query parameter.
    query: Option<String>,
    keys: Vec<Key>,
    forward_as: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Key {
    id: String,
    /// Hex SHA-256 of the key.
    sha256: String,
}

fn default_header() -> String {
    "x-api-key".into()
}

/// The config with its digests decoded, kept between calls of a reused instance.
struct Keys {
    config: Config,
    by_digest: HashMap<[u8; 32], String>,
}

fn build(text: &str) -> Result<Keys, String> {
    let config: Config = serde_json::from_str(text).map_err(|e| format!("api-key config: {e}"))?;
    let mut by_digest = HashMap::with_capacity(config.keys.len());
    for key in &config.keys {
        let digest = decode_hex32(&key.sha256)
            .ok_or_else(|| format!("api-key config: key {:?}: sha256 must be 64 hex digits", key.id))?;
        by_digest.insert(digest, key.id.clone());
    }
    if by_digest.is_empty() {
        return Err("api-key config: no keys".into());
    }
    Ok(Keys { config, by_digest })
}

fn decode_hex32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let digit = |b: u8| (b as char).to_digit(16);
        out[i] = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

/// `%XX` escapes and `+` of a query value.
fn percent_decode(value: &str) -> Vec<u8> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = bytes
            .get(i + 1..i + 3)
            .filter(|hex| bytes[i] == b'%' && hex.iter().all(u8::is_ascii_hexdigit))
            .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// The query without parameter `name`.
fn without_param(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k) != name)
        .collect::<Vec<_>>()
        .join("&")
}

struct ApiKey;

impl Plugin for ApiKey {
    fn on_request_headers(req: &Request) -> Action {
        let keys = match burrow_plugin::cached_config(build) {
            Ok(keys) => keys,
            Err(e) => {
                burrow_plugin::log(Level::Error, &e);
                return burrow_plugin::respond(500, "plugin misconfigured");
            }
        };
        let config = &keys.config;
        let from_query = config.query.as_deref().and_then(|q| req.query_param(q));
        let presented: Vec<Vec<u8>> = req
            .header(&config.header)
            .into_iter()
            .chain(from_query.as_deref().map(percent_decode))
            .collect();
        let matched = presented
            .iter()
            .filter(|key| !key.is_empty() && key.len() <= MAX_KEY)
            .find_map(|key| keys.by_digest.get(&<[u8; 32]>::from(Sha256::digest(key))));
        let Some(id) = matched else {
            let challenge = vec![("www-authenticate".to_owned(), b"ApiKey".to_vec())];
            return burrow_plugin::respond_with(401, challenge, "missing or invalid API key");
        };
        // The key never reaches the origin, nor its logs.
        req.remove_header(&config.header);
        if let (Some(name), Some(_)) = (&config.query, &from_query) {
            let query = req.query().map(|q| without_param(&q, name)).unwrap_or_default();
            let path = req.path();
            let target = if query.is_empty() {
                path
            } else {
                format!("{path}?{query}")
            };
            if let Err(e) = req.set_path_with_query(&target) {
                burrow_plugin::log(Level::Error, &format!("removing the key from the query: {e}"));
                return burrow_plugin::respond(500, "plugin failed");
            }
        }
        if let Some(name) = &config.forward_as {
            // Whatever the visitor sent under that name is replaced.
            let _ = req.set_header(name, id.as_bytes());
        }
        Action::Continue
    }
}

burrow_plugin::export_plugin!(ApiKey);
