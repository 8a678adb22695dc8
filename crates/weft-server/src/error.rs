//! API errors: JSON bodies with a stable code, a message and whether a retry can help.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use weft_auth::AuthError;
use weft_coord::CoordError;
use weft_saga::SagaError;
use weft_store::StoreError;

/// An error as the API returns it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The store refused or failed the operation.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request was malformed (bad JSON, bad encoding, unknown field, ...).
    #[error("{0}")]
    BadRequest(String),
    /// The request body is larger than allowed.
    #[error("{0}")]
    TooLarge(String),
    /// A coordination recipe failed.
    #[error(transparent)]
    Coord(weft_coord::CoordError),
    /// Missing or wrong bearer token.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// A saga operation failed.
    #[error(transparent)]
    Saga(weft_saga::SagaError),
    /// A queue operation failed.
    #[error(transparent)]
    Queue(#[from] weft_queue::QueueError),
    /// A feature this node does not run.
    #[error("{0}")]
    Unavailable(String),
    /// The named thing (a gateway, ...) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A process the node asked on the caller's behalf (a gateway's admin API) did not answer.
    #[error("{0}")]
    BadGateway(String),
    /// The client sent more requests a second than `--max-requests-per-client` allows.
    #[error("{0}")]
    RateLimited(String),
    /// Users, roles and permissions: refused (permission denied, wrong password) or invalid.
    #[error(transparent)]
    Auth(weft_auth::AuthError),
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    code: &'a str,
    message: String,
    retryable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    compact_revision: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<String>,
}

impl ApiError {
    /// HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Queue(e) => crate::queue::status(e),
            ApiError::Auth(e) => auth_status(e),
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Saga(e) => match e {
                SagaError::Invalid(_) | SagaError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
                SagaError::NotFound(_) => StatusCode::NOT_FOUND,
                SagaError::Conflict { .. } | SagaError::NotOwner(_) => StatusCode::CONFLICT,
                SagaError::Store(e) => ApiError::Store(e.clone()).status(),
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            ApiError::Coord(e) => match e {
                CoordError::Store(e) => ApiError::Store(e.clone()).status(),
                CoordError::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
                CoordError::InvalidArgument(_) => StatusCode::BAD_REQUEST,
                CoordError::Decode { .. } => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::CONFLICT,
            },
            ApiError::Store(e) => match e {
                StoreError::Compacted { .. } => StatusCode::GONE,
                StoreError::FutureRevision { .. }
                | StoreError::InvalidArgument(_)
                | StoreError::TooManyOps { .. }
                | StoreError::DuplicateKey
                | StoreError::LeaseTtlTooLarge { .. } => StatusCode::BAD_REQUEST,
                StoreError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                StoreError::LeaseNotFound(_) => StatusCode::NOT_FOUND,
                StoreError::LeaseExists(_) => StatusCode::CONFLICT,
                StoreError::Unavailable(_) | StoreError::Closed => StatusCode::SERVICE_UNAVAILABLE,
                StoreError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
                StoreError::NotPrimary(_) => StatusCode::MISDIRECTED_REQUEST,
                StoreError::Unconfirmed { .. } => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Store(e) => e.code(),
            ApiError::Coord(e) => match e {
                CoordError::Store(e) => e.code(),
                CoordError::SessionLost(_) => "session_lost",
                CoordError::OwnershipLost(_) => "ownership_lost",
                CoordError::WouldBlock(_) => "would_block",
                CoordError::Timeout(_) => "timeout",
                CoordError::AlreadyHeld(_) => "already_held",
                CoordError::InvalidArgument(_) => "invalid_argument",
                _ => "internal",
            },
            ApiError::BadRequest(_) => "bad_request",
            ApiError::TooLarge(_) => "too_large",
            ApiError::Unauthorized => "unauthorized",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::NotFound(_) => "not_found",
            ApiError::BadGateway(_) => "bad_gateway",
            ApiError::Queue(e) => e.code(),
            ApiError::Auth(e) => auth_code(e),
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::Saga(e) => match e {
                SagaError::Invalid(_) => "invalid_definition",
                SagaError::InvalidArgument(_) => "bad_request",
                SagaError::NotFound(_) => "saga_not_found",
                SagaError::Conflict { .. } => "conflict",
                SagaError::NotOwner(_) => "not_owner",
                SagaError::Store(e) => e.code(),
                _ => "internal",
            },
        }
    }

    /// The JSON body of this error.
    pub fn to_json(&self) -> serde_json::Value {
        let compact_revision = match self {
            ApiError::Store(StoreError::Compacted {
                compact_revision, ..
            }) => Some(*compact_revision),
            _ => None,
        };
        let retryable = match self {
            ApiError::Store(e) => e.is_retryable(),
            ApiError::Coord(e) => e.is_retryable(),
            ApiError::Saga(e) => e.is_retryable(),
            ApiError::Queue(e) => e.is_retryable(),
            ApiError::BadGateway(_) | ApiError::RateLimited(_) => true,
            ApiError::Auth(e) => e.is_retryable(),
            _ => false,
        };
        let step = match self {
            ApiError::Saga(SagaError::Invalid(d)) => d.step.clone(),
            _ => None,
        };
        serde_json::to_value(Body {
            error: Detail {
                code: self.code(),
                message: self.to_string(),
                retryable,
                compact_revision,
                step,
            },
        })
        .unwrap_or_default()
    }
}

fn auth_status(e: &AuthError) -> StatusCode {
    match e {
        AuthError::PermissionDenied => StatusCode::FORBIDDEN,
        AuthError::AuthFailed | AuthError::InvalidAuthToken => StatusCode::UNAUTHORIZED,
        AuthError::UserNotFound | AuthError::RoleNotFound => StatusCode::NOT_FOUND,
        AuthError::UserEmpty
        | AuthError::RoleEmpty
        | AuthError::PermissionNotGiven
        | AuthError::InvalidAuthMgmt => StatusCode::BAD_REQUEST,
        AuthError::Io { .. } | AuthError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        AuthError::Corrupt { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::CONFLICT,
    }
}

fn auth_code(e: &AuthError) -> &'static str {
    match e {
        AuthError::PermissionDenied => "permission_denied",
        AuthError::AuthFailed => "auth_failed",
        AuthError::InvalidAuthToken => "unauthorized",
        AuthError::UserNotFound => "user_not_found",
        AuthError::RoleNotFound => "role_not_found",
        AuthError::UserAlreadyExist => "user_exists",
        AuthError::RoleAlreadyExist => "role_exists",
        AuthError::RootUserNotExist => "no_root_user",
        AuthError::RootRoleNotExist => "no_root_role",
        AuthError::RoleNotGranted => "role_not_granted",
        AuthError::PermissionNotGranted => "permission_not_granted",
        AuthError::AuthNotEnabled => "auth_not_enabled",
        AuthError::Io { .. } | AuthError::Store(_) => "unavailable",
        AuthError::Corrupt { .. } => "internal",
        _ => "bad_request",
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::Auth(e)
    }
}

impl From<SagaError> for ApiError {
    fn from(e: SagaError) -> Self {
        match e {
            SagaError::Store(s) => ApiError::Store(s),
            other => ApiError::Saga(other),
        }
    }
}

impl From<CoordError> for ApiError {
    fn from(e: CoordError) -> Self {
        match e {
            CoordError::Store(s) => ApiError::Store(s),
            other => ApiError::Coord(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status(), Json(self.to_json())).into_response()
    }
}
