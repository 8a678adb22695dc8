//! The gateway's configuration: a TOML file (`[server]`, `[[route]]`, `[[upstream]]`,
//! `[[auth]]`) and/or routes stored as JSON under [`ROUTE_PREFIX`] in a store.
//!
//! Parsing is strict (unknown fields are errors) and [`Config::validate`] checks every cross
//! reference; errors name the file line (for TOML) or the field that is wrong and what is
//! allowed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

/// Key prefix of routes kept in the store (`<prefix><name>` → JSON [`RouteConfig`]).
pub const ROUTE_PREFIX: &str = "/weft/gateway/routes/";

/// A whole gateway configuration.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listener-wide settings.
    #[serde(default)]
    pub server: ServerConfig,
    /// Routes, matched most specific first (see [`crate::route`]).
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// Upstreams the routes send to.
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<UpstreamConfig>,
    /// Authentication providers the routes refer to.
    #[serde(default, rename = "auth")]
    pub auths: Vec<AuthConfig>,
}

/// Listener-wide settings.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Largest request body (bytes) unless a route says otherwise; bigger → 413.
    pub max_body_bytes: u64,
    /// A client must send its request head within this time (slowloris guard).
    pub header_read_timeout_ms: u64,
    /// Request id header: kept when the client sends a sane one, generated otherwise.
    pub request_id_header: String,
    /// Write one JSON line per request to stdout.
    pub access_log: bool,
    /// Upstream connect timeout.
    pub connect_timeout_ms: u64,
    /// Idle upstream connections kept per endpoint.
    pub pool_max_idle_per_host: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_body_bytes: 10 * 1024 * 1024,
            header_read_timeout_ms: 10_000,
            request_id_header: "x-request-id".into(),
            access_log: false,
            connect_timeout_ms: 2_000,
            pool_max_idle_per_host: 256,
        }
    }
}

/// One route: what it matches, where it goes, and what is applied on the way.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Unique name (metrics label, admin API, store key).
    pub name: String,
    /// Host names (exact, or `*.example.com`); empty: any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Exact path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Path prefix, on segment boundaries (`/api` matches `/api` and `/api/x`, not `/apix`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// Path template: `{name}` matches one segment, a final `{*name}` the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_template: Option<String>,
    /// Methods (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Headers that must be present with this value (`*`: any value).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Query parameters that must be present with this value (`*`: any value).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query: BTreeMap<String, String>,
    /// Replace the matched `path_prefix` with this (`""` strips it). For templates: the new
    /// path, where `{name}` inserts a captured parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<String>,
    /// Headers set on the upstream request.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add_headers: BTreeMap<String, String>,
    /// Headers removed from the upstream request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_headers: Vec<String>,
    /// Headers set on the response.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add_response_headers: BTreeMap<String, String>,
    /// Upstream name. With a store, a name no `[[upstream]]` defines means the discovered
    /// service of that name (round robin).
    pub upstream: String,
    /// Request deadline until the response head arrives, all retries included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryConfig>,
    /// Circuit breaker of the route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerConfig>,
    /// Name of an `[[auth]]` provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// Rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimitConfig>,
    /// CORS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors: Option<CorsConfig>,
    /// Largest request body for this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
}

/// Retries of one route.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in all (1 = no retry).
    pub attempts: u32,
    /// Timeout of each attempt (until the response head).
    pub per_try_timeout_ms: Option<u64>,
    /// Methods that may be retried (default: the idempotent ones).
    pub methods: Vec<String>,
    /// Upstream statuses that are retried (connect errors and per-try timeouts always are).
    pub on_status: Vec<u16>,
    /// Retries may be at most this share of requests (plus `budget_min_per_sec`).
    pub budget_ratio: f32,
    /// Retries always allowed per second regardless of the ratio.
    pub budget_min_per_sec: u32,
    /// Bodies up to this size are buffered so they can be sent again; larger bodies are
    /// streamed and not retried.
    pub buffer_bytes: u64,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: 2,
            per_try_timeout_ms: None,
            methods: Vec::new(),
            on_status: vec![502, 503, 504],
            budget_ratio: 0.2,
            budget_min_per_sec: 10,
            buffer_bytes: 64 * 1024,
        }
    }
}

