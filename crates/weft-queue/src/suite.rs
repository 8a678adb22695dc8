//! The conformance suite every [`Queue`] backend runs unchanged (`queue_tests!`): the same
//! cases, the same semantics. Times are short real times (a few hundred milliseconds), so
//! that a backend with its own clock (a NATS server) runs them too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::*;

type Q = Arc<dyn Queue>;

fn pull(max: u32, wait_ms: u64) -> Pull {
    Pull {
        consumer: "c1".into(),
        max,
        wait_ms,
    }
}

fn group(ack_wait_ms: u64, max_deliveries: u32) -> GroupConfig {
    GroupConfig {
        ack_wait_ms,
        max_deliveries,
        ..Default::default()
    }
}

fn values(d: &[Delivery]) -> Vec<String> {
    d.iter()
        .map(|d| String::from_utf8_lossy(&d.message.value).into_owned())
        .collect()
}

async fn publish_values(q: &Q, topic: &str, vals: &[&str]) -> Vec<Published> {
    let msgs = vals
        .iter()
        .map(|v| OutMessage::new(v.to_string()))
        .collect();
    q.publish(topic, msgs).await.unwrap()
}

/// Publish, pull, ack: each message is handed out once; an acked one never again; the lag
/// counts what is left.
pub async fn publish_pull_ack(q: Q) {
    q.create_topic("t", TopicConfig::default()).await.unwrap();
    q.create_group("t", "g", group(30_000, 5)).await.unwrap();
    let at = publish_values(&q, "t", &["a", "b", "c"]).await;
    assert_eq!(
        at.iter().map(|p| p.offset).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    let got = q.pull("t", "g", pull(2, 1000)).await.unwrap();
    assert_eq!(values(&got), vec!["a", "b"]);
    assert!(got.iter().all(|d| d.delivery == 1));
    for d in &got {
        q.ack("t", "g", &d.receipt).await.unwrap();
    }
    let err = q.ack("t", "g", &got[0].receipt).await.unwrap_err();
    assert_eq!(err.code(), "not_pending", "{err}");
    let info = q.describe("t").await.unwrap();
    assert_eq!(info.groups[0].lag, 1);
    assert_eq!(info.depth(), 3);
    let rest = q.pull("t", "g", pull(10, 1000)).await.unwrap();
    assert_eq!(values(&rest), vec!["c"]);
    q.ack("t", "g", &rest[0].receipt).await.unwrap();
    assert!(q.pull("t", "g", pull(10, 200)).await.unwrap().is_empty());
    assert_eq!(q.describe("t").await.unwrap().groups[0].lag, 0);
}

/// `ack_many` answers each receipt in order: the pending ones are acked, a repeated or
/// unknown one is not pending, and an unknown group fails them all.
pub async fn ack_many_answers_each_receipt(q: Q) {
    q.create_topic("t", TopicConfig::default()).await.unwrap();
    q.create_group("t", "g", group(30_000, 5)).await.unwrap();
    publish_values(&q, "t", &["a", "b", "c", "d"]).await;
    let got = q.pull("t", "g", pull(10, 1000)).await.unwrap();
    assert_eq!(values(&got), vec!["a", "b", "c", "d"]);
    let mut receipts: Vec<String> = got.iter().map(|d| d.receipt.clone()).collect();
    let none = q.ack_many("t", "nope", &receipts).await;
    assert!(
        none.iter()
            .all(|r| matches!(r, Err(e) if e.code() == "unknown_group")),
        "{none:?}"
    );
    receipts.push(receipts[1].clone());
    receipts.push("0-999-1".into());
    let res = q.ack_many("t", "g", &receipts).await;
    assert_eq!(res.len(), 6);
    assert!(res[..4].iter().all(Result::is_ok), "{res:?}");
    for r in &res[4..] {
        assert_eq!(r.as_ref().unwrap_err().code(), "not_pending", "{res:?}");
    }
    assert_eq!(q.describe("t").await.unwrap().groups[0].lag, 0);
    assert!(q.pull("t", "g", pull(10, 300)).await.unwrap().is_empty());
}

/// A key always goes to the same partition (`partition_for`), order holds per partition,
/// and a reader replays a partition from an offset or a time.
pub async fn keys_partitions_and_readers(q: Q) {
    let cfg = TopicConfig {
        partitions: 4,
        ..Default::default()
    };
    q.create_topic("k", cfg).await.unwrap();
    let mut msgs = Vec::new();
    for i in 0..40 {
        msgs.push(OutMessage::new(format!("{i}")).key(format!("key-{}", i % 5)));
    }
    let at = q.publish("k", msgs).await.unwrap();
    for (i, p) in at.iter().enumerate() {
        assert_eq!(
            p.partition,
            partition_for(format!("key-{}", i % 5).as_bytes(), 4)
        );
    }
    for p in 0..4 {
        let all = q.read("k", p, StartAt::Earliest, 100).await.unwrap();
        let n: Vec<u64> = all
            .iter()
            .map(|m| String::from_utf8_lossy(&m.value).parse().unwrap())
            .collect();
        let mut sorted = n.clone();
        sorted.sort();
        assert_eq!(n, sorted, "order is kept in partition {p}");
        for (i, m) in all.iter().enumerate() {
            assert_eq!(m.offset, i as u64);
        }
        if all.len() > 2 {
            let from = q.read("k", p, StartAt::Offset(2), 1).await.unwrap();
            assert_eq!(from[0].value, all[2].value);
        }
    }
    let later = q
        .read("k", 0, StartAt::Time(at_ms() + 60_000), 10)
        .await
        .unwrap();
    assert!(later.is_empty(), "nothing was published in the future");
    let err = q.read("k", 0, StartAt::Offset(1_000), 1).await.unwrap_err();
    assert_eq!(err.code(), "offset_out_of_range", "{err}");
    let err = q.read("k", 9, StartAt::Earliest, 1).await.unwrap_err();
    assert_eq!(err.code(), "invalid_argument", "{err}");
}

fn at_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// An unacked delivery is handed out again after the ack wait, counted; extend holds it.
pub async fn redelivery_after_ack_wait(q: Q) {
    q.create_topic("r", TopicConfig::default()).await.unwrap();
    q.create_group("r", "g", group(400, 0)).await.unwrap();
    publish_values(&q, "r", &["x"]).await;
    let first = q.pull("r", "g", pull(1, 1000)).await.unwrap();
    assert_eq!(first.len(), 1);
    // Extended twice within its wait: not handed out for ~3 waits.
    let started = Instant::now();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        q.extend("r", "g", &first[0].receipt).await.unwrap();
    }
    assert!(q.pull("r", "g", pull(1, 100)).await.unwrap().is_empty());
    let again = q.pull("r", "g", pull(1, 3000)).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "extend held it"
    );
    assert_eq!(values(&again), vec!["x"]);
    assert_eq!(again[0].delivery, 2);
    assert_ne!(again[0].receipt, first[0].receipt);
    q.ack("r", "g", &again[0].receipt).await.unwrap();
    let info = q.describe("r").await.unwrap();
    assert_eq!(info.groups[0].redeliveries, 1);
    assert_eq!(info.groups[0].lag, 0);
}

