//! The CLI's HTTP client for the node API.

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use serde_json::Value;

/// Why a call to the node failed. Commands get it inside an `anyhow::Error`; look at it with
/// [`api_code`] and [`is_transient`] instead of matching message text.
#[derive(Debug)]
pub enum ClientError {
    /// The request did not get an answer (connection refused or reset, the node went away).
    Unreachable {
        /// The node's address.
        endpoint: String,
        /// What the HTTP client said.
        source: reqwest::Error,
    },
    /// A streamed answer broke off (the node went away mid-stream).
    Broke {
        /// The node's address.
        endpoint: String,
        /// What the HTTP client said.
        source: reqwest::Error,
    },
    /// A streamed answer ended without its last event (the node shut down or went away).
    Closed {
        /// The node's address.
        endpoint: String,
    },
    /// The node answered with an error.
    Api {
        /// HTTP status.
        status: u16,
        /// The API's stable error code (`lease_not_found`, `timeout`...).
        code: String,
        /// Its message.
        message: String,
    },
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Unreachable { endpoint, .. } => {
                write!(f, "cannot reach the weft node at {endpoint}")
            }
            ClientError::Closed { endpoint } => {
                write!(f, "the weft node at {endpoint} closed the stream")
            }
            ClientError::Broke { endpoint, .. } => {
                write!(f, "the stream from the weft node at {endpoint} broke off")
            }
            ClientError::Api {
                status,
                code,
                message,
            } => write!(f, "{code}: {message} (HTTP {status})"),
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Unreachable { source, .. } | ClientError::Broke { source, .. } => {
                Some(source)
            }
            ClientError::Api { .. } | ClientError::Closed { .. } => None,
        }
    }
}

/// The API error code of a failed call, if the node answered.
pub fn api_code(e: &anyhow::Error) -> Option<&str> {
    match e.downcast_ref::<ClientError>()? {
        ClientError::Api { code, .. } => Some(code),
        _ => None,
    }
}

/// Whether a failed call is worth repeating as it was: the node was unreachable, or said it
/// is unavailable for now (HTTP 502, 503, 504).
pub fn is_transient(e: &anyhow::Error) -> bool {
    match e.downcast_ref::<ClientError>() {
        Some(
            ClientError::Unreachable { .. }
            | ClientError::Broke { .. }
            | ClientError::Closed { .. },
        ) => true,
        Some(ClientError::Api { status, .. }) => matches!(status, 502..=504),
        None => false,
    }
}

/// What [`Client::download`] got.
pub struct Download {
    /// The `weft-revision` header (0 if absent).
    pub revision: i64,
    /// The `weft-backup-format` header ("" if absent).
    pub format: String,
    /// Bytes written.
    pub bytes: u64,
}

/// A client of one node.
pub struct Client {
    http: reqwest::Client,
    endpoint: String,
    token: Option<String>,
    /// A user name and password to log in with (`--user`), on the first call.
    user: Option<(String, String)>,
    /// The token the login gave.
    session: tokio::sync::OnceCell<String>,
}

impl Client {
    /// A client that trusts `tls.ca` (or the system's roots) for an https:// endpoint and
    /// presents `tls.cert` if given.
    pub fn with_tls(
        endpoint: &str,
        token: Option<String>,
        tls: &weft_tls::ClientFiles,
    ) -> Result<Self> {
        let endpoint = endpoint.trim_end_matches('/').to_string();
        let https = endpoint.starts_with("https://");
        if !https && !endpoint.starts_with("http://") {
            bail!("endpoint {endpoint:?} must start with http:// or https:// (e.g. http://127.0.0.1:2480)");
        }
        if !https && tls.is_set() {
            bail!("--cacert, --cert and --key are for an https:// endpoint, not {endpoint}");
        }
        let http = if https {
            let cfg = weft_tls::client_config(tls, &[b"http/1.1"])?;
            reqwest::Client::builder()
                .tls_backend_preconfigured(cfg)
                .build()
                .context("cannot build the HTTPS client")?
        } else {
            reqwest::Client::new()
        };
        Ok(Client {
            http,
            endpoint,
            token,
            user: None,
            session: tokio::sync::OnceCell::new(),
        })
    }

    /// Logs in as `name` with `password` (POST /v1/auth/authenticate) on the first call, and
    /// sends that user's token instead of `--token`.
    pub fn with_user(mut self, name: String, password: String) -> Self {
        self.user = Some((name, password));
        self
    }

    /// The token to send: the user's (logging in once), or the one given.
    async fn bearer(&self) -> Result<Option<&str>> {
        let Some((name, password)) = &self.user else {
            return Ok(self.token.as_deref());
        };
        let token = self
            .session
            .get_or_try_init(|| async {
                let r = self
                    .http
                    .post(format!("{}/v1/auth/authenticate", self.endpoint))
                    .json(&serde_json::json!({"name": name, "password": password}));
                let v = self.finish(r).await?;
                v["token"]
                    .as_str()
                    .map(str::to_owned)
                    .context("the node's login answer has no token")
            })
            .await?;
        Ok(Some(token))
    }

