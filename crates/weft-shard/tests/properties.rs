//! Placement properties: the specified hash, determinism, weights, movement versus the ideal,
//! the bounded-loads cap, distinct replicas, migration plans and the executor.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use weft_shard::plan::{
    plan_keys, plan_maglev, plan_ring, plan_slots, ExecOptions, Executor, Range,
};
use weft_shard::*;

fn nodes(n: usize) -> Vec<Node> {
    (0..n).map(|i| Node::new(format!("node-{i}"))).collect()
}

fn keys(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("key-{i}").into_bytes()).collect()
}

fn all(ns: &[Node]) -> Vec<Box<dyn Placement>> {
    vec![
        Box::new(Ring::new(ns, 160).unwrap()),
        Box::new(Rendezvous::new(ns).unwrap()),
        Box::new(Jump::new(ns).unwrap()),
        Box::new(Maglev::new(ns, Some(65537)).unwrap()),
        Box::new(Slots::new(ns).unwrap()),
    ]
}

#[test]
fn the_hash_is_xxh3_64() {
    // XXH3_64bits reference values (xxHash 0.8, default secret, no seed).
    assert_eq!(hash(b""), 0x2D06_8005_38D3_94C2);
    assert_eq!(hash(b"a"), 0xE6C6_32B6_1E96_4E1F);
    assert_eq!(hash(b"abc"), 0x78AF_5F94_892F_3950);
}

/// Golden placements for nodes `a`, `b`, `c` (weight 1): other implementations of the
/// documented scheme (XXH3-64; ring points "<id>#<n>", 160 per node; Maglev size 65537;
/// rendezvous seeds "<id>#0"; JumpBackHash over buckets in node order) must produce exactly
/// these.
#[test]
fn placements_are_reproducible_vectors() {
    let ns = vec![Node::new("a"), Node::new("b"), Node::new("c")];
    let ring = Ring::new(&ns, 160).unwrap();
    let maglev = Maglev::new(&ns, Some(65537)).unwrap();
    let hrw = Rendezvous::new(&ns).unwrap();
    let jump = Jump::new(&ns).unwrap();
    let gold = [
        (
            "user:1",
            0x3b57_7afd_7fed_9501u64,
            5377usize,
            "b",
            "b",
            "a",
            "a",
        ),
        ("user:2", 0x69a0_366b_760b_5c02, 7170, "c", "b", "c", "b"),
        ("user:3", 0x5e7c_378e_945d_b807, 14343, "b", "c", "a", "a"),
        ("order:42", 0x78a6_b099_db11_78c5, 14533, "c", "c", "c", "c"),
    ];
    for (key, h, slot, r, m, v, j) in gold {
        let k = key.as_bytes();
        assert_eq!(hash(k), h, "{key}");
        assert_eq!(Slots::slot(hash(k)), slot, "{key}");
        assert_eq!(
            (
                ring.locate(k),
                maglev.locate(k),
                hrw.locate(k),
                jump.locate(k)
            ),
            (r, m, v, j),
            "{key}"
        );
    }
    for k in 0..1000u64 {
        let h = hash(&k.to_le_bytes());
        assert_eq!(jump_ref(h, 10) as u32, weft_shard::jump(h, 10));
    }
    // JumpBackHash vectors (SplitMix64 generator, see the jump module docs).
    let jb: Vec<u32> = [0u64, 1, 42, 0xDEAD_BEEF, u64::MAX]
        .iter()
        .map(|&h| weft_shard::jump_back(h, 1000))
        .collect();
    assert_eq!(jb, JUMP_BACK_VECTORS);
    assert_eq!(
        weft_shard::jump_back(hash(b"abc"), 10) as usize,
        Jump::new(&nodes(10)).unwrap().locate_hash(hash(b"abc"))
    );
}

const JUMP_BACK_VECTORS: [u32; 5] = [313, 492, 166, 923, 288];

/// Growing from n to n + 1 buckets moves only keys that land on the new bucket, and the load
/// is balanced: the jump-hash guarantees, checked on JumpBackHash.
#[test]
fn jump_back_is_consistent_and_balanced() {
    for key in 0..3000u64 {
        let h = hash(&key.to_le_bytes());
        let mut prev = weft_shard::jump_back(h, 1);
        assert_eq!(prev, 0);
        for n in 2..=300u32 {
            let b = weft_shard::jump_back(h, n);
            assert!(b < n);
            assert!(
                b == prev || b == n - 1,
                "key {key}: {prev} -> {b} at n = {n}"
            );
            prev = b;
        }
    }
    for n in [7u32, 100, 1000] {
        let keys = 200 * n as u64;
        let mut count = vec![0u64; n as usize];
        for k in 0..keys {
            count[weft_shard::jump_back(hash(&k.to_le_bytes()), n) as usize] += 1;
        }
        let mean = keys as f64 / n as f64;
        let max = *count.iter().max().unwrap() as f64;
        let min = *count.iter().min().unwrap() as f64;
        // 200 keys per bucket: a binomial spread of about ±3.5 sigma (±50) at most.
        assert!(
            max / mean < 1.3 && min / mean > 0.7,
            "n = {n}: min {min}, max {max}"
        );
    }
}

