//! Prometheus metrics of the edge, served on the admin listener at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    pub class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolOriginLabels {
    /// Pools are named per account: two tenants may both have a pool "web".
    pub account: String,
    pub pool: String,
    pub origin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginCallLabels {
    pub plugin: String,
    /// The uploading account; empty for an operator's plugins (`--plugin`).
    pub account: String,
    /// A [`CallResult`]: `ok`, `trap`, `deadline`, `error`, `tripped`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    pub plugin: String,
    pub account: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OwnMetricLabels {
    pub plugin: String,
    pub account: String,
    pub name: String,
}

/// Per-plugin calls and their duration, and the plugins' own counters and histograms (the
/// `metrics` import). Owned by the plugin host (which exists before the edge's state) and
/// registered with the edge's metrics.
#[derive(Clone)]
pub struct PluginMetrics {
    calls: Family<PluginCallLabels, Counter>,
    logs_dropped: Counter,
    duration: Family<PluginLabels, Histogram, fn() -> Histogram>,
    own_counters: Family<OwnMetricLabels, Counter>,
    own_histograms: Family<OwnMetricLabels, Histogram, fn() -> Histogram>,
}

impl Default for PluginMetrics {
    fn default() -> Self {
        // 1 µs … ~100 ms: calls are bounded by a deadline of at most 100 ms.
        let buckets: fn() -> Histogram = || Histogram::new(exponential_buckets(1e-6, 2.5, 14));
        // Any unit: 1e-6 … 1e6 in powers of ten.
        let own_buckets: fn() -> Histogram = || Histogram::new(exponential_buckets(1e-6, 10.0, 13));
        Self {
            calls: Family::default(),
            logs_dropped: Counter::default(),
            duration: Family::new_with_constructor(buckets),
            own_counters: Family::default(),
            own_histograms: Family::new_with_constructor(own_buckets),
        }
    }
}

/// Names of its own metrics one plugin may create (each is a series on `/metrics`).
pub const MAX_OWN_METRICS: usize = 32;

/// The counter and the histogram of one name (a plugin may use a name as both).
type OwnSeries = (Option<Counter>, Option<Histogram>);

/// One plugin's own counters and histograms, by name, created on first use up to
/// [`MAX_OWN_METRICS`].
pub struct OwnMetrics {
    plugin: String,
    account: String,
    families: PluginMetrics,
    created: std::sync::Mutex<std::collections::HashMap<String, OwnSeries>>,
}

impl OwnMetrics {
    /// The series `name` of this plugin, made with `make` on first use; `None` for a bad name or
    /// one past the limit.
    fn series<T: Clone>(
        &self,
        name: &str,
        slot: impl Fn(&mut OwnSeries) -> &mut Option<T>,
        make: impl FnOnce(&OwnMetricLabels) -> T,
    ) -> Option<T> {
        let valid =
            !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid {
            return None;
        }
        let mut created = self.created.lock().ok()?;
        if !created.contains_key(name) && created.len() >= MAX_OWN_METRICS {
            return None;
        }
        let entry = created.entry(name.to_owned()).or_default();
        let series = slot(entry);
        if series.is_none() {
            let labels = OwnMetricLabels {
                plugin: self.plugin.clone(),
                account: self.account.clone(),
                name: name.to_owned(),
            };
            *series = Some(make(&labels));
        }
        series.clone()
    }

    /// Add to the counter `name`; `false` if the name is invalid or one too many.
    pub fn counter_add(&self, name: &str, delta: u64) -> bool {
        let families = &self.families;
        let counter = self.series(name, |e| &mut e.0, |l| families.own_counters.get_or_create(l).clone());
        counter.map(|c| c.inc_by(delta)).is_some()
    }

    /// Record `value` in the histogram `name`; `false` if the name is invalid or one too many.
    pub fn observe(&self, name: &str, value: f64) -> bool {
        let families = &self.families;
        let histogram = self.series(name, |e| &mut e.1, |l| families.own_histograms.get_or_create(l).clone());
        histogram
            .filter(|_| value.is_finite())
            .map(|h| h.observe(value))
            .is_some()
    }
}

impl OwnMetrics {
    /// Remove this plugin's own series from `/metrics` (its version is no longer loaded).
    pub fn forget(&self) {
        let Ok(created) = self.created.lock() else { return };
        for name in created.keys() {
            let labels = OwnMetricLabels {
                plugin: self.plugin.clone(),
                account: self.account.clone(),
                name: name.clone(),
            };
            self.families.own_counters.remove(&labels);
            self.families.own_histograms.remove(&labels);
        }
    }
}

impl PluginMetrics {
    /// Remove a plugin's call series from `/metrics` (its version is no longer loaded).
    pub fn forget(&self, account: &str, plugin: &str) {
        for result in CallResult::ALL {
            self.calls.remove(&PluginCallLabels {
                plugin: plugin.to_owned(),
                account: account.to_owned(),
                result: result.label(),
            });
        }
        self.duration.remove(&PluginLabels {
            plugin: plugin.to_owned(),
            account: account.to_owned(),
        });
    }

    /// An `on-log` call that was not run: too many were waiting for a slot.
    pub fn log_dropped(&self) {
        self.logs_dropped.inc();
    }

    /// `on-log` calls dropped so far.
    pub fn logs_dropped(&self) -> u64 {
        self.logs_dropped.get()
    }

    /// The plugin's own metrics (the `metrics` import).
    pub fn own(&self, account: &str, plugin: &str) -> std::sync::Arc<OwnMetrics> {
        std::sync::Arc::new(OwnMetrics {
            plugin: plugin.to_owned(),
            account: account.to_owned(),
            families: self.clone(),
            created: Default::default(),
        })
    }

    /// The handles of one plugin's series, made once when it is loaded: a call then counts
    /// without building labels or looking them up.
    pub fn for_plugin(&self, account: &str, plugin: &str) -> PluginCallMetrics {
        let calls = CallResult::ALL.map(|result| {
            let labels = PluginCallLabels {
                plugin: plugin.to_owned(),
                account: account.to_owned(),
                result: result.label(),
            };
            self.calls.get_or_create(&labels).clone()
        });
        let labels = PluginLabels {
            plugin: plugin.to_owned(),
            account: account.to_owned(),
        };
        PluginCallMetrics {
            calls,
            duration: self.duration.get_or_create(&labels).clone(),
        }
    }
}

/// How a plugin call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallResult {
    Ok,
    Trap,
    Deadline,
    /// Instantiation failed, a limit was hit, or the answer was unusable.
    Error,
    /// Not run: the plugin is tripped.
    Tripped,
}