/// Circuit breaker of one route (see `weft_resilience::circuit`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Open at this failure percentage.
    pub failure_rate: f64,
    /// Calls in the count window.
    pub window: u32,
    /// Calls needed before the rate counts.
    pub minimum_calls: u32,
    /// First open period.
    pub open_ms: u64,
    /// Longest open period (the wait doubles on every reopen).
    pub max_open_ms: u64,
    /// Probes in half-open.
    pub probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_rate: 50.0,
            window: 100,
            minimum_calls: 20,
            open_ms: 5_000,
            max_open_ms: 60_000,
            probes: 3,
        }
    }
}

/// What a rate limit counts by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RateKey {
    /// The authenticated consumer, or the client IP when there is none.
    #[default]
    Consumer,
    /// The client IP.
    Ip,
    /// The whole route.
    Route,
}

/// Rate limit of one route.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained requests per second per key.
    pub per_second: u32,
    /// Burst per key (default: `per_second`).
    #[serde(default)]
    pub burst: Option<u32>,
    /// What is counted.
    #[serde(default)]
    pub by: RateKey,
    /// Count in the store (one-second windows shared by every gateway on that store) instead of
    /// in this process.
    #[serde(default)]
    pub global: bool,
}

/// CORS policy of one route.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Allowed origins (`*` for any).
    pub origins: Vec<String>,
    /// Allowed methods.
    pub methods: Vec<String>,
    /// Allowed request headers.
    pub headers: Vec<String>,
    /// Preflight cache time.
    pub max_age_secs: u64,
    /// Allow credentials (not with `*`).
    pub credentials: bool,
}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig {
            origins: vec!["*".into()],
            methods: vec!["GET".into(), "POST".into(), "PUT".into(), "DELETE".into()],
            headers: vec!["authorization".into(), "content-type".into()],
            max_age_secs: 600,
            credentials: false,
        }
    }
}

/// Load-balancing algorithm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Weighted round robin.
    #[default]
    RoundRobin,
    /// Power of two choices on (in-flight + 1) × EWMA latency.
    LeastRequest,
    /// Consistent-hash ring (160 virtual nodes per weight unit) on `hash_on`.
    RingHash,
    /// Maglev on `hash_on`.
    Maglev,
    /// Weighted random.
    Random,
}

/// Protocol to the upstream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 over cleartext (prior knowledge).
    H2c,
}

/// A static endpoint.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// host:port.
    pub address: String,
    /// Relative weight (>= 1).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// An upstream: where requests go.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Unique name.
    pub name: String,
    /// Static endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointConfig>,
    /// Or: a service discovered in the store (weft-coord registry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Only discovered instances carrying all these tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Discovery protection: if the discovered set shrinks below this percentage of the
    /// served set in one change, keep serving the old set (guards against a registry glitch
    /// emptying the upstream; outlier ejection then handles the dead ones). 0 (default) off.
    #[serde(default)]
    pub protection_percent: u32,
    /// Algorithm.
    #[serde(default)]
    pub balance: Balance,
    /// For ring_hash / maglev: `header:NAME`, `cookie:NAME`, `path` or `ip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_on: Option<String>,
    /// Protocol to the endpoints.
    #[serde(default)]
    pub protocol: Protocol,
    /// Active health checks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckConfig>,
    /// Passive outlier ejection.
    #[serde(default)]
    pub outlier: OutlierConfig,
    /// Speak TLS (`https`) to the endpoints: HTTP/1.1, or HTTP/2 by ALPN with
    /// `protocol = "h2c"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTls>,
}

/// TLS to an upstream's endpoints.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamTls {
    /// Trust only this CA (PEM); default: the system's roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca: Option<std::path::PathBuf>,
    /// A client certificate (PEM) to present; with `key`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<std::path::PathBuf>,
    /// The name sent by SNI and checked against the certificate (default: the endpoint's
    /// host).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// Accept any certificate without verifying it (anyone on the path can then read and
    /// change the traffic). For tests only: a warning is logged whenever the upstream is built.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
}

/// Kind of active check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// `GET path` must answer 2xx/3xx.
    #[default]
    Http,
    /// A TCP connect must succeed.
    Tcp,
}

/// Active health checking of every endpoint of an upstream.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    /// HTTP or TCP.
    pub kind: CheckKind,
    /// Path for HTTP checks.
    pub path: String,
    /// Time between checks.
    pub interval_ms: u64,
    /// Per-check timeout.
    pub timeout_ms: u64,
    /// Consecutive successes to become healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures to become unhealthy.
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            kind: CheckKind::Http,
            path: "/health".into(),
            interval_ms: 5_000,
            timeout_ms: 1_000,
            healthy_threshold: 2,
            unhealthy_threshold: 3,
        }
    }
}

