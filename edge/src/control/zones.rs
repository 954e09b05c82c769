//! Zones: which hostnames an account may route. An account routes a hostname only under a zone
//! it holds (`example.com` holds `example.com`, `www.example.com`, `*.example.com`, …). The
//! operator assigns zones (`burrow-edge zone add --account A example.com`); with
//! `--self-service-zones`, an account claims one itself and proves it with a DNS TXT record.
//!
//! A zone is never a public suffix (`com`, `co.uk`: the public suffix list), an IP literal, or
//! nested in another account's zone (either way). Some names are nobody's to route, whatever the
//! zones: IP literals, `localhost`, and the edge's own names.
//!
//! Keys:
//!
//! ```text
//! zones/<zone>                    Zone: the account that holds it
//! zone-claims/<account>/<zone>    ZoneClaim: a self-service claim waiting for its TXT record
//! zone-guard                      written with every zone: two adds cannot nest each other
//! ```

use serde::{Deserialize, Serialize};

use crate::control::resources::{ControlPlane, CpError, from_json, now, to_json};
use crate::control::store::{Compare, Op};
use crate::hostname::validate_hostname;
use burrow_protocol::AccountId;

/// The TXT record a self-service claim is proven with: `_burrow-challenge.<zone>`.
pub const CHALLENGE_LABEL: &str = "_burrow-challenge";
/// Pending claims an account may hold at once.
pub const MAX_CLAIMS: usize = 16;
const GUARD: &str = "zone-guard";

pub use burrow_api::{Zone, ZoneSource};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ZoneClaim {
    pub zone: String,
    pub account: AccountId,
    /// The value the TXT record must hold: `burrow-verify=<token>`.
    pub token: String,
    pub created: u64,
}

impl ZoneClaim {
    pub fn record_name(&self) -> String {
        format!("{CHALLENGE_LABEL}.{}", self.zone)
    }

    pub fn record_value(&self) -> String {
        format!("burrow-verify={}", self.token)
    }
}

/// `name` and every name it is under, longest first: `a.b.c` → `a.b.c`, `b.c`, `c`.
fn suffixes(name: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(name), |n| n.split_once('.').map(|(_, rest)| rest))
}

/// Whether the whole of `name` is a public suffix (`com`, `co.uk`, `github.io`).
pub fn is_public_suffix(name: &str) -> bool {
    psl::suffix(name.as_bytes()).is_some_and(|s| s.as_bytes() == name.as_bytes() && s.is_known())
}

/// A name no tenant routes: an IP literal, `localhost`, or one of the edge's own names.
pub fn reserved(hostname: &str, own_names: &[String]) -> Option<String> {
    let base = hostname.strip_prefix("*.").unwrap_or(hostname);
    let literal = base.trim_start_matches('[').trim_end_matches(']');
    if literal.parse::<std::net::IpAddr>().is_ok() {
        return Some(format!("{hostname} is an IP address; route a host name"));
    }
    if base == "localhost" {
        return Some("localhost is nobody's to route".into());
    }
    // The edge's own names, and wildcards that would cover one.
    let covers = |own: &str| own == base || (hostname.starts_with("*.") && own.ends_with(&format!(".{base}")));
    own_names
        .iter()
        .find(|own| covers(own))
        .map(|own| format!("{hostname} would take {own}, a name of this edge itself"))
}

/// A zone's own checks: a host name (no wildcard, no port), not reserved, not a public suffix.
fn validate_zone(zone: &str, own_names: &[String]) -> Result<String, CpError> {
    let zone = zone.trim_end_matches('.').to_ascii_lowercase();
    let invalid = |reason: String| CpError::Invalid { field: "zone", reason };
    if zone.starts_with("*.") {
        return Err(invalid("a zone is a domain like example.com, without \"*.\"".into()));
    }
    validate_hostname(&zone).map_err(invalid)?;
    if zone.parse::<std::net::IpAddr>().is_ok() {
        return Err(invalid(format!("{zone} is an IP address")));
    }
    if is_public_suffix(&zone) {
        return Err(invalid(format!(
            "{zone} is a public suffix (anyone can register names under it); add a domain under it"
        )));
    }
    if own_names.iter().any(|own| own == &zone) {
        return Err(invalid(format!("{zone} is a name of this edge itself")));
    }
    Ok(zone)
}

