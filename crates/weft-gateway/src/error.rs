//! Errors of the gateway crate.

use std::fmt;

/// A configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The text is not valid TOML / JSON for the schema.
    #[error("{origin}{}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Parse {
        /// File name or store key.
        origin: String,
        /// 1-based line, when known.
        line: Option<usize>,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range or a reference is dangling.
    #[error("{origin}{}: {path}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        /// File name or store key.
        origin: String,
        /// 1-based line of the table holding the field, when known.
        line: Option<usize>,
        /// Field path, e.g. `route[2].upstream`.
        path: String,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// A file the configuration names cannot be read.
    #[error("{path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        message: String,
    },
}

/// Errors of the gateway's runtime and admin operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] weft_store::StoreError),
    /// A listener or socket failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl GatewayError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            GatewayError::Config(_) => false,
            GatewayError::Store(e) => e.is_retryable(),
            GatewayError::Io(_) => true,
        }
    }
}

/// Why the gateway answered instead of the upstream; sent as `x-weft-reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// No route matched (404).
    NoRoute,
    /// Method not allowed by CORS preflight or malformed request (400).
    BadRequest,
    /// Body too large (413).
    BodyTooLarge,
    /// Authentication missing or wrong (401).
    Unauthorized,
    /// Rate limit (429).
    RateLimited,
    /// The route's breaker is open (503).
    BreakerOpen,
    /// No usable endpoint (503).
    NoHealthyUpstream,
    /// Connecting to the upstream failed (502).
    ConnectError,
    /// The upstream broke the exchange (502).
    UpstreamError,
    /// The per-try timeout passed (504).
    UpstreamTimeout,
    /// The request deadline passed (504).
    Deadline,
    /// The global rate limit store failed (503).
    LimiterUnavailable,
}

impl Reason {
    /// Header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::NoRoute => "no-route",
            Reason::BadRequest => "bad-request",
            Reason::BodyTooLarge => "body-too-large",
            Reason::Unauthorized => "unauthorized",
            Reason::RateLimited => "rate-limited",
            Reason::BreakerOpen => "breaker-open",
            Reason::NoHealthyUpstream => "no-healthy-upstream",
            Reason::ConnectError => "connect-error",
            Reason::UpstreamError => "upstream-error",
            Reason::UpstreamTimeout => "upstream-timeout",
            Reason::Deadline => "deadline",
            Reason::LimiterUnavailable => "limiter-unavailable",
        }
    }

    /// Status code.
    pub fn status(self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            Reason::NoRoute => S::NOT_FOUND,
            Reason::BadRequest => S::BAD_REQUEST,
            Reason::BodyTooLarge => S::PAYLOAD_TOO_LARGE,
            Reason::Unauthorized => S::UNAUTHORIZED,
            Reason::RateLimited => S::TOO_MANY_REQUESTS,
            Reason::BreakerOpen | Reason::NoHealthyUpstream | Reason::LimiterUnavailable => {
                S::SERVICE_UNAVAILABLE
            }
            Reason::ConnectError | Reason::UpstreamError => S::BAD_GATEWAY,
            Reason::UpstreamTimeout | Reason::Deadline => S::GATEWAY_TIMEOUT,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
