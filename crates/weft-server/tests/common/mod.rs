//! Helpers shared by the API tests.
#![allow(dead_code)]

use serde_json::Value;

/// Sends a request; the status and the JSON body (null if none).
pub async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}