/// Passive outlier ejection (as Envoy's): consecutive failures eject an endpoint for a time
/// that grows with each ejection.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierConfig {
    /// Consecutive 5xx or connect errors that eject (0 disables ejection).
    pub consecutive_failures: u32,
    /// Ejection time = base × number of ejections so far, capped by `max_ejection_ms`.
    pub base_ejection_ms: u64,
    /// Longest ejection.
    pub max_ejection_ms: u64,
    /// At most this share of endpoints is ejected at once (at least one may always be).
    pub max_ejection_percent: u32,
    /// When fewer than this share of endpoints is usable, use all of them (panic mode: better
    /// some errors than refusing everything). 0 disables.
    pub panic_threshold_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            base_ejection_ms: 30_000,
            max_ejection_ms: 300_000,
            max_ejection_percent: 50,
            panic_threshold_percent: 50,
        }
    }
}

/// An authentication provider.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "serde_json::Value")]
pub struct AuthConfig {
    /// Name routes refer to.
    pub name: String,
    /// Method and its settings.
    #[serde(flatten)]
    pub method: AuthMethod,
}

impl TryFrom<serde_json::Value> for AuthConfig {
    type Error = String;

    // `flatten` cannot be combined with `deny_unknown_fields`; split the name off by hand so
    // misspelt fields are still errors.
    fn try_from(v: serde_json::Value) -> Result<Self, String> {
        let serde_json::Value::Object(mut m) = v else {
            return Err("an auth provider is a table".into());
        };
        let name = match m.remove("name") {
            Some(serde_json::Value::String(s)) => s,
            Some(_) => return Err("auth `name` must be a string".into()),
            None => return Err("missing field `name`".into()),
        };
        let method = serde_json::from_value(serde_json::Value::Object(m))
            .map_err(|e| format!("auth {name:?}: {e} (kind is api_key, basic or jwt)"))?;
        Ok(AuthConfig { name, method })
    }
}

/// Authentication methods.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthMethod {
    /// A key in a header (or `?query` parameter) mapped to a consumer.
    ApiKey {
        /// Header carrying the key.
        #[serde(default = "api_key_header")]
        header: String,
        /// Query parameter carrying the key, if allowed.
        #[serde(default)]
        query: Option<String>,
        /// key → consumer.
        keys: BTreeMap<String, String>,
    },
    /// HTTP basic: user → password; the user is the consumer.
    Basic {
        /// user → password.
        users: BTreeMap<String, String>,
        /// Realm in the challenge.
        #[serde(default = "realm")]
        realm: String,
    },
    /// A bearer JWT.
    Jwt {
        /// Accepted algorithms (HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA);
        /// a token whose header names another one is rejected.
        algorithms: Vec<String>,
        /// Shared secret (HS*).
        #[serde(default)]
        secret: Option<String>,
        /// PEM public key file (RS*, PS*, ES*, EdDSA).
        #[serde(default)]
        public_key_file: Option<String>,
        /// JWKS file (keys picked by `kid`).
        #[serde(default)]
        jwks_file: Option<String>,
        /// Required `iss`.
        #[serde(default)]
        issuer: Option<String>,
        /// Accepted `aud` values.
        #[serde(default)]
        audience: Vec<String>,
        /// Claim naming the consumer.
        #[serde(default = "sub")]
        consumer_claim: String,
        /// Clock skew allowed on exp/nbf.
        #[serde(default = "leeway")]
        leeway_secs: u64,
    },
}

fn api_key_header() -> String {
    "x-api-key".into()
}
fn realm() -> String {
    "weft".into()
}
fn sub() -> String {
    "sub".into()
}
fn leeway() -> u64 {
    30
}

impl Config {
    /// Parses TOML without checking values (`Config::from_toml`, in `load.rs`, checks them).
    pub(crate) fn parse_toml(src: &str, origin: &str) -> Result<Config, ConfigError> {
        toml::from_str(src).map_err(|e| {
            let line = e
                .span()
                .map(|s| src[..s.start.min(src.len())].matches('\n').count() + 1);
            ConfigError::Parse {
                origin: origin.to_string(),
                line,
                message: e.message().to_string(),
            }
        })
    }

