//! The example shop: order, stock, payment and shipping services in one small HTTP server, for
//! the saga example and the node's crash tests. Each call is idempotent per saga and step (the
//! orchestrator's idempotency key), a compensation that comes before its action is recorded
//! so the late action does nothing, and `GET /ledger` shows the books.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};

/// The books of the shop.
#[derive(Default, Serialize, Clone, Debug)]
pub struct Ledger {
    /// Saga → "created" or "cancelled".
    pub orders: BTreeMap<String, String>,
    /// Saga → units held.
    pub held: BTreeMap<String, u64>,
    /// Saga → amount charged.
    pub charged: BTreeMap<String, u64>,
    /// Sagas shipped.
    pub shipped: BTreeSet<String>,
    /// Compensations that came before their action (saga/step).
    pub undone_first: BTreeSet<String>,
    /// Calls served, by path.
    pub calls: BTreeMap<String, u64>,
}

/// The shop's settings and books.
pub struct Shop {
    /// Charges above this are declined (402, a final failure).
    pub credit_limit: u64,
    /// Every call waits this long (so that sagas are in flight for a while).
    pub latency: Duration,
    /// Every n-th call answers 503 first (0: never), to exercise retries.
    pub fail_every: u64,
    ledger: Mutex<Ledger>,
}

impl Shop {
    /// A shop.
    pub fn new(credit_limit: u64, latency: Duration, fail_every: u64) -> Arc<Shop> {
        Arc::new(Shop {
            credit_limit,
            latency,
            fail_every,
            ledger: Mutex::default(),
        })
    }

    /// A copy of the books.
    pub fn ledger(&self) -> Ledger {
        self.ledger.lock().unwrap().clone()
    }
}

type Answer = (StatusCode, Json<Value>);

fn saga_of(h: &HeaderMap) -> Option<String> {
    h.get("weft-saga-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Runs one call: counts it, waits, maybe fails with 503, then applies `f` to the ledger.
async fn serve(
    shop: &Shop,
    path: &str,
    h: &HeaderMap,
    f: impl FnOnce(&mut Ledger, &str) -> Answer,
) -> Answer {
    let Some(saga) = saga_of(h) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "no weft-saga-id header"})),
        );
    };
    let n = {
        let mut l = shop.ledger.lock().unwrap();
        let c = l.calls.entry(path.to_string()).or_default();
        *c += 1;
        *c
    };
    tokio::time::sleep(shop.latency).await;
    if shop.fail_every > 0 && n % shop.fail_every == 0 {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "try again"})),
        );
    }
    let mut l = shop.ledger.lock().unwrap();
    f(&mut l, &saga)
}

fn ok(v: Value) -> Answer {
    (StatusCode::OK, Json(v))
}

/// An action, unless its compensation came first.
fn action(l: &mut Ledger, saga: &str, step: &str, apply: impl FnOnce(&mut Ledger)) -> Answer {
    if l.undone_first.contains(&format!("{saga}/{step}")) {
        return ok(json!({"refused": "compensated before it came"}));
    }
    apply(l);
    ok(json!({"ok": true}))
}

/// A compensation; `undo` says whether there was anything to undo.
fn compensation(
    l: &mut Ledger,
    saga: &str,
    step: &str,
    undo: impl FnOnce(&mut Ledger) -> bool,
) -> Answer {
    if !undo(l) {
        l.undone_first.insert(format!("{saga}/{step}"));
    }
    ok(json!({"ok": true}))
}

fn input(body: &Value, field: &str, default: u64) -> u64 {
    body["input"][field].as_u64().unwrap_or(default)
}