impl ControlPlane {
    /// The zone `hostname` (exact or `*.`) falls under, if any.
    pub async fn zone_of(&self, hostname: &str) -> Result<Option<Zone>, CpError> {
        let base = hostname.strip_prefix("*.").unwrap_or(hostname);
        for name in suffixes(base) {
            if let Some(kv) = self.store().get(&format!("zones/{name}")).await? {
                return Ok(Some(from_json(&kv)?));
            }
        }
        Ok(None)
    }

    /// Refuse a hostname `account` may not route: a reserved name, a public suffix, or one
    /// outside the account's zones.
    pub async fn check_routable(&self, account: AccountId, hostname: &str) -> Result<(), CpError> {
        if let Some(why) = reserved(hostname, self.own_names()) {
            return Err(CpError::Forbidden(why));
        }
        let base = hostname.strip_prefix("*.").unwrap_or(hostname);
        if is_public_suffix(base) {
            return Err(CpError::Forbidden(format!("{base} is a public suffix")));
        }
        match self.zone_of(hostname).await? {
            Some(zone) if zone.account == account => Ok(()),
            // Whose zone it is stays unsaid: no oracle of who holds which name.
            _ => Err(CpError::Forbidden(format!(
                "{hostname} is not under a zone of your account: see `burrow zone list`; a zone is \
                 assigned by the operator (`burrow-edge zone add --account ACCOUNT ZONE`) or, where \
                 the edge allows it, claimed with `burrow zone add ZONE`"
            ))),
        }
    }

    /// The zones of `account`, or of every account.
    pub async fn list_zones(&self, account: Option<AccountId>) -> Result<Vec<Zone>, CpError> {
        let (zones, _) = self.list_all::<Zone>("zones/").await?;
        Ok(zones
            .into_iter()
            .filter(|z| account.is_none_or(|a| z.account == a))
            .collect())
    }

    /// Give `zone` to `account` (idempotent for the account that holds it already).
    pub async fn add_zone(&self, account: AccountId, zone: &str, source: ZoneSource) -> Result<Zone, CpError> {
        let zone = validate_zone(zone, self.own_names())?;
        self.account(account).await?;
        let guard = match self.store().get(GUARD).await? {
            Some(kv) => Compare::ModRevision(GUARD.into(), kv.mod_revision),
            None => Compare::Missing(GUARD.into()),
        };
        if let Some(existing) = self.zone_of(&zone).await? {
            return match (existing.account == account, existing.zone == zone) {
                (true, true) => Ok(existing),
                (true, false) => Err(CpError::Conflict(format!(
                    "{zone} is already under your zone {}",
                    existing.zone
                ))),
                (false, _) => Err(CpError::Conflict(format!("{zone} is in a zone another account holds"))),
            };
        }
        let inner = format!(".{zone}");
        if self
            .list_zones(None)
            .await?
            .iter()
            .any(|z| z.zone.ends_with(&inner) && z.account != account)
        {
            return Err(CpError::Conflict(format!("another account holds a zone inside {zone}")));
        }
        let doc = Zone {
            zone: zone.clone(),
            account,
            created: now(),
            source,
        };
        let key = format!("zones/{zone}");
        let ops = vec![
            Op::put(key.clone(), to_json(&doc)),
            Op::put(GUARD, Vec::new()),
            Op::Delete {
                key: format!("zone-claims/{account}/{zone}"),
            },
        ];
        let compares = vec![
            guard,
            Compare::Missing(key),
            Compare::Exists(format!("accounts/{account}")),
        ];
        if !self.store().txn(compares, ops).await?.succeeded {
            return Err(CpError::Conflict(format!("zones changed while adding {zone}; retry")));
        }
        Ok(doc)
    }