    /// Checks every value and cross reference that needs no runtime object (auth providers'
    /// keys are read and checked by `load.rs`).
    pub(crate) fn check_shape(
        &self,
        src: Option<&str>,
        origin: &str,
        implicit_services: bool,
    ) -> Result<(), ConfigError> {
        let at = |table: &str, i: usize, field: &str, message: String| {
            located(src, origin, table, i, field, message)
        };
        let mut names = std::collections::HashSet::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            if !names.insert(u.name.as_str()) {
                return Err(at(
                    "upstream",
                    i,
                    "name",
                    format!("duplicate upstream {:?}", u.name),
                ));
            }
            validate_upstream(u).map_err(|(f, m)| at("upstream", i, f, m))?;
        }
        let mut auths = std::collections::HashSet::new();
        for (i, a) in self.auths.iter().enumerate() {
            if !auths.insert(a.name.as_str()) {
                return Err(at(
                    "auth",
                    i,
                    "name",
                    format!("duplicate auth {:?}", a.name),
                ));
            }
        }
        let mut routes = std::collections::HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            if !routes.insert(r.name.as_str()) {
                return Err(at(
                    "route",
                    i,
                    "name",
                    format!("duplicate route {:?}", r.name),
                ));
            }
            validate_route(r).map_err(|(f, m)| at("route", i, f, m))?;
            self.check_route_refs(r, implicit_services)
                .map_err(|(f, m)| at("route", i, f, m))?;
        }
        Ok(())
    }

    /// Checks one more route (e.g. one kept in the store) against this configuration's
    /// upstreams and auth providers, without re-validating the rest (which reads key files).
    pub fn validate_extra_route(
        &self,
        r: &RouteConfig,
        origin: &str,
        implicit_services: bool,
    ) -> Result<(), ConfigError> {
        validate_route(r)
            .and_then(|()| self.check_route_refs(r, implicit_services))
            .map_err(|(f, m)| ConfigError::Invalid {
                origin: origin.to_string(),
                line: None,
                path: format!("route[0].{f}"),
                message: m,
            })
    }

    /// The route's upstream and auth exist (or the upstream is an implicit service).
    fn check_route_refs(&self, r: &RouteConfig, implicit_services: bool) -> Result<(), FieldError> {
        if !implicit_services && !self.upstreams.iter().any(|u| u.name == r.upstream) {
            let known: Vec<&str> = self.upstreams.iter().map(|u| u.name.as_str()).collect();
            return Err((
                "upstream",
                format!(
                    "upstream {:?} is not defined (defined: {})",
                    r.upstream,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
        if let Some(a) = &r.auth {
            if !self.auths.iter().any(|x| &x.name == a) {
                return Err(("auth", format!("auth {a:?} is not defined")));
            }
        }
        Ok(())
    }
}

/// An error at field `field` of the `i`-th `[[table]]`, with its line when `src` is known.
pub(crate) fn located(
    src: Option<&str>,
    origin: &str,
    table: &str,
    i: usize,
    field: &str,
    message: String,
) -> ConfigError {
    ConfigError::Invalid {
        origin: origin.to_string(),
        line: src.and_then(|s| table_line(s, table, i)),
        path: format!("{table}[{i}].{field}"),
        message,
    }
}

/// Line of the `i`-th `[[table]]` header in `src`.
fn table_line(src: &str, table: &str, i: usize) -> Option<usize> {
    let header = format!("[[{table}]]");
    src.lines()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with(&header))
        .nth(i)
        .map(|(n, _)| n + 1)
}

fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "{what} name {name:?} must be 1-128 characters of A-Z a-z 0-9 - _ ."
        ));
    }
    Ok(())
}

