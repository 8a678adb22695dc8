//! The embedded backend's own contract: restarts, torn tails, damage, a locked dir,
//! retention with segment removal and checkpoints.

use std::time::Duration;

use weft_queue::embedded::{EmbeddedQueue, Options};
use weft_queue::{GroupConfig, OutMessage, Pull, Queue, StartAt, TopicConfig};

fn pull(max: u32) -> Pull {
    Pull {
        consumer: "c".into(),
        max,
        wait_ms: 500,
    }
}

fn values(d: &[weft_queue::Delivery]) -> Vec<String> {
    d.iter()
        .map(|d| String::from_utf8_lossy(&d.message.value).into_owned())
        .collect()
}

#[tokio::test]
async fn a_restart_keeps_acks_nacks_dead_letters_and_ids() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = EmbeddedQueue::open(dir.path(), Options::default())
            .await
            .unwrap();
        q.create_topic("t", TopicConfig::default()).await.unwrap();
        let g = GroupConfig {
            max_deliveries: 2,
            ..Default::default()
        };
        q.create_group("t", "g", g).await.unwrap();
        let msgs = (0..6)
            .map(|i| OutMessage::new(format!("m{i}")).id(format!("id-{i}")))
            .collect();
        q.publish("t", msgs).await.unwrap();
        let got = q.pull("t", "g", pull(6)).await.unwrap();
        assert_eq!(got.len(), 6);
        // m0, m2 acked; m1 nacked for an hour; m3 dead; m4, m5 left in flight.
        q.ack("t", "g", &got[0].receipt).await.unwrap();
        q.ack("t", "g", &got[2].receipt).await.unwrap();
        q.nack(
            "t",
            "g",
            &got[1].receipt,
            Duration::from_secs(3600),
            Some("later".into()),
            false,
        )
        .await
        .unwrap();
        q.nack(
            "t",
            "g",
            &got[3].receipt,
            Duration::ZERO,
            Some("bad".into()),
            true,
        )
        .await
        .unwrap();
        q.close().await;
    }
    let q = EmbeddedQueue::open(dir.path(), Options::default())
        .await
        .unwrap();
    let again = q.pull("t", "g", pull(10)).await.unwrap();
    assert_eq!(
        values(&again),
        vec!["m4", "m5"],
        "unacked ones come back, in order"
    );
    assert!(
        again.iter().all(|d| d.delivery == 2),
        "delivery counts survive"
    );
    let info = q.describe("t").await.unwrap();
    assert_eq!(info.groups[0].delayed, 1, "m1's nack delay survives");
    let dead = q.dead_letters("t", 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].value, "m3");
    assert_eq!(dead[0].headers["weft-dead-error"], "bad");
    let dup = q
        .publish("t", vec![OutMessage::new("m0 again").id("id-0")])
        .await
        .unwrap();
    assert!(dup[0].duplicate, "producer ids survive");
    assert_eq!(dup[0].offset, 0);
}

#[tokio::test]
async fn a_torn_tail_is_cut_and_damage_elsewhere_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = EmbeddedQueue::open(dir.path(), Options::default())
            .await
            .unwrap();
        q.create_topic("t", TopicConfig::default()).await.unwrap();
        q.publish("t", vec![OutMessage::new("kept")]).await.unwrap();
        q.close().await;
    }
    let seg = dir.path().join("log").join(format!("{:020}.seg", 0));
    let data = std::fs::read(&seg).unwrap();
    let end = data.iter().rposition(|b| *b != 0).unwrap() + 1;
    // A half-written record at the end.
    let mut torn = data[..end].to_vec();
    torn.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3, 4, 9, 9]);
    std::fs::write(&seg, &torn).unwrap();
    {
        let q = EmbeddedQueue::open(dir.path(), Options::default())
            .await
            .unwrap();
        let m = q.read("t", 0, StartAt::Earliest, 10).await.unwrap();
        assert_eq!(m.len(), 1);
        q.publish("t", vec![OutMessage::new("after")])
            .await
            .unwrap();
        assert_eq!(
            q.read("t", 0, StartAt::Earliest, 10).await.unwrap().len(),
            2
        );
        q.close().await;
    }
    // A flipped byte in the first record, with data after it: refused, with file and offset.
    let mut bad = std::fs::read(&seg).unwrap();
    bad[12] ^= 0xff;
    std::fs::write(&seg, &bad).unwrap();
    let err = EmbeddedQueue::open(dir.path(), Options::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "corrupt", "{err}");
    assert!(
        err.to_string()
            .contains("00000000000000000000.seg at offset 0"),
        "{err}"
    );
}