/// A nack with a delay hands the message out again after the delay, not before.
pub async fn nack_with_delay(q: Q) {
    q.create_topic("n", TopicConfig::default()).await.unwrap();
    q.create_group("n", "g", group(30_000, 0)).await.unwrap();
    publish_values(&q, "n", &["m"]).await;
    let d = q.pull("n", "g", pull(1, 1000)).await.unwrap();
    let t = Instant::now();
    q.nack(
        "n",
        "g",
        &d[0].receipt,
        Duration::from_millis(500),
        None,
        false,
    )
    .await
    .unwrap();
    assert!(q.pull("n", "g", pull(1, 100)).await.unwrap().is_empty());
    let again = q.pull("n", "g", pull(1, 3000)).await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(450),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(again[0].delivery, 2);
}

/// After max deliveries the message goes to the dead letters with the reason, the count
/// and the last error; a replay hands it to the group again; a purge empties them.
pub async fn max_deliveries_then_dead_letters(q: Q) {
    q.create_topic("d", TopicConfig::default()).await.unwrap();
    q.create_group("d", "g", group(30_000, 2)).await.unwrap();
    publish_values(&q, "d", &["poison", "fine"]).await;
    for attempt in 1..=2 {
        let got = q.pull("d", "g", pull(1, 1000)).await.unwrap();
        assert_eq!(values(&got), vec!["poison"]);
        assert_eq!(got[0].delivery, attempt);
        q.nack(
            "d",
            "g",
            &got[0].receipt,
            Duration::ZERO,
            Some(format!("boom {attempt}")),
            false,
        )
        .await
        .unwrap();
    }
    let next = q.pull("d", "g", pull(5, 1000)).await.unwrap();
    assert_eq!(values(&next), vec!["fine"], "the poison message is gone");
    let dead = q.dead_letters("d", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    let h = &dead[0].headers;
    assert_eq!(dead[0].value, "poison");
    assert_eq!(h["weft-dead-group"], "g");
    assert_eq!(h["weft-dead-deliveries"], "2");
    assert_eq!(h["weft-dead-error"], "boom 2");
    assert!(h["weft-dead-reason"].contains("max deliveries"), "{h:?}");
    assert_eq!(q.describe("d").await.unwrap().groups[0].dead, 1);
    assert_eq!(q.replay_dead("d", None).await.unwrap(), 1);
    assert!(q.dead_letters("d", 10).await.unwrap().is_empty());
    let back = q.pull("d", "g", pull(5, 1000)).await.unwrap();
    assert_eq!(values(&back), vec!["poison"]);
    // Rejected outright: dead at once.
    q.nack(
        "d",
        "g",
        &back[0].receipt,
        Duration::ZERO,
        Some("bad".into()),
        true,
    )
    .await
    .unwrap();
    let dead = q.dead_letters("d", 10).await.unwrap();
    assert!(dead[0].headers["weft-dead-reason"].contains("rejected"));
    assert_eq!(q.purge_dead("d").await.unwrap(), 1);
    assert!(q.dead_letters("d", 10).await.unwrap().is_empty());
}

/// A republish of a producer id within the window is acknowledged with the first copy's
/// position and not stored again.
pub async fn dedup_window(q: Q) {
    q.create_topic("u", TopicConfig::default()).await.unwrap();
    let a = q
        .publish("u", vec![OutMessage::new("one").id("m-1")])
        .await
        .unwrap();
    let b = q
        .publish(
            "u",
            vec![
                OutMessage::new("one again").id("m-1"),
                OutMessage::new("two").id("m-2"),
                OutMessage::new("two again").id("m-2"),
            ],
        )
        .await
        .unwrap();
    assert!(!a[0].duplicate);
    assert!(b[0].duplicate && b[0].offset == a[0].offset);
    assert!(!b[1].duplicate);
    assert!(b[2].duplicate && b[2].offset == b[1].offset);
    assert_eq!(q.describe("u").await.unwrap().depth(), 2);
}

/// A delayed message is not handed out before its time; later messages are not held up.
pub async fn delayed_delivery(q: Q) {
    q.create_topic("l", TopicConfig::default()).await.unwrap();
    q.create_group("l", "g", group(30_000, 0)).await.unwrap();
    let t = Instant::now();
    q.publish(
        "l",
        vec![
            OutMessage::new("later").delay(Duration::from_millis(600)),
            OutMessage::new("now"),
        ],
    )
    .await
    .unwrap();
    let first = q.pull("l", "g", pull(5, 1000)).await.unwrap();
    assert_eq!(values(&first), vec!["now"]);
    let second = q.pull("l", "g", pull(5, 3000)).await.unwrap();
    assert_eq!(values(&second), vec!["later"]);
    assert!(
        t.elapsed() >= Duration::from_millis(550),
        "{:?}",
        t.elapsed()
    );
}

/// In an ordered group a key's next message waits for the ack of its previous one; other
/// keys are not held up.
pub async fn ordered_per_key(q: Q) {
    q.create_topic("o", TopicConfig::default()).await.unwrap();
    let cfg = GroupConfig {
        ordered_by_key: true,
        ..group(30_000, 0)
    };
    q.create_group("o", "g", cfg).await.unwrap();
    q.publish(
        "o",
        vec![
            OutMessage::new("a1").key("a"),
            OutMessage::new("a2").key("a"),
            OutMessage::new("b1").key("b"),
            OutMessage::new("a3").key("a"),
        ],
    )
    .await
    .unwrap();
    let got = q.pull("o", "g", pull(10, 1000)).await.unwrap();
    assert_eq!(values(&got), vec!["a1", "b1"]);
    q.nack("o", "g", &got[0].receipt, Duration::ZERO, None, false)
        .await
        .unwrap();
    let again = q.pull("o", "g", pull(10, 1000)).await.unwrap();
    assert_eq!(values(&again), vec!["a1"], "a1 again, a2 still waits");
    q.ack("o", "g", &again[0].receipt).await.unwrap();
    let next = q.pull("o", "g", pull(10, 1000)).await.unwrap();
    assert_eq!(values(&next), vec!["a2"]);
    q.ack("o", "g", &next[0].receipt).await.unwrap();
    let last = q.pull("o", "g", pull(10, 1000)).await.unwrap();
    assert_eq!(values(&last), vec!["a3"]);
}

/// Groups are independent; the consumers of one group share its messages, each held by one,
/// and `max_in_flight` bounds what one consumer holds.
pub async fn groups_and_consumers(q: Q) {
    q.create_topic("g", TopicConfig::default()).await.unwrap();
    let cfg = GroupConfig {
        max_in_flight: 3,
        ..group(30_000, 0)
    };
    q.create_group("g", "one", cfg.clone()).await.unwrap();
    q.create_group("g", "two", group(30_000, 0)).await.unwrap();
    let vals: Vec<String> = (0..8).map(|i| i.to_string()).collect();
    let refs: Vec<&str> = vals.iter().map(String::as_str).collect();
    publish_values(&q, "g", &refs).await;
    let c1 = q.pull("g", "one", pull(10, 1000)).await.unwrap();
    assert_eq!(c1.len(), 3, "max_in_flight");
    let mut c2p = pull(10, 1000);
    c2p.consumer = "c2".into();
    let c2 = q.pull("g", "one", c2p).await.unwrap();
    assert_eq!(c2.len(), 3);
    let mut seen: Vec<String> = values(&c1);
    seen.extend(values(&c2));
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 6, "no message went to both consumers");
    q.ack("g", "one", &c1[0].receipt).await.unwrap();
    assert_eq!(q.pull("g", "one", pull(10, 1000)).await.unwrap().len(), 1);
    let other = q.pull("g", "two", pull(100, 1000)).await.unwrap();
    assert_eq!(values(&other), refs, "the other group gets everything");
    // Same settings again: fine; other settings: refused.
    q.create_group("g", "one", cfg).await.unwrap();
    let err = q.create_group("g", "one", group(1, 1)).await.unwrap_err();
    assert_eq!(err.code(), "invalid_argument", "{err}");
    let err = q.create_group(
        "g",
        "late",
        GroupConfig {
            start: StartAt::Latest,
            ..group(30_000, 0)
        },
    );
    err.await.unwrap();
    assert!(q.pull("g", "late", pull(10, 100)).await.unwrap().is_empty());
    publish_values(&q, "g", &["new"]).await;
    let late = q.pull("g", "late", pull(10, 1000)).await.unwrap();
    assert_eq!(values(&late), vec!["new"]);
}