pub(crate) type FieldError = (&'static str, String);

/// Checks one route on its own (no cross references).
pub fn validate_route(r: &RouteConfig) -> Result<(), FieldError> {
    check_name("route", &r.name).map_err(|m| ("name", m))?;
    let paths = [&r.path, &r.path_prefix, &r.path_template]
        .iter()
        .filter(|p| p.is_some())
        .count();
    if paths > 1 {
        return Err((
            "path",
            "give at most one of path, path_prefix, path_template".into(),
        ));
    }
    for (field, p) in [
        ("path", &r.path),
        ("path_prefix", &r.path_prefix),
        ("path_template", &r.path_template),
    ] {
        if let Some(p) = p {
            if !p.starts_with('/') {
                return Err((field, format!("{p:?} must start with '/'")));
            }
        }
    }
    if let Some(t) = &r.path_template {
        crate::template::Template::parse(t).map_err(|m| ("path_template", m))?;
    }
    if r.rewrite.is_some() && r.path_prefix.is_none() && r.path_template.is_none() {
        return Err((
            "rewrite",
            "rewrite needs path_prefix or path_template".into(),
        ));
    }
    if let (Some(rw), Some(t)) = (&r.rewrite, &r.path_template) {
        let t = crate::template::Template::parse(t).map_err(|m| ("path_template", m))?;
        t.check_rewrite(rw).map_err(|m| ("rewrite", m))?;
    }
    for m in &r.methods {
        http::Method::from_bytes(m.as_bytes())
            .map_err(|_| ("methods", format!("{m:?} is not an HTTP method")))?;
    }
    for h in r
        .headers
        .keys()
        .chain(r.add_headers.keys())
        .chain(&r.remove_headers)
    {
        http::HeaderName::from_bytes(h.as_bytes())
            .map_err(|_| ("headers", format!("{h:?} is not a valid header name")))?;
    }
    for (h, v) in r.add_headers.iter().chain(&r.add_response_headers) {
        http::HeaderName::from_bytes(h.as_bytes())
            .map_err(|_| ("add_headers", format!("{h:?} is not a valid header name")))?;
        http::HeaderValue::from_str(v)
            .map_err(|_| ("add_headers", format!("{v:?} is not a valid header value")))?;
    }
    if r.upstream.is_empty() {
        return Err(("upstream", "an upstream is required".into()));
    }
    if r.timeout_ms == Some(0) {
        return Err(("timeout_ms", "must be > 0 (omit it for no deadline)".into()));
    }
    if let Some(rt) = &r.retry {
        if rt.attempts == 0 || rt.attempts > 10 {
            return Err((
                "retry.attempts",
                format!("{} must be within 1..=10", rt.attempts),
            ));
        }
        if !(0.0..=1000.0).contains(&rt.budget_ratio) {
            return Err(("retry.budget_ratio", "must be within 0..=1000".into()));
        }
        if rt.per_try_timeout_ms == Some(0) {
            return Err(("retry.per_try_timeout_ms", "must be > 0".into()));
        }
        for m in &rt.methods {
            http::Method::from_bytes(m.as_bytes())
                .map_err(|_| ("retry.methods", format!("{m:?} is not an HTTP method")))?;
        }
        for s in &rt.on_status {
            if !(100..=599).contains(s) {
                return Err(("retry.on_status", format!("{s} is not an HTTP status")));
            }
        }
    }
    if let Some(b) = &r.breaker {
        breaker_settings(b)
            .validate()
            .map_err(|e| ("breaker", e.to_string()))?;
    }
    if let Some(rl) = &r.rate_limit {
        if rl.per_second == 0 || rl.burst == Some(0) {
            return Err(("rate_limit", "per_second and burst must be >= 1".into()));
        }
    }
    if let Some(c) = &r.cors {
        if c.credentials && c.origins.iter().any(|o| o == "*") {
            return Err((
                "cors.credentials",
                "credentials cannot be allowed for origin \"*\"; list the origins".into(),
            ));
        }
    }
    Ok(())
}

fn validate_upstream(u: &UpstreamConfig) -> Result<(), FieldError> {
    check_name("upstream", &u.name).map_err(|m| ("name", m))?;
    match (&u.service, u.endpoints.is_empty()) {
        (Some(_), false) => {
            return Err((
                "service",
                "give either endpoints or service, not both".into(),
            ))
        }
        (None, true) => return Err(("endpoints", "give endpoints or a service".into())),
        _ => {}
    }
    for e in &u.endpoints {
        parse_authority(&e.address).map_err(|m| ("endpoints.address", m))?;
        if e.weight == 0 {
            return Err((
                "endpoints.weight",
                format!("{}: weight must be >= 1", e.address),
            ));
        }
    }
    if let Some(s) = &u.service {
        check_name("service", s).map_err(|m| ("service", m))?;
    }
    if matches!(u.balance, Balance::RingHash | Balance::Maglev) {
        let h = u
            .hash_on
            .as_deref()
            .ok_or(("hash_on", "ring_hash and maglev need hash_on".to_string()))?;
        HashOn::parse(h).map_err(|m| ("hash_on", m))?;
    } else if u.hash_on.is_some() {
        return Err((
            "hash_on",
            "hash_on is only used by balance = \"ring_hash\" or \"maglev\"".into(),
        ));
    }
    if let Some(h) = &u.health_check {
        if h.interval_ms == 0 || h.timeout_ms == 0 {
            return Err((
                "health_check",
                "interval_ms and timeout_ms must be > 0".into(),
            ));
        }
        if h.healthy_threshold == 0 || h.unhealthy_threshold == 0 {
            return Err(("health_check", "thresholds must be >= 1".into()));
        }
        if h.kind == CheckKind::Http && !h.path.starts_with('/') {
            return Err(("health_check.path", "must start with '/'".into()));
        }
    }
    if u.protection_percent > 100 {
        return Err(("protection_percent", "must be within 0..=100".into()));
    }
    if let Some(t) = &u.tls {
        if t.cert.is_some() != t.key.is_some() {
            return Err(("tls", "cert and key go together".into()));
        }
        if t.insecure_skip_verify && t.ca.is_some() {
            return Err((
                "tls.insecure_skip_verify",
                "nothing is verified with insecure_skip_verify: drop ca, or drop this".into(),
            ));
        }
        if t.server_name
            .as_deref()
            .is_some_and(|n| n.is_empty() || n.contains(['/', ' ', ':']))
        {
            return Err((
                "tls.server_name",
                "must be a DNS name or an IP address".into(),
            ));
        }
    }
    let o = &u.outlier;
    if o.max_ejection_percent > 100 || o.panic_threshold_percent > 100 {
        return Err(("outlier", "percentages must be within 0..=100".into()));
    }
    if o.consecutive_failures > 0
        && (o.base_ejection_ms == 0 || o.max_ejection_ms < o.base_ejection_ms)
    {
        return Err((
            "outlier",
            "base_ejection_ms must be > 0 and <= max_ejection_ms".into(),
        ));
    }
    Ok(())
}

/// What a hashing balancer hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashOn {
    /// A request header.
    Header(http::HeaderName),
    /// A cookie.
    Cookie(String),
    /// The request path.
    Path,
    /// The client IP.
    Ip,
}