/// The published reference implementation of jump hash, for comparison.
fn jump_ref(mut key: u64, num_buckets: i32) -> usize {
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < num_buckets as i64 {
        b = j;
        key = key.wrapping_mul(2862933555777941757).wrapping_add(1);
        j = ((b.wrapping_add(1)) as f64
            * ((1i64 << 31) as f64 / ((key >> 33).wrapping_add(1)) as f64)) as i64;
    }
    b as usize
}

#[test]
fn invalid_topologies_are_refused() {
    assert_eq!(Ring::new(&[], 10).unwrap_err(), ShardError::NoNodes);
    assert!(matches!(
        Ring::new(&[Node::new("a"), Node::new("a")], 10),
        Err(ShardError::DuplicateNode(_))
    ));
    assert!(matches!(
        Maglev::new(&[Node::weighted("a", 0)], None),
        Err(ShardError::ZeroWeight(_))
    ));
    assert!(matches!(
        BoundedLoads::new(&nodes(3), 10, 0.0),
        Err(ShardError::Invalid(_))
    ));
    let mut j = Jump::new(&nodes(2)).unwrap();
    assert!(matches!(j.remove("nope"), Err(ShardError::UnknownNode(_))));
    j.remove("node-0").unwrap();
    assert_eq!(
        j.remove("node-1").unwrap_err(),
        ShardError::NoNodes,
        "the last node stays"
    );
}