impl CallResult {
    const ALL: [CallResult; 5] = [Self::Ok, Self::Trap, Self::Deadline, Self::Error, Self::Tripped];

    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Trap => "trap",
            Self::Deadline => "deadline",
            Self::Error => "error",
            Self::Tripped => "tripped",
        }
    }
}

/// One plugin's series (see [`PluginMetrics::for_plugin`]).
pub struct PluginCallMetrics {
    /// Indexed by `CallResult as usize`.
    calls: [Counter; 5],
    duration: Histogram,
}

impl PluginCallMetrics {
    /// A call ended with `result`; `seconds` is `None` when it did not run.
    pub fn record(&self, result: CallResult, seconds: Option<f64>) {
        self.calls[result as usize].inc();
        if let Some(seconds) = seconds {
            self.duration.observe(seconds);
        }
    }
}

pub struct Metrics {
    registry: Registry,
    requests: Family<StatusLabels, Counter>,
    pub request_duration: Histogram,
    pub tunnel_connections: Gauge,
    pub registrations: Family<ResultLabels, Counter>,
    pool_origin_healthy: Family<PoolOriginLabels, Gauge>,
    /// The series of `pool_origin_healthy` made so far, to drop those of deleted pools.
    pool_series: std::sync::Mutex<std::collections::HashSet<PoolOriginLabels>>,
}