#[tokio::test]
async fn a_dir_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _q = EmbeddedQueue::open(dir.path(), Options::default())
        .await
        .unwrap();
    let err = EmbeddedQueue::open(dir.path(), Options::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), "locked", "{err}");
    assert!(
        err.to_string().contains(&std::process::id().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn retention_removes_old_segments_and_a_restart_reads_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        segment_bytes: 8 * 1024,
        maintenance_every: Duration::from_secs(3600),
        ..Default::default()
    };
    let cfg = TopicConfig {
        max_messages: 20,
        full: weft_queue::FullPolicy::DropOld,
        ..Default::default()
    };
    {
        let q = EmbeddedQueue::open(dir.path(), opts.clone()).await.unwrap();
        q.create_topic("t", cfg.clone()).await.unwrap();
        q.create_group("t", "g", GroupConfig::default())
            .await
            .unwrap();
        for i in 0..200 {
            q.publish("t", vec![OutMessage::new(format!("{i:0>500}"))])
                .await
                .unwrap();
        }
        let segs = || std::fs::read_dir(dir.path().join("log")).unwrap().count();
        let before = segs();
        assert!(before > 5, "{before} segments");
        q.maintain().await.unwrap();
        let after = segs();
        assert!(after <= 3, "{before} segments, {after} after retention");
        assert!(dir.path().join("checkpoint.json").exists());
        // Written after the checkpoint: replayed on top of it.
        let got = q.pull("t", "g", pull(5)).await.unwrap();
        assert_eq!(got[0].message.offset, 180);
        q.ack("t", "g", &got[0].receipt).await.unwrap();
        q.close().await;
    }
    let q = EmbeddedQueue::open(dir.path(), opts).await.unwrap();
    let info = q.describe("t").await.unwrap();
    assert_eq!(
        (info.partitions[0].start, info.partitions[0].end),
        (180, 200)
    );
    assert_eq!(info.groups[0].lag, 19);
    let got = q.pull("t", "g", pull(1)).await.unwrap();
    assert_eq!(got[0].message.offset, 181);
    assert_eq!(got[0].message.value, format!("{:0>500}", 181));
}

#[tokio::test]
async fn age_retention_drops_old_messages() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options {
        maintenance_every: Duration::from_secs(3600),
        ..Default::default()
    };
    let q = EmbeddedQueue::open(dir.path(), opts).await.unwrap();
    let cfg = TopicConfig {
        max_age_ms: 300,
        ..Default::default()
    };
    q.create_topic("t", cfg).await.unwrap();
    q.publish("t", vec![OutMessage::new("old")]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    q.publish("t", vec![OutMessage::new("new")]).await.unwrap();
    q.maintain().await.unwrap();
    let kept = q.read("t", 0, StartAt::Earliest, 10).await.unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].value, "new");
}

/// Damaged logs of every kind (flipped bytes, cut lengths, garbage after valid records) are
/// recovered or refused with a clear error, never a panic; what opens can be read.
#[tokio::test]
async fn damaged_logs_open_or_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    {
        let q = EmbeddedQueue::open(dir.path(), Options::default())
            .await
            .unwrap();
        q.create_topic(
            "t",
            TopicConfig {
                partitions: 3,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        q.create_group("t", "g", GroupConfig::default())
            .await
            .unwrap();
        for i in 0..20 {
            q.publish(
                "t",
                vec![OutMessage::new(format!("m{i}"))
                    .key(format!("{i}"))
                    .id(format!("{i}"))],
            )
            .await
            .unwrap();
        }
        let got = q.pull("t", "g", pull(5)).await.unwrap();
        q.ack("t", "g", &got[0].receipt).await.unwrap();
        q.close().await;
    }
    let seg = dir.path().join("log").join(format!("{:020}.seg", 0));
    let good = std::fs::read(&seg).unwrap();
    let end = good.iter().rposition(|b| *b != 0).unwrap() + 1;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut opened, mut refused) = (0, 0);
    for round in 0..200 {
        let case = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(case.path().join("log")).unwrap();
        let mut data = good[..end].to_vec();
        match round % 3 {
            0 => {
                let i = next() as usize % data.len();
                data[i] ^= 1 << (next() % 8);
            }
            1 => data.truncate(next() as usize % data.len()),
            _ => data.extend((0..(next() % 64)).map(|_| next() as u8)),
        }
        std::fs::write(
            case.path().join("log").join(format!("{:020}.seg", 0)),
            &data,
        )
        .unwrap();
        match EmbeddedQueue::open(case.path(), Options::default()).await {
            Ok(q) => {
                opened += 1;
                for t in q.topics().await.unwrap() {
                    for p in &t.partitions {
                        let _ = q.read(&t.name, p.partition, StartAt::Earliest, 100).await;
                    }
                }
            }
            Err(e) => {
                refused += 1;
                let msg = e.to_string();
                assert!(msg.contains(".seg") || msg.contains("checkpoint"), "{msg}");
            }
        }
    }
    assert!(
        opened > 0 && refused > 0,
        "{opened} opened, {refused} refused"
    );
}
