//! `weft bench etcd-api`: the same etcd client (the `etcd-client` crate) against any etcd v3
//! endpoint — a real etcd or `weft up --etcd-listen` — so the two can be compared side by side.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};

/// One measured cell.
pub struct Cell {
    pub ops: u64,
    pub secs: f64,
    pub p50_us: u64,
    pub p99_us: u64,
}

impl Cell {
    pub fn per_sec(&self) -> f64 {
        self.ops as f64 / self.secs
    }
}

async fn op(
    workload: &str,
    c: &mut Client,
    task: usize,
    i: u64,
    last: &mut i64,
    store: &Option<Arc<dyn weft_store::Store>>,
) -> Result<()> {
    let value = vec![b'v'; 128];
    match workload {
        "put" => {
            c.put(format!("bench/{task}/{}", i % 1000), value, None)
                .await?;
        }
        "get" => {
            c.get(format!("bench/get/{}", i % 100), None).await?;
        }
        "txn" => {
            let key = format!("bench/cas/{task}");
            let t = Txn::new()
                .when(vec![Compare::mod_revision(
                    key.clone(),
                    CompareOp::Equal,
                    *last,
                )])
                .and_then(vec![TxnOp::put(key.clone(), value, None)])
                .or_else(vec![TxnOp::get(key, None)]);
            let r = c.txn(t).await?;
            *last = if r.succeeded() {
                r.header().map(|h| h.revision()).unwrap_or(0)
            } else {
                match r.op_responses().into_iter().next() {
                    Some(etcd_client::TxnOpResponse::Get(g)) => {
                        g.kvs().first().map(|kv| kv.mod_revision()).unwrap_or(0)
                    }
                    _ => 0,
                }
            };
        }
        "lease" => {
            let g = c.lease_grant(10, None).await?;
            let (mut k, mut s) = c.lease_keep_alive(g.id()).await?;
            k.keep_alive().await?;
            s.message().await?;
            c.lease_revoke(g.id()).await?;
        }
        "lock" => {
            let store = store.as_ref().context("lock needs a store")?;
            let session = weft_coord::Session::new(
                store.clone(),
                weft_coord::SessionOptions {
                    ttl: 30,
                    ..Default::default()
                },
            )
            .await?;
            let g = weft_coord::Mutex::new(&session, "bench")?.lock().await?;
            g.unlock().await?;
            session.close().await?;
        }
        other => anyhow::bail!("unknown workload {other:?}; allowed: put, get, txn, lease, lock"),
    }
    Ok(())
}

/// Runs `workload` with `clients` concurrent tasks for `duration`.
pub async fn run(
    endpoint: &str,
    workload: &str,
    clients: usize,
    duration: Duration,
) -> Result<Cell> {
    let mut conns = Vec::new();
    for _ in 0..clients.min(16) {
        conns.push(
            Client::connect([endpoint], None)
                .await
                .with_context(|| format!("cannot connect to {endpoint}"))?,
        );
    }
    if workload == "get" {
        for i in 0..100 {
            conns[0]
                .put(format!("bench/get/{i}"), vec![b'v'; 128], None)
                .await?;
        }
    }
    let store: Option<Arc<dyn weft_store::Store>> = if workload == "lock" {
        Some(Arc::new(
            weft_store_etcd::EtcdStore::connect(&[endpoint]).await?,
        ))
    } else {
        None
    };
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..clients {
        let mut c = conns[t % conns.len()].clone();
        let (w, store) = (workload.to_string(), store.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut last = 0i64;
            let mut i = 0u64;
            while start.elapsed() < duration {
                let t0 = Instant::now();
                op(&w, &mut c, t, i, &mut last, &store).await?;
                lat.push(t0.elapsed().as_micros() as u64);
                i += 1;
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Ok(Cell {
        ops: all.len() as u64,
        secs,
        p50_us: pct(0.5),
        p99_us: pct(0.99),
    })
}
