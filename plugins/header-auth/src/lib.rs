//! `header-auth`: only requests carrying one of the configured API keys get through.
//!
//! Config (JSON): `{"header": "x-api-key", "keys": ["k1", "k2"], "forward-as": "x-user"}`.
//! The key header is removed before the request is forwarded; with `forward-as`, the index of the
//! matching key is passed to the origin instead (the key itself never is).

use burrow_plugin::{Action, Level, Plugin, Request};

#[derive(serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Config {
    #[serde(default = "default_header")]
    header: String,
    keys: Vec<String>,
    forward_as: Option<String>,
}

fn default_header() -> String {
    "x-api-key".into()
}

struct HeaderAuth;

impl Plugin for HeaderAuth {
    fn on_request_headers(req: &Request) -> Action {
        let config: Config = match burrow_plugin::config() {
            Ok(c) => c,
            Err(e) => {
                burrow_plugin::log(Level::Error, &e);
                return burrow_plugin::respond(500, "plugin misconfigured");
            }
        };
        let presented = req.header(&config.header);
        let matched = presented
            .iter()
            .find_map(|value| config.keys.iter().position(|k| k.as_bytes() == value.as_slice()));
        let Some(index) = matched else {
            return burrow_plugin::respond(401, "missing or invalid API key");
        };
        req.remove_header(&config.header);
        if let Some(name) = &config.forward_as {
            let _ = req.set_header(name, index.to_string().as_bytes());
        }
        Action::Continue
    }
}

burrow_plugin::export_plugin!(HeaderAuth);
