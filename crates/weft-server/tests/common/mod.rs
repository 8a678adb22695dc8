//! Helpers shared by the API tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use weft_server::{run, ServerConfig};

/// Sends a request; the status and the JSON body (null if none).
pub async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// A node's HTTP API on the embedded store in a temp dir, served on a loopback port.
pub struct Node {
    pub base: String,
    pub http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: tempfile::TempDir,
}

/// Starts a node with `cfg`.
pub async fn node(cfg: ServerConfig) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let store = weft_store::embedded::Embedded::open(dir.path(), Default::default())
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(run(listener, Arc::new(store), cfg, async {
        let _ = rx.await;
    }));
    Node {
        base,
        http: reqwest::Client::new(),
        stop: Some(tx),
        task,
        _dir: dir,
    }
}

impl Node {
    /// GET with an optional bearer token.
    pub async fn get_as(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut r = self.http.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        send(r).await
    }
    /// POST JSON with an optional bearer token.
    pub async fn post_as(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        let mut r = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        send(r).await
    }
    /// POST JSON.
    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        send(self.http.post(format!("{}{path}", self.base)).json(&body)).await
    }
    /// POST raw bytes as JSON.
    pub async fn raw(&self, path: &str, body: &'static str) -> (u16, Value) {
        let req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body);
        send(req).await
    }
    /// Stops it gracefully (watch streams end) within 10 s.
    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("graceful shutdown")
            .unwrap()
            .unwrap();
    }
}
