//! The example shop for the saga walkthrough in the README:
//!
//! ```sh
//! cargo run --example shop -- 127.0.0.1:9000     # the services
//! cargo run --release -- up                       # the node, in another terminal
//! weft saga submit crates/weft-saga/examples/order-saga.json --input '{"qty": 1, "amount": 120}' --wait
//! weft saga submit crates/weft-saga/examples/order-saga.json --input '{"qty": 1, "amount": 5000}' --wait
//! curl -s localhost:9000/ledger
//! ```
//!
//! Payments over 1000 are declined, so the second saga compensates: its order is cancelled and
//! its stock released.

#![allow(missing_docs)]

#[allow(dead_code)] // shared with the node's crash test, which uses all of it
mod service;

use std::time::Duration;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".into());
    let latency_ms: u64 = std::env::var("SHOP_LATENCY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let shop = service::Shop::new(1000, Duration::from_millis(latency_ms), 0);
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("shop listening on http://{}", listener.local_addr()?);
    axum::serve(listener, service::router(shop)).await?;
    Ok(())
}