/// Name, before, after, and the allowed ratio of moved keys to the ideal.
type Case = (&'static str, Box<dyn Placement>, Box<dyn Placement>, f64);

fn shares(p: &dyn Placement, ks: &[Vec<u8>]) -> Vec<f64> {
    let mut c = vec![0usize; p.nodes().len()];
    for k in ks {
        c[p.locate_hash(hash(k))] += 1;
    }
    c.into_iter().map(|x| x as f64 / ks.len() as f64).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    /// Every algorithm is deterministic and gives K distinct replicas, the owner first.
    #[test]
    fn deterministic_with_distinct_replicas(n in 1usize..40, k in 1usize..6) {
        let ns = nodes(n);
        for (a, b) in all(&ns).into_iter().zip(all(&ns)) {
            for key in keys(200) {
                let h = hash(&key);
                prop_assert_eq!(a.locate_hash(h), b.locate_hash(h));
                let r = a.replicas_hash(h, k);
                prop_assert_eq!(r.len(), k.min(n), "{}", a.name());
                let mut d = r.clone();
                d.sort_unstable();
                d.dedup();
                prop_assert_eq!(d.len(), r.len(), "{} replicas not distinct", a.name());
                if a.name() != "slots" && a.name() != "maglev" {
                    prop_assert_eq!(r[0], a.locate_hash(h), "{}: owner first", a.name());
                }
            }
        }
    }

    /// Weighted algorithms give each node a share close to its weight.
    #[test]
    fn weights_are_respected(weights in proptest::collection::vec(1u32..5, 2..8)) {
        let ns: Vec<Node> = weights.iter().enumerate().map(|(i, w)| Node::weighted(format!("w{i}"), *w)).collect();
        let total: f64 = weights.iter().map(|w| *w as f64).sum();
        let ks = keys(40_000);
        let weighted: Vec<Box<dyn Placement>> = vec![
            Box::new(Ring::new(&ns, 160).unwrap()),
            Box::new(Rendezvous::new(&ns).unwrap()),
            Box::new(Maglev::new(&ns, Some(65537)).unwrap()),
            Box::new(Slots::new(&ns).unwrap()),
        ];
        for p in weighted {
            for (i, s) in shares(&*p, &ks).into_iter().enumerate() {
                let want = weights[i] as f64 / total;
                prop_assert!((s - want).abs() <= 0.25 * want + 0.01, "{}: node {i} share {s:.3}, want {want:.3}", p.name());
            }
        }
    }

    /// Adding or removing a node moves close to the ideal fraction of keys.
    #[test]
    fn movement_is_close_to_ideal(n in 3usize..30, add in any::<bool>()) {
        let old = nodes(n);
        let mut new = old.clone();
        if add { new.push(Node::new("new")); } else { new.remove(n / 2); }
        let ks = keys(20_000);
        let ideal = plan::ideal_fraction(&old, &new);
        let mut j = Jump::new(&old).unwrap();
        if add { j.add(Node::new("new")).unwrap(); } else { j.remove(&old[n / 2].id).unwrap(); }
        let j_old = Jump::new(&old).unwrap();
        let cases: Vec<Case> = vec![
            ("ring", Box::new(Ring::new(&old, 160).unwrap()), Box::new(Ring::new(&new, 160).unwrap()), 1.6),
            ("rendezvous", Box::new(Rendezvous::new(&old).unwrap()), Box::new(Rendezvous::new(&new).unwrap()), 1.3),
            ("maglev", Box::new(Maglev::new(&old, Some(65537)).unwrap()), Box::new(Maglev::new(&new, Some(65537)).unwrap()), 2.0),
            ("jump", Box::new(j_old), Box::new(j), 1.3),
        ];
        for (name, a, b, bound) in cases {
            let p = plan_keys(&*a, &*b, ks.iter().map(|k| k.as_slice()));
            prop_assert!(p.fraction_moved <= ideal * bound + 0.01, "{name}: moved {:.4} ideal {ideal:.4}", p.fraction_moved);
        }
        let s_old = Slots::new(&old).unwrap();
        let s_new = s_old.rebalance(&new).unwrap();
        let p = plan_slots(&s_old, &s_new);
        prop_assert!(p.ratio_to_ideal() <= 1.01, "slots move the minimum: {}", p.ratio_to_ideal());
    }

    /// Bounded loads never lets a node exceed ceil((1 + eps) * (total + 1) / n).
    #[test]
    fn bounded_loads_cap_is_never_exceeded(n in 2usize..20, eps in 0.05f64..1.0, count in 10usize..3000) {
        let b = BoundedLoads::new(&nodes(n), 40, eps).unwrap();
        for k in keys(count) {
            let cap = b.cap();
            let node = b.acquire(hash(&k));
            prop_assert!(b.loads()[node] <= cap, "load {} over cap {cap}", b.loads()[node]);
        }
        let max = *b.loads().iter().max().unwrap() as f64;
        prop_assert!(max <= ((1.0 + eps) * count as f64 / n as f64).ceil() + 1.0);
    }
}

#[test]
fn ring_plan_is_exact() {
    let old = Ring::new(&nodes(5), 100).unwrap();
    let new = Ring::new(&nodes(6), 100).unwrap();
    let p = plan_ring(&old, &new);
    // Every move goes to the new node, and the ranges hold exactly the keys that moved.
    assert!(p.moves.iter().all(|m| m.to == "node-5"));
    let ks = keys(20_000);
    let by_keys = plan_keys(&old, &new, ks.iter().map(|k| k.as_slice()));
    assert!(
        (p.fraction_moved - by_keys.fraction_moved).abs() < 0.02,
        "{} vs {}",
        p.fraction_moved,
        by_keys.fraction_moved
    );
    for k in ks.iter().take(2000) {
        let h = hash(k);
        let moved = old.locate(k) != new.locate(k);
        let in_range = p.moves.iter().any(|m| match m.range {
            Range::Hash { start, end } => {
                if start < end {
                    h > start && h <= end
                } else {
                    h > start || h <= end
                }
            }
            _ => false,
        });
        assert_eq!(moved, in_range);
    }
    assert!(p.ratio_to_ideal() < 1.6);
}

#[test]
fn maglev_plan_requires_equal_tables() {
    let a = Maglev::new(&nodes(5), Some(1000)).unwrap();
    let b = Maglev::new(&nodes(6), Some(5000)).unwrap();
    assert!(plan_maglev(&a, &b).is_err());
    let c = Maglev::new(&nodes(6), Some(1000)).unwrap();
    let p = plan_maglev(&a, &c).unwrap();
    assert!(p.fraction_moved > 0.0 && p.fraction_moved < 0.5);
}

#[tokio::test(start_paused = true)]
async fn executor_throttles_pauses_and_reports_progress() {
    let old = Slots::new(&nodes(3)).unwrap();
    let new = old.rebalance(&nodes(4)).unwrap();
    let plan = plan_slots(&old, &new);
    assert!(!plan.moves.is_empty());
    let n = plan.moves.len();
    let ex = Executor::new(
        &plan,
        ExecOptions {
            max_per_second: Some(10.0),
            concurrency: 2,
        },
    )
    .unwrap();
    let h = ex.handle();
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    let start = tokio::time::Instant::now();
    let run = tokio::spawn(ex.run(move |_m| {
        let d = d.clone();
        async move {
            d.fetch_add(1, Ordering::SeqCst);
            Ok::<_, String>(())
        }
    }));
    h.pause();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let paused_at = h.progress().done;
    assert!(
        paused_at <= 2,
        "paused: at most the moves already admitted ran ({paused_at})"
    );
    h.resume();
    let p = run.await.unwrap().unwrap();
    assert_eq!(p, plan::Progress { done: n, total: n });
    assert_eq!(done.load(Ordering::SeqCst), n);
    assert!(
        start.elapsed() >= Duration::from_secs_f64((n as f64 - 1.0) / 10.0),
        "throttled to 10 moves/s"
    );
    // A failing move stops the run and says which.
    let ex = Executor::new(&plan, ExecOptions::default()).unwrap();
    let e = ex
        .run(|_m| async { Err::<(), _>("disk full") })
        .await
        .unwrap_err();
    assert_eq!(e.progress.done, 0);
    assert!(e.to_string().contains("disk full"));
    assert!(Executor::new(
        &plan,
        ExecOptions {
            concurrency: 0,
            ..Default::default()
        }
    )
    .is_err());
}
