//! The API over HTTPS: requests with a trusted CA, plain HTTP refused, client certificates
//! required when configured, an SSE watch over TLS, and certificates replaced while a
//! connection stays open.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use weft_server::ServerConfig;
use weft_tls::testing::Pki;
use weft_tls::{Acceptor, ClientFiles, ServerFiles};

fn https(files: &ClientFiles) -> reqwest::Client {
    let cfg = weft_tls::client_config(files, &[b"http/1.1"]).unwrap();
    reqwest::Client::builder()
        .tls_backend_preconfigured(cfg)
        .build()
        .unwrap()
}

fn trust(pki: &Pki) -> ClientFiles {
    ClientFiles {
        ca: Some(pki.ca_cert.clone()),
        ..Default::default()
    }
}

async fn tls_node(acceptor: Arc<Acceptor>) -> (common::Node, String) {
    let node = common::node(ServerConfig {
        tls: Some(acceptor),
        ..Default::default()
    })
    .await;
    let base = node.base.replace("http://127.0.0.1", "https://localhost");
    (node, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_https_and_refuses_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let files = ServerFiles {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
        client_ca: None,
    };
    let (node, base) = tls_node(Acceptor::load(files, &[b"http/1.1"]).unwrap()).await;
    let c = https(&trust(&pki));
    let (s, v) = common::send(
        c.post(format!("{base}/v1/kv/put"))
            .json(&json!({"key": "a", "value": "1"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = common::send(
        c.post(format!("{base}/v1/kv/range"))
            .json(&json!({"key": "a"})),
    )
    .await;
    assert_eq!((s, v["kvs"][0]["value"].as_str()), (200, Some("1")), "{v}");
    // Plain HTTP on the TLS port gets no answer.
    let plain = reqwest::Client::new()
        .get(format!("{}/health", node.base))
        .send()
        .await;
    assert!(plain.is_err(), "{plain:?}");
    // A client that does not trust the CA is refused.
    let other = Pki::named(dir.path(), "other CA", "localhost").unwrap();
    assert!(https(&trust(&other))
        .get(format!("{base}/health"))
        .send()
        .await
        .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_required_when_configured() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let files = ServerFiles {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
        client_ca: Some(pki.ca_cert.clone()),
    };
    let (_node, base) = tls_node(Acceptor::load(files, &[b"http/1.1"]).unwrap()).await;
    let without = https(&trust(&pki))
        .get(format!("{base}/health"))
        .send()
        .await;
    assert!(without.is_err(), "{without:?}");
    let with = https(&ClientFiles {
        cert: Some(pki.client_cert.clone()),
        key: Some(pki.client_key.clone()),
        ..trust(&pki)
    });
    let (s, v) = common::send(with.get(format!("{base}/health"))).await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_stays_open_while_the_certificate_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let first = Pki::new(dir.path()).unwrap();
    let second = Pki::named(dir.path(), "second CA", "localhost").unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::copy(&first.server_cert, &cert).unwrap();
    std::fs::copy(&first.server_key, &key).unwrap();
    let acceptor = Acceptor::load(
        ServerFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: None,
        },
        &[b"http/1.1"],
    )
    .unwrap();
    let _w = acceptor.watch(Duration::from_millis(50));
    let (_node, base) = tls_node(acceptor).await;
    let old = https(&trust(&first));
    let mut watch = old
        .get(format!("{base}/v1/watch?key=w&prefix=true"))
        .send()
        .await
        .unwrap();
    assert_eq!(watch.status(), 200);
    std::fs::copy(&second.server_cert, &cert).unwrap();
    std::fs::copy(&second.server_key, &key).unwrap();
    let new = https(&trust(&second));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while new.get(format!("{base}/health")).send().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (s, _) = common::send(
        new.post(format!("{base}/v1/kv/put"))
            .json(&json!({"key": "w1", "value": "x"})),
    )
    .await;
    assert_eq!(s, 200);
    // The watch opened under the old certificate still delivers.
    let mut seen = String::new();
    while !seen.contains("w1") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), watch.chunk())
            .await
            .expect("the watch went quiet")
            .unwrap()
            .expect("the watch ended");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// One client address holds at most `max_conns_per_client` connections, plain or TLS: one
/// more is closed at accept (and counted); a slot comes back when a connection ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_client_are_limited() {
    use tokio::io::AsyncReadExt;
    let node = common::node(ServerConfig {
        max_conns_per_client: 2,
        ..Default::default()
    })
    .await;
    let addr = node.base.trim_start_matches("http://").to_string();
    let mut held = vec![
        tokio::net::TcpStream::connect(&addr).await.unwrap(),
        tokio::net::TcpStream::connect(&addr).await.unwrap(),
    ];
    let closed_at_once = |mut s: tokio::net::TcpStream| async move {
        let mut b = [0u8; 8];
        matches!(
            tokio::time::timeout(Duration::from_millis(500), s.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    };
    let third = tokio::net::TcpStream::connect(&addr).await.unwrap();
    assert!(closed_at_once(third).await, "a third connection is closed");
    drop(held.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let again = tokio::net::TcpStream::connect(&addr).await.unwrap();
        if !closed_at_once(again).await {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no slot came back");
    }
    drop(held);
    // Requests work, and the refusal was counted.
    let (s, text) = {
        let r = reqwest::Client::new()
            .get(format!("{}/metrics", node.base))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(s, 200);
    assert!(
        text.contains(
            "weft_connections_refused_total{listener=\"api\",reason=\"per_client_limit\"}"
        ),
        "{text}"
    );
}

/// With client certificates and users, a call without a token runs as the user the
/// certificate's common name names (`weft-client`), with that user's permissions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_names_its_user() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let files = ServerFiles {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
        client_ca: Some(pki.ca_cert.clone()),
    };
    let auth = Arc::new(weft_auth::Auth::in_memory(Default::default()));
    auth.user_add("root", Some("pw")).await.unwrap();
    auth.user_grant_role("root", "root").await.unwrap();
    auth.role_add("app").await.unwrap();
    let perm = weft_auth::Permission {
        kind: weft_auth::PermKind::ReadWrite,
        key: b"app/".to_vec(),
        range_end: b"app0".to_vec(),
    };
    auth.role_grant_permission("app", perm).await.unwrap();
    auth.user_add("weft-client", None).await.unwrap();
    auth.user_grant_role("weft-client", "app").await.unwrap();
    auth.enable().await.unwrap();
    let node = common::node(ServerConfig {
        tls: Some(Acceptor::load(files, &[b"http/1.1"]).unwrap()),
        auth: Some(auth.clone()),
        ..Default::default()
    })
    .await;
    let base = node.base.replace("http://127.0.0.1", "https://localhost");
    let c = https(&ClientFiles {
        cert: Some(pki.client_cert.clone()),
        key: Some(pki.client_key.clone()),
        ..trust(&pki)
    });
    let put = |k: &str| {
        c.post(format!("{base}/v1/kv/put"))
            .json(&json!({"key": k, "value": "v"}))
    };
    let (s, v) = common::send(put("app/x")).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = common::send(put("other")).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (403, Some("permission_denied")),
        "{v}"
    );
    // A user's token wins over the certificate.
    let token = auth.authenticate("root", "pw").await.unwrap();
    let (s, v) = common::send(put("other").bearer_auth(&token)).await;
    assert_eq!(s, 200, "{v}");
}