/// Bad input gets a clear error and changes nothing.
pub async fn errors_say_what_is_wrong(q: Q) {
    let err = q
        .publish("nope", vec![OutMessage::new("x")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), "unknown_topic", "{err}");
    let err = q
        .create_topic("bad name!", TopicConfig::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "invalid_argument");
    assert!(err.to_string().contains("A-Z a-z 0-9"), "{err}");
    let zero = TopicConfig {
        partitions: 0,
        ..Default::default()
    };
    assert_eq!(
        q.create_topic("z", zero).await.unwrap_err().code(),
        "invalid_argument"
    );
    let small = TopicConfig {
        max_message_bytes: 10,
        ..Default::default()
    };
    q.create_topic("s", small.clone()).await.unwrap();
    q.create_topic("s", small).await.unwrap();
    let err = q
        .create_topic("s", TopicConfig::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "topic_exists");
    let err = q
        .publish(
            "s",
            vec![OutMessage::new("ok"), OutMessage::new("x".repeat(11))],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), "too_large", "{err}");
    assert_eq!(q.describe("s").await.unwrap().depth(), 0, "all or nothing");
    let err = q.pull("s", "nobody", pull(1, 0)).await.unwrap_err();
    assert_eq!(err.code(), "unknown_group", "{err}");
    q.create_group("s", "g", group(1000, 0)).await.unwrap();
    let err = q.ack("s", "g", "garbage").await.unwrap_err();
    assert_eq!(err.code(), "invalid_argument", "{err}");
    let err = q.ack("s", "g", "0-99-1").await.unwrap_err();
    assert_eq!(err.code(), "not_pending", "{err}");
    q.delete_topic("s").await.unwrap();
    assert_eq!(q.describe("s").await.unwrap_err().code(), "unknown_topic");
}