    /// Take `zone` from its account. Refused while it routes hostnames, unless `force`, which
    /// deletes those routes with it.
    pub async fn remove_zone(&self, account: Option<AccountId>, zone: &str, force: bool) -> Result<Zone, CpError> {
        let zone = zone.trim_end_matches('.').to_ascii_lowercase();
        let key = format!("zones/{zone}");
        let not_found = || CpError::NotFound(format!("zone {zone}"));
        let kv = self.store().get(&key).await?.ok_or_else(not_found)?;
        let doc: Zone = from_json(&kv)?;
        if account.is_some_and(|a| a != doc.account) {
            return Err(not_found());
        }
        let under = |host: &str| {
            let base = host.strip_prefix("*.").unwrap_or(host);
            base == zone || base.ends_with(&format!(".{zone}"))
        };
        let routes: Vec<String> = self
            .list_routes(doc.account)
            .await?
            .into_iter()
            .map(|r| r.hostname)
            .filter(|h| under(h))
            .collect();
        if !routes.is_empty() && !force {
            return Err(CpError::Conflict(format!(
                "zone {zone} routes {} hostname(s) ({}); delete them first, or remove it with --force",
                routes.len(),
                routes.join(", ")
            )));
        }
        let mut ops: Vec<Op> = routes
            .iter()
            .map(|h| Op::Delete {
                key: format!("routes/{h}"),
            })
            .collect();
        ops.push(Op::Delete { key: key.clone() });
        if !self
            .store()
            .txn(vec![Compare::ModRevision(key, kv.mod_revision)], ops)
            .await?
            .succeeded
        {
            return Err(CpError::Conflict(format!("zone {zone} changed meanwhile; retry")));
        }
        Ok(doc)
    }

    /// Start a self-service claim of `zone`: the TXT record to publish.
    pub async fn claim_zone(&self, account: AccountId, zone: &str) -> Result<ZoneClaim, CpError> {
        let zone = validate_zone(zone, self.own_names())?;
        match self.zone_of(&zone).await? {
            Some(held) if held.account == account => {
                return Err(CpError::Conflict(format!(
                    "{zone} is already under your zone {}",
                    held.zone
                )));
            }
            Some(_) => return Err(CpError::Conflict(format!("{zone} is in a zone another account holds"))),
            None => {}
        }
        let key = format!("zone-claims/{account}/{zone}");
        if let Some(kv) = self.store().get(&key).await? {
            return from_json(&kv);
        }
        let (claims, _) = self.list_all::<ZoneClaim>(&format!("zone-claims/{account}/")).await?;
        if claims.len() >= MAX_CLAIMS {
            return Err(CpError::Invalid {
                field: "zone",
                reason: format!("at most {MAX_CLAIMS} claims wait for their TXT record at once"),
            });
        }
        let claim = ZoneClaim {
            zone,
            account,
            token: format!("{:032x}", rand::random::<u128>()),
            created: now(),
        };
        let put = Op::put(key.clone(), to_json(&claim));
        self.store().txn(vec![Compare::Missing(key)], vec![put]).await?;
        Ok(claim)
    }

    /// The account's claims waiting for their TXT record.
    pub async fn zone_claims(&self, account: AccountId) -> Result<Vec<ZoneClaim>, CpError> {
        Ok(self.list_all(&format!("zone-claims/{account}/")).await?.0)
    }