impl HashOn {
    /// Parses `header:NAME`, `cookie:NAME`, `path` or `ip`.
    pub fn parse(s: &str) -> Result<HashOn, String> {
        if let Some(h) = s.strip_prefix("header:") {
            return http::HeaderName::from_bytes(h.as_bytes())
                .map(HashOn::Header)
                .map_err(|_| format!("{h:?} is not a header name"));
        }
        if let Some(c) = s.strip_prefix("cookie:") {
            if c.is_empty() {
                return Err("cookie name is empty".into());
            }
            return Ok(HashOn::Cookie(c.to_string()));
        }
        match s {
            "path" => Ok(HashOn::Path),
            "ip" => Ok(HashOn::Ip),
            _ => Err(format!(
                "{s:?}: expected header:NAME, cookie:NAME, path or ip"
            )),
        }
    }
}

/// Parses `host:port` (an `http://` prefix and a trailing `/` are accepted).
pub fn parse_authority(addr: &str) -> Result<http::uri::Authority, String> {
    let a = addr
        .strip_prefix("http://")
        .unwrap_or(addr)
        .trim_end_matches('/');
    if addr.starts_with("https://") {
        return Err(format!(
            "{addr:?}: TLS to upstreams is not supported; use host:port"
        ));
    }
    let auth: http::uri::Authority = a
        .parse()
        .map_err(|_| format!("{addr:?} is not host:port"))?;
    if auth.port_u16().is_none() {
        return Err(format!("{addr:?} needs a port (host:port)"));
    }
    Ok(auth)
}