/// A full partition refuses new messages (`reject`) or drops the oldest (`drop_old`).
pub async fn limits_when_full(q: Q) {
    let reject = TopicConfig {
        max_messages: 2,
        ..Default::default()
    };
    q.create_topic("fr", reject).await.unwrap();
    publish_values(&q, "fr", &["1", "2"]).await;
    let err = q
        .publish("fr", vec![OutMessage::new("3")])
        .await
        .unwrap_err();
    assert_eq!(err.code(), "full", "{err}");
    assert!(err.is_retryable());
    let drop = TopicConfig {
        max_messages: 2,
        full: FullPolicy::DropOld,
        ..Default::default()
    };
    q.create_topic("fd", drop).await.unwrap();
    publish_values(&q, "fd", &["1", "2", "3"]).await;
    let kept = q.read("fd", 0, StartAt::Earliest, 10).await.unwrap();
    let v: Vec<_> = kept.iter().map(|m| m.value.clone()).collect();
    assert_eq!(v, vec!["2", "3"]);
    assert_eq!(kept[0].offset, 1);
}

/// Generates one test per case for a backend: `$factory` is an async closure taking the case
/// name and returning `Option<(Arc<dyn Queue>, guard)>` (`None`: backend not available).
#[macro_export]
macro_rules! queue_tests {
    ($factory:expr) => {
        $crate::queue_tests!(@case $factory;
            publish_pull_ack ack_many_answers_each_receipt keys_partitions_and_readers redelivery_after_ack_wait
            nack_with_delay max_deliveries_then_dead_letters dedup_window delayed_delivery
            ordered_per_key groups_and_consumers errors_say_what_is_wrong limits_when_full);
    };
    (@case $factory:expr; $($name:ident)*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let Some((q, _guard)) = ($factory)(stringify!($name)).await else {
                    eprintln!("backend not available: case skipped");
                    return;
                };
                $crate::suite::$name(q).await;
            }
        )*
    };
}
