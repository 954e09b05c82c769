//! A pool spec (the body of `PUT /v1/pools/NAME`) from arbitrary JSON: validation accepts or
//! names a field, a valid pool builds into a table, and steering over it never panics.
#![no_main]

use burrow_edge::pools::pool::{self, PoolSpec};
use burrow_edge::route_table::{PoolDef, RouteTable, TunnelRecord};
use burrow_protocol::{AccountId, TunnelId};
use libfuzzer_sys::fuzz_target;
use uuid::Uuid;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = serde_json::from_slice::<PoolSpec<String>>(data) else {
        return;
    };
    let account = AccountId(Uuid::from_u128(1));
    let mut tunnels = Vec::new();
    let resolved = spec.resolve(|name| {
        let id = TunnelId(Uuid::from_u128(name.len() as u128 + 10));
        tunnels.push(TunnelRecord {
            id,
            account,
            name: name.clone(),
            secret_sha256: [0; 32],
        });
        Ok::<_, ()>(id)
    });
    let Ok(mut spec) = resolved else { return };
    spec.fallback = None;
    tunnels.sort_by_key(|t| t.id.0);
    tunnels.dedup_by_key(|t| t.id.0);
    if spec.validate().is_err() {
        return;
    }
    let def = PoolDef {
        account,
        name: "p".into(),
        spec,
        // A balancer plugin steers in the plugin host, not in `pool::choose`.
        balancer: None,
    };
    let Ok(table) = RouteTable::build(tunnels, vec![], vec![def]) else {
        return;
    };
    let headers = http::HeaderMap::new();
    let key = table.pools()[0].request_key(&headers, std::net::IpAddr::from([192, 0, 2, 1]));
    for in_flight in [0usize, 3] {
        let load = move |_: &TunnelId| Some(in_flight);
        let _ = pool::choose(table.pools(), 0, &load, &key, None);
    }
});