    pub async fn zone_claim(&self, account: AccountId, zone: &str) -> Result<ZoneClaim, CpError> {
        let zone = zone.trim_end_matches('.').to_ascii_lowercase();
        let kv = self.store().get(&format!("zone-claims/{account}/{zone}")).await?;
        let kv = kv.ok_or_else(|| {
            CpError::NotFound(format!(
                "a claim of zone {zone}: start one with `burrow zone add {zone}`"
            ))
        })?;
        from_json(&kv)
    }
}

/// The texts of the TXT records of `name` (none when it has no such record), asked of `server`
/// or of the system's resolvers.
pub async fn txt_records(name: &str, server: Option<std::net::SocketAddr>) -> Result<Vec<String>, String> {
    use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
    use hickory_resolver::proto::rr::RData;
    let mut options = ResolverOpts::default();
    options.timeout = std::time::Duration::from_secs(3);
    options.attempts = 2;
    let resolver = match server {
        Some(server) => {
            let (mut udp, mut tcp) = (ConnectionConfig::udp(), ConnectionConfig::tcp());
            udp.port = server.port();
            tcp.port = server.port();
            let config =
                ResolverConfig::from_name_servers(vec![NameServerConfig::new(server.ip(), true, vec![udp, tcp])]);
            hickory_resolver::TokioResolver::builder_with_config(config, Default::default())
                .with_options(options)
                .build()
        }
        None => hickory_resolver::TokioResolver::builder_tokio().and_then(|b| b.with_options(options).build()),
    }
    .map_err(|e| format!("no DNS resolver: {e}"))?;
    let fqdn = format!("{}.", name.trim_end_matches('.'));
    match resolver.txt_lookup(fqdn).await {
        Ok(lookup) => Ok(lookup
            .answers()
            .iter()
            .filter_map(|record| match &record.data {
                RData::TXT(txt) => Some(txt.txt_data.iter().map(|s| String::from_utf8_lossy(s)).collect()),
                _ => None,
            })
            .collect()),
        Err(e) if e.is_no_records_found() => Ok(Vec::new()),
        Err(e) => Err(format!("looking up the TXT records of {name}: {e}")),
    }
}

impl ControlPlane {
    /// Prove a claim: its TXT record holds the claim's value. Then the zone is the account's.
    pub async fn verify_zone(
        &self,
        account: AccountId,
        zone: &str,
        server: Option<std::net::SocketAddr>,
    ) -> Result<Zone, CpError> {
        let claim = self.zone_claim(account, zone).await?;
        let (name, value) = (claim.record_name(), claim.record_value());
        let found = txt_records(&name, server).await.map_err(CpError::Unavailable)?;
        if !found.iter().any(|text| text.trim() == value) {
            return Err(CpError::Conflict(format!(
                "no TXT record {name} holds {value:?} yet ({}); publish it, and retry once DNS has it",
                match found.len() {
                    0 => "it has no TXT record".to_owned(),
                    n => format!("it has {n} other TXT record(s)"),
                }
            )));
        }
        self.add_zone(account, &claim.zone, ZoneSource::Dns).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_suffixes_and_reserved_names() {
        for suffix in ["com", "co.uk", "github.io"] {
            assert!(is_public_suffix(suffix), "{suffix}");
        }
        for domain in ["example.com", "example.co.uk", "a.example.test"] {
            assert!(!is_public_suffix(domain), "{domain}");
        }
        let own = vec!["edge1.example.net".to_owned()];
        for name in [
            "127.0.0.1",
            "[::1]",
            "*.10.0.0.1",
            "localhost",
            "edge1.example.net",
            "*.example.net",
        ] {
            assert!(reserved(name, &own).is_some(), "{name}");
        }
        for name in ["app.localhost", "shop.example.com", "*.example.com"] {
            assert!(reserved(name, &own).is_none(), "{name}");
        }
    }

    #[test]
    fn suffixes_walk_to_the_top() {
        let all: Vec<_> = suffixes("a.b.example.com").collect();
        assert_eq!(all, ["a.b.example.com", "b.example.com", "example.com", "com"]);
    }
}