/// The shop's routes.
pub fn router(shop: Arc<Shop>) -> Router {
    Router::new()
        .route(
            "/orders/create",
            post(|State(s): State<Arc<Shop>>, h: HeaderMap| async move {
                serve(&s, "/orders/create", &h, |l, g| {
                    action(l, g, "order", |l| {
                        l.orders.entry(g.to_string()).or_insert_with(|| "created".into());
                    })
                })
                .await
            }),
        )
        .route(
            "/orders/cancel",
            post(|State(s): State<Arc<Shop>>, h: HeaderMap| async move {
                serve(&s, "/orders/cancel", &h, |l, g| {
                    compensation(l, g, "order", |l| match l.orders.get_mut(g) {
                        Some(st) => {
                            *st = "cancelled".into();
                            true
                        }
                        None => false,
                    })
                })
                .await
            }),
        )
        .route(
            "/stock/reserve",
            post(|State(s): State<Arc<Shop>>, h: HeaderMap, Json(b): Json<Value>| async move {
                serve(&s, "/stock/reserve", &h, |l, g| {
                    let qty = input(&b, "qty", 1);
                    action(l, g, "stock", |l| {
                        l.held.insert(g.to_string(), qty);
                    })
                })
                .await
            }),
        )
        .route(
            "/stock/release",
            post(|State(s): State<Arc<Shop>>, h: HeaderMap| async move {
                serve(&s, "/stock/release", &h, |l, g| {
                    compensation(l, g, "stock", |l| l.held.remove(g).is_some())
                })
                .await
            }),
        )
        .route(
            "/payments/charge",
            post(|State(s): State<Arc<Shop>>, h: HeaderMap, Json(b): Json<Value>| async move {
                let limit = s.credit_limit;
                serve(&s, "/payments/charge", &h, |l, g| {
                    let amount = input(&b, "amount", 0);
                    if amount > limit {
                        return (
                            StatusCode::PAYMENT_REQUIRED,
                            Json(json!({"error": format!("declined: {amount} is over the limit of {limit}")})),
                        );
                    }
                    action(l, g, "payment", |l| {
                        l.charged.insert(g.to_string(), amount);
                    })
                })
                .await
            }),
        )
        .route(
            "/payments/refund",
            post(|State(s): State<Arc<Shop>>, h: HeaderMap| async move {
                serve(&s, "/payments/refund", &h, |l, g| {
                    compensation(l, g, "payment", |l| l.charged.remove(g).is_some())
                })
                .await
            }),
        )
        .route(
            "/shipping/ship",
            post(|State(s): State<Arc<Shop>>, h: HeaderMap| async move {
                serve(&s, "/shipping/ship", &h, |l, g| {
                    l.shipped.insert(g.to_string());
                    ok(json!({"tracking": format!("T-{g}")}))
                })
                .await
            }),
        )
        .route(
            "/ledger",
            get(|State(s): State<Arc<Shop>>| async move { Json(s.ledger()) }),
        )
        .with_state(shop)
}

/// What the books say about one saga: `Some(true)` committed (ordered, held, charged,
/// shipped), `Some(false)` fully compensated (nothing held, nothing charged, not shipped, no
/// live order), `None` anything else (unbalanced).
pub fn outcome(l: &Ledger, saga: &str) -> Option<bool> {
    let order = l.orders.get(saga).map(String::as_str);
    let (held, charged, shipped) = (
        l.held.contains_key(saga),
        l.charged.contains_key(saga),
        l.shipped.contains(saga),
    );
    match (order, held, charged, shipped) {
        (Some("created"), true, true, true) => Some(true),
        (None | Some("cancelled"), false, false, false) => Some(false),
        _ => None,
    }
}

/// The saga definition of the example against a shop at `base` (`http://host:port`).
pub fn order_saga(base: &str) -> Value {
    let call = |path: &str| json!({"http": {"url": format!("{base}{path}")}});
    let retry = json!({"max_attempts": 8, "backoff_ms": 20, "max_backoff_ms": 1000});
    let mut def = json!({
        "name": "order",
        "steps": [
            {"name": "create_order", "action": call("/orders/create"),
             "compensation": call("/orders/cancel")},
            {"name": "reserve_stock", "after": ["create_order"], "action": call("/stock/reserve"),
             "compensation": call("/stock/release")},
            {"name": "charge_payment", "after": ["create_order"], "action": call("/payments/charge"),
             "compensation": call("/payments/refund")},
            {"name": "ship", "after": ["reserve_stock", "charge_payment"],
             "action": call("/shipping/ship"), "no_compensation": true}
        ]
    });
    for s in def["steps"].as_array_mut().into_iter().flatten() {
        s["retry"] = retry.clone();
    }
    def
}