/// A route's breaker settings as the breaker takes them (a plain value: validated here,
/// built by the proxy).
pub fn breaker_settings(b: &BreakerConfig) -> weft_resilience::circuit::Config {
    weft_resilience::circuit::Config {
        window: weft_resilience::circuit::WindowKind::Count { size: b.window },
        failure_rate_threshold: b.failure_rate,
        minimum_calls: b.minimum_calls,
        wait_in_open: std::time::Duration::from_millis(b.open_ms),
        backoff_multiplier: 2.0,
        max_wait_in_open: std::time::Duration::from_millis(b.max_open_ms.max(b.open_ms)),
        half_open_probes: b.probes,
        probe_timeout: std::time::Duration::from_secs(30),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(src: &str) -> String {
        Config::from_toml(src, "gw.toml").unwrap_err().to_string()
    }

    const UP: &str = "[[upstream]]\nname = \"u\"\nendpoints = [{ address = \"127.0.0.1:9000\" }]\n";

    #[test]
    fn errors_point_at_the_line_and_field() {
        assert_eq!(
            err("[server]\nmax_body_bytes = \"big\"\n"),
            "gw.toml:2: invalid type: string \"big\", expected u64"
        );
        let e = err("[[route]]\nname = \"r\"\nupstream = \"u\"\ncolour = 1\n");
        assert!(e.starts_with("gw.toml:4: unknown field `colour`"), "{e}");
        let e = err(&format!("{UP}\n[[route]]\nname = \"a\"\nupstream = \"u\"\n\n[[route]]\nname = \"b\"\nupstream = \"u\"\nmethods = [\"GE T\"]\n"));
        assert_eq!(
            e,
            "gw.toml:9: route[1].methods: \"GE T\" is not an HTTP method"
        );
        let e = err("[[upstream]]\nname = \"u\"\nendpoints = [{ address = \"nohost\" }]\n");
        assert_eq!(
            e,
            "gw.toml:1: upstream[0].endpoints.address: \"nohost\" needs a port (host:port)"
        );
        let e = err(&format!(
            "{UP}[[route]]\nname = \"r\"\nupstream = \"u\"\npath = \"/a\"\npath_prefix = \"/b\"\n"
        ));
        assert!(e.contains("route[0].path: give at most one of"), "{e}");
        let e = err("[[upstream]]\nname = \"u\"\nendpoints = [{ address = \"127.0.0.1:1\" }]\nbalance = \"maglev\"\n");
        assert!(
            e.contains("upstream[0].hash_on: ring_hash and maglev need hash_on"),
            "{e}"
        );
        let e = err("[[upstream]]\nname = \"u\"\nendpoints = [{ address = \"127.0.0.1:1\" }]\nbalance = \"fastest\"\n");
        assert!(e.contains("unknown variant `fastest`"), "{e}");
        let e = err(&format!(
            "{UP}[[route]]\nname = \"r\"\nupstream = \"u\"\nauth = \"nobody\"\n"
        ));
        assert!(
            e.contains("route[0].auth: auth \"nobody\" is not defined"),
            "{e}"
        );
        let e = err(&format!(
            "{UP}[[auth]]\nname = \"k\"\nkind = \"api_key\"\nkeys = {{ short = \"x\" }}\n"
        ));
        assert!(
            e.contains("auth[0].keys: key sho… is shorter than 16 characters"),
            "{e}"
        );
        let e = err(&format!("{UP}[[auth]]\nname = \"k\"\nkind = \"magic\"\n"));
        assert!(e.contains("unknown variant `magic`"), "{e}");
        let e = err(&format!("{UP}[[auth]]\nname = \"k\"\nkind = \"basic\"\nusers = {{ a = \"b\" }}\nrealmm = \"x\"\n"));
        assert!(e.contains("unknown field `realmm`"), "{e}");
        let e = err(&format!(
            "{UP}[[route]]\nname = \"r\"\nupstream = \"u\"\nretry = {{ attempts = 0 }}\n"
        ));
        assert!(
            e.contains("route[0].retry.attempts: 0 must be within 1..=10"),
            "{e}"
        );
        let e = err(&format!(
            "{UP}[[route]]\nname = \"r\"\nupstream = \"u\"\nbreaker = {{ failure_rate = 150.0 }}\n"
        ));
        assert!(e.contains("route[0].breaker:"), "{e}");
        let e = err(&format!("{UP}{UP}"));
        assert!(
            e.contains("gw.toml:4: upstream[1].name: duplicate upstream \"u\""),
            "{e}"
        );
    }

    #[test]
    fn routes_round_trip_through_json() {
        let cfg = Config::from_toml(
            &format!("{UP}[[route]]\nname = \"r\"\npath_template = \"/a/{{id}}\"\nrewrite = \"/b/{{id}}\"\nupstream = \"u\"\nretry = {{ attempts = 3 }}\n"),
            "t",
        )
        .unwrap();
        let json = serde_json::to_string(&cfg.routes[0]).unwrap();
        let back: RouteConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cfg.routes[0]);
        assert_eq!(back.retry.as_ref().unwrap().on_status, vec![502, 503, 504]);
    }
}
