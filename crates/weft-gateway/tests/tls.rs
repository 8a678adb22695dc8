//! TLS termination: HTTP/1.1 and HTTP/2 (by ALPN) over TLS to a plain upstream, certificates
//! chosen by SNI, client certificates, and the admin API over TLS.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use weft_tls::testing::Pki;
use weft_tls::{Acceptor, ClientFiles, ServerFiles, SniFiles};

type Tls = weft_tls::tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn tls_connect(
    addr: SocketAddr,
    host: &str,
    files: &ClientFiles,
    alpn: &[&[u8]],
) -> std::io::Result<Tls> {
    let cfg = weft_tls::client_config(files, alpn).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    weft_tls::tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(weft_tls::server_name(host).unwrap(), tcp)
        .await
}

/// One GET over a TLS connection, HTTP/1.1 or HTTP/2 as ALPN settled: status and body.
async fn get_over(tls: Tls, host: &str, path: &str) -> (u16, serde_json::Value) {
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let req = http::Request::get(format!("https://{host}{path}"))
        .header("host", host)
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = if h2 {
        let (mut s, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        s.send_request(req).await.unwrap()
    } else {
        let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        s.send_request(req).await.unwrap()
    };
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

fn trust(pki: &Pki) -> ClientFiles {
    ClientFiles {
        ca: Some(pki.ca_cert.clone()),
        ..Default::default()
    }
}

/// A gateway with `tls` on one worker: its address and the stop sender.
async fn start(
    toml: &str,
    tls: Arc<Acceptor>,
) -> (
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let cfg = weft_gateway::Config::from_toml(toml, "t.toml").unwrap();
    let gw = weft_gateway::Gateway::new(cfg, None).unwrap();
    let listeners = weft_gateway::bind_workers("127.0.0.1:0".parse().unwrap(), 1).unwrap();
    let addr = listeners[0].local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let opts = weft_gateway::ThreadOptions::default().tls(Some(tls));
    let task = tokio::spawn(weft_gateway::serve_threads_with(
        listeners,
        gw,
        async move {
            let _ = rx.await;
        },
        opts,
    ));
    (addr, tx, task)
}

#[tokio::test]
async fn terminates_tls_for_http1_and_http2_and_picks_certificates_by_sni() {
    let up = TestUpstream::start("plain").await;
    let dir = tempfile::tempdir().unwrap();
    let default = Pki::new(dir.path()).unwrap();
    let api = Pki::named(dir.path(), "api CA", "api.test").unwrap();
    let files = ServerFiles {
        cert: default.server_cert.clone(),
        key: default.server_key.clone(),
        client_ca: None,
    };
    let sni = vec![SniFiles {
        names: vec!["api.test".into()],
        cert: api.server_cert.clone(),
        key: api.server_key.clone(),
    }];
    let tls = Acceptor::load_sni(files, sni, &[b"h2", b"http/1.1"]).unwrap();
    let (addr, stop, task) = start(&single_route(up.addr, "path_prefix = \"/\""), tls).await;
    for (host, pki) in [("localhost", &default), ("api.test", &api)] {
        for alpn in [&b"http/1.1"[..], b"h2"] {
            let c = tls_connect(addr, host, &trust(pki), &[alpn]).await.unwrap();
            assert_eq!(c.get_ref().1.alpn_protocol(), Some(alpn));
            let (status, j) = get_over(c, host, "/hello").await;
            assert_eq!(status, 200, "{host} {alpn:?}: {j}");
            assert_eq!(j["path"], "/hello");
            assert_eq!(j["server"], "plain");
            assert_eq!(j["headers"]["x-forwarded-proto"], "https");
        }
    }
    // The default certificate is not the one api.test asked for.
    assert!(tls_connect(addr, "api.test", &trust(&default), &[])
        .await
        .is_err());
    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        client().get(format!("http://{addr}/hello").parse().unwrap()),
    )
    .await
    .expect("a plain request is not left hanging");
    assert!(plain.is_err(), "{plain:?}");
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn client_certificates_are_required_when_configured() {
    let up = TestUpstream::start("plain").await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let files = ServerFiles {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
        client_ca: Some(pki.ca_cert.clone()),
    };
    let tls = Acceptor::load(files, &[b"http/1.1"]).unwrap();
    let (addr, stop, task) = start(&single_route(up.addr, "path_prefix = \"/\""), tls).await;
    let with = ClientFiles {
        cert: Some(pki.client_cert.clone()),
        key: Some(pki.client_key.clone()),
        ..trust(&pki)
    };
    let c = tls_connect(addr, "localhost", &with, &[]).await.unwrap();
    assert_eq!(get_over(c, "localhost", "/x").await.0, 200);
    // Without one: the handshake or the first exchange fails; no answer comes back.
    let refused = match tls_connect(addr, "localhost", &trust(&pki), &[]).await {
        Err(_) => true,
        Ok(c) => {
            let req = http::Request::get("/x")
                .header("host", "localhost")
                .body(Empty::<Bytes>::new())
                .unwrap();
            match hyper::client::conn::http1::handshake(TokioIo::new(c)).await {
                Err(_) => true,
                Ok((mut s, conn)) => {
                    tokio::spawn(conn);
                    s.send_request(req).await.is_err()
                }
            }
        }
    };
    assert!(refused);
    let _ = stop.send(());
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn the_admin_api_serves_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let files = ServerFiles {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
        client_ca: None,
    };
    let tls = Acceptor::load(files, &[b"http/1.1"]).unwrap();
    let cfg = weft_gateway::Config::from_toml("", "t.toml").unwrap();
    let gw = weft_gateway::Gateway::new(cfg, None).unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(weft_gateway::serve_admin(
        l,
        gw,
        None,
        Some("t".into()),
        Some(tls),
        std::future::pending(),
    ));
    let c = tls_connect(addr, "localhost", &trust(&pki), &[])
        .await
        .unwrap();
    let (status, j) = get_over(c, "localhost", "/health").await;
    assert_eq!(status, 200, "{j}");
}