impl Metrics {
    pub fn new(plugins: Option<&PluginMetrics>) -> Self {
        let mut registry = Registry::with_prefix("burrow");
        if let Some(plugins) = plugins {
            registry.register(
                "plugin_calls",
                "Wasm plugin calls by plugin and result",
                plugins.calls.clone(),
            );
            registry.register(
                "plugin_logs_dropped",
                "on-log calls not run because too many were already waiting",
                plugins.logs_dropped.clone(),
            );
            registry.register(
                "plugin_call_duration_seconds",
                "Time of one plugin call, instantiation included",
                plugins.duration.clone(),
            );
            registry.register(
                "plugin_counter",
                "Counters plugins keep (metrics.counter-add), by plugin and name",
                plugins.own_counters.clone(),
            );
            registry.register(
                "plugin_histogram",
                "Values plugins record (metrics.histogram-observe), by plugin and name",
                plugins.own_histograms.clone(),
            );
        }
        let requests = Family::<StatusLabels, Counter>::default();
        registry.register("requests", "Public requests by response status class", requests.clone());
        // 100 µs … ~50 s
        let request_duration = Histogram::new(exponential_buckets(0.0001, 2.5, 15));
        registry.register(
            "request_duration_seconds",
            "Time from request head to response head",
            request_duration.clone(),
        );
        let tunnel_connections = Gauge::default();
        registry.register(
            "tunnel_connections",
            "Registered tunnel connections",
            tunnel_connections.clone(),
        );
        let registrations = Family::<ResultLabels, Counter>::default();
        registry.register(
            "tunnel_registrations",
            "Connector registrations by result",
            registrations.clone(),
        );
        let pool_origin_healthy = Family::<PoolOriginLabels, Gauge>::default();
        registry.register(
            "pool_origin_healthy",
            "1 when a pool origin takes traffic on this edge, 0 when it is down",
            pool_origin_healthy.clone(),
        );
        Self {
            pool_origin_healthy,
            pool_series: Default::default(),
            registry,
            requests,
            request_duration,
            tunnel_connections,
            registrations,
        }
    }

    pub fn count_response(&self, status: u16) {
        let class = match status {
            100..=199 => "1xx",
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        self.requests.get_or_create(&StatusLabels { class }).inc();
    }

    pub fn count_registration(&self, result: &'static str) {
        self.registrations.get_or_create(&ResultLabels { result }).inc();
    }

    pub fn set_pool_origin_healthy(&self, account: &str, pool: &str, origin: &str, healthy: bool) {
        let labels = PoolOriginLabels {
            account: account.to_owned(),
            pool: pool.to_owned(),
            origin: origin.to_owned(),
        };
        self.pool_origin_healthy.get_or_create(&labels).set(i64::from(healthy));
        if let Ok(mut series) = self.pool_series.lock() {
            series.insert(labels);
        }
    }

    /// Drop the `pool_origin_healthy` series of every (account, pool, origin) not in `current`.
    pub fn retain_pools<'a>(&self, current: impl IntoIterator<Item = (String, &'a str, &'a str)>) {
        let current: std::collections::HashSet<(String, &str, &str)> = current.into_iter().collect();
        let Ok(mut series) = self.pool_series.lock() else {
            return;
        };
        series.retain(|l| {
            let keep = current.contains(&(l.account.clone(), l.pool.as_str(), l.origin.as_str()));
            if !keep {
                self.pool_origin_healthy.remove(l);
            }
            keep
        });
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    /// Two tenants' pools of the same name are two series; a pool that leaves the table takes
    /// its series along.
    #[test]
    fn pool_series_carry_the_account_and_leave_with_their_pool() {
        let metrics = Metrics::new(None);
        metrics.set_pool_origin_healthy("acme", "web", "a", true);
        metrics.set_pool_origin_healthy("bob", "web", "a", false);
        let text = metrics.encode();
        assert!(text.contains(r#"{account="acme",pool="web",origin="a"} 1"#), "{text}");
        assert!(text.contains(r#"{account="bob",pool="web",origin="a"} 0"#), "{text}");
        metrics.retain_pools([]);
        assert!(!metrics.encode().contains("pool=\"web\""), "{}", metrics.encode());
    }

    /// The series of a plugin version leave /metrics when it is forgotten (unloaded).
    #[test]
    fn forgotten_plugins_leave_no_series() {
        let plugins = PluginMetrics::default();
        let metrics = Metrics::new(Some(&plugins));
        plugins.for_plugin("acme", "auth@1").record(CallResult::Ok, Some(0.001));
        let own = plugins.own("acme", "auth@1");
        assert!(own.counter_add("hits", 1));
        assert!(metrics.encode().contains("auth@1"));
        plugins.forget("acme", "auth@1");
        own.forget();
        assert!(!metrics.encode().contains("auth@1"), "{}", metrics.encode());
    }
}