    async fn req(&self, method: reqwest::Method, path: &str) -> Result<reqwest::RequestBuilder> {
        let r = self
            .http
            .request(method, format!("{}{path}", self.endpoint));
        Ok(match self.bearer().await? {
            Some(t) => r.bearer_auth(t),
            None => r,
        })
    }

    /// Sends `r`; a response other than 2xx becomes an error with the API's code and
    /// message.
    async fn send(&self, r: reqwest::RequestBuilder) -> Result<reqwest::Response> {
        let resp = r.send().await.map_err(|source| ClientError::Unreachable {
            endpoint: self.endpoint.clone(),
            source,
        })?;
        let status = resp.status();
        if !status.is_success() {
            let body: ErrorJson = resp.json().await.unwrap_or_default();
            return Err(ClientError::Api {
                status: status.as_u16(),
                code: body.error.code.unwrap_or_else(|| "error".into()),
                message: body.error.message.unwrap_or_else(|| "no message".into()),
            }
            .into());
        }
        Ok(resp)
    }

    async fn finish(&self, r: reqwest::RequestBuilder) -> Result<Value> {
        Ok(self.send(r).await?.json().await.unwrap_or(Value::Null))
    }

    /// POST a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        self.finish(self.req(reqwest::Method::POST, path).await?.json(body))
            .await
    }

    /// POST a typed body, read a typed answer.
    pub async fn call<B: serde::Serialize, R: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<R> {
        let resp = self
            .send(self.req(reqwest::Method::POST, path).await?.json(body))
            .await?;
        resp.json()
            .await
            .with_context(|| format!("unexpected answer to {path}"))
    }

    /// GET.
    pub async fn get(&self, path: &str) -> Result<Value> {
        self.finish(self.req(reqwest::Method::GET, path).await?)
            .await
    }

    /// Streams the body of a GET to `out` (created or truncated), synced before this returns.
    /// Fails if the body is shorter or longer than its `Content-Length`.
    pub async fn download(&self, path: &str, out: &std::path::Path) -> Result<Download> {
        use tokio::io::AsyncWriteExt;
        let resp = self
            .send(self.req(reqwest::Method::GET, path).await?)
            .await?;
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let revision = header("weft-revision").parse().unwrap_or(0);
        let format = header("weft-backup-format");
        let expected = resp.content_length();
        let mut f = tokio::fs::File::create(out)
            .await
            .with_context(|| format!("cannot create {}", out.display()))?;
        let mut body = resp.bytes_stream();
        let mut bytes = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.context("the download broke off")?;
            f.write_all(&chunk)
                .await
                .with_context(|| format!("cannot write {}", out.display()))?;
            bytes += chunk.len() as u64;
        }
        if let Some(n) = expected {
            if n != bytes {
                bail!("the download ended after {bytes} of {n} bytes");
            }
        }
        f.sync_all()
            .await
            .with_context(|| format!("cannot sync {}", out.display()))?;
        Ok(Download {
            revision,
            format,
            bytes,
        })
    }

    /// Streams server-sent events, calling `f(event, data)` until it returns false or the stream
    /// ends. An `error` event becomes an error.
    pub async fn sse(&self, path: &str, mut f: impl FnMut(&str, &Value) -> bool) -> Result<()> {
        let resp = self
            .send(self.req(reqwest::Method::GET, path).await?)
            .await?;
        let mut body = resp.bytes_stream();
        let mut buf = String::new();
        while let Some(chunk) = body.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk.map_err(|source| {
                ClientError::Broke {
                    endpoint: self.endpoint.clone(),
                    source,
                }
            })?));
            while let Some(i) = buf.find("\n\n") {
                let frame: String = buf.drain(..i + 2).collect();
                let (mut ev, mut data) = (String::new(), String::new());
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        ev = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if ev.is_empty() {
                    continue;
                }
                let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                if ev == "error" {
                    let e: ErrorJson = serde_json::from_value(v).unwrap_or_default();
                    return Err(ClientError::Api {
                        status: 200,
                        code: e.error.code.unwrap_or_else(|| "error".into()),
                        message: e.error.message.unwrap_or_default(),
                    }
                    .into());
                }
                if !f(&ev, &v) {
                    return Ok(());
                }
            }
        }
        Err(ClientError::Closed {
            endpoint: self.endpoint.clone(),
        }
        .into())
    }
}

/// The node's error body: `{"error": {"code", "message", ...}}` (fields missing in a body
/// that is not one).
#[derive(Default, serde::Deserialize)]
struct ErrorJson {
    #[serde(default)]
    error: ErrorFields,
}

#[derive(Default, serde::Deserialize)]
struct ErrorFields {
    code: Option<String>,
    message: Option<String>,
}

/// The node's answer `v` read into the type the CLI expects (`what` names it in the error).
pub(crate) fn answer<T: serde::de::DeserializeOwned>(v: Value, what: &str) -> Result<T> {
    serde_json::from_value(v)
        .with_context(|| format!("the node's {what} answer is not what this weft expects"))
}
