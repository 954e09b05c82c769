//! Phase 1: the route for the request's Host, resolved from one load of the table.

use std::sync::Arc;

use burrow_protocol::{AccountId, TunnelId};

use super::ClientInfo;
use crate::EdgeState;
use crate::dataplane::request_checks;
use crate::dataplane::respond::ProxyError;
use crate::plugins::binding::Binding;
use crate::route_table::{RouteTable, Target};

/// Where the route sends this request.
pub(super) enum Destination {
    Tunnel {
        id: TunnelId,
        name: String,
    },
    /// A pool of the table (kept alive for the request; pools hold their health state).
    Pool {
        table: Arc<RouteTable>,
        index: usize,
    },
}

/// What the request needs of its route; nothing borrowed from the table, so no guard is held
/// across the awaits of later phases.
pub(super) struct Resolved {
    pub destination: Destination,
    pub plugins: Arc<[Binding]>,
    /// What plugins see of the route: its hostname pattern, and the account that owns it. Left
    /// empty for requests that run no plugin (no copy on their path).
    pub pattern: String,
    pub account: Option<AccountId>,
}

/// The route for `host` (checked against the TLS server name the client asked for).
pub(super) fn resolve(state: &EdgeState, client: &ClientInfo, host: &str) -> Result<Resolved, ProxyError> {
    let table = state.routes.load();
    if let Some(sni) = &client.sni {
        request_checks::check_sni(&table, sni, host)?;
    }
    let route = table
        .lookup(host)
        .ok_or_else(|| ProxyError::UnknownHost(host.to_owned()))?;
    let plugins = route.plugins.clone();
    let balanced = matches!(route.target, Target::Pool(i) if table.pools()[i].balancer.is_some());
    let (pattern, account) = match !plugins.is_empty() || balanced {
        true => (route.hostname.clone(), table.route_account(route)),
        false => Default::default(),
    };
    let destination = match route.target {
        Target::Tunnel(id) => Destination::Tunnel {
            id,
            name: table.tunnel(&id).map(|t| t.name.clone()).unwrap_or_default(),
        },
        // Keep *this* table (not a newer one): the pool index belongs to it.
        Target::Pool(index) => Destination::Pool {
            table: arc_swap::Guard::into_inner(table),
            index,
        },
    };
    Ok(Resolved {
        destination,
        plugins,
        pattern,
        account,
    })
}
