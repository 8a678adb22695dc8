//! TLS termination: HTTP/1.1 and HTTP/2 (by ALPN) over TLS to a plain upstream, certificates
//! chosen by SNI, client certificates, and the admin API over TLS.

use crate::common;

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

/// What an https upstream saw of each request: the SNI name, the HTTP version, the path.
type Seen = Arc<std::sync::Mutex<Vec<(Option<String>, http::Version, String)>>>;

/// An https upstream (HTTP/1.1 and HTTP/2 by ALPN) answering 200 with `from <name>`.
async fn https_upstream(tls: Arc<Acceptor>, name: &'static str) -> (SocketAddr, Seen) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen: Seen = Default::default();
    let s2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                return;
            };
            let (tls, seen) = (tls.clone(), s2.clone());
            tokio::spawn(async move {
                let Ok(s) = tls.accept(tcp).await else { return };
                let sni = s.get_ref().1.server_name().map(str::to_string);
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        seen.lock().unwrap().push((
                            sni.clone(),
                            req.version(),
                            req.uri().path().to_string(),
                        ));
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(
                                http_body_util::Full::new(Bytes::from(format!("from {name}"))),
                            ))
                        }
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn https_route(up: SocketAddr, protocol: &str, tls: &str) -> String {
    format!(
        "[[route]]\nname = \"r\"\npath_prefix = \"/\"\nupstream = \"u\"\n[[upstream]]\nname = \"u\"\nprotocol = \"{protocol}\"\nendpoints = [{{ address = \"{up}\" }}]\ntls = {{ {tls} }}\n"
    )
}

fn toml_path(p: &std::path::Path) -> String {
    p.display().to_string()
}

#[tokio::test]
async fn https_upstreams_are_verified_named_and_can_take_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let api = Pki::named(dir.path(), "api CA", "api.test").unwrap();
    let plain = |p: &Pki, mtls: bool| ServerFiles {
        cert: p.server_cert.clone(),
        key: p.server_key.clone(),
        client_ca: mtls.then(|| p.ca_cert.clone()),
    };
    let alpn: &[&[u8]] = &[b"h2", b"http/1.1"];
    // Trusted through `ca`, over HTTP/1.1 and over HTTP/2 (ALPN h2).
    let (up, seen) = https_upstream(Acceptor::load(plain(&pki, false), alpn).unwrap(), "a").await;
    let ca = format!("ca = \"{}\"", toml_path(&pki.ca_cert));
    for (protocol, version) in [
        ("http1", http::Version::HTTP_11),
        ("h2c", http::Version::HTTP_2),
    ] {
        let gw = TestGateway::start(&https_route(up, protocol, &ca), None).await;
        let r = get(gw.addr, "/x").await;
        assert_eq!(
            (r.status.as_u16(), &r.body[..]),
            (200, &b"from a"[..]),
            "{protocol}"
        );
        let last = seen.lock().unwrap().last().cloned().unwrap();
        assert_eq!((last.1, last.2.as_str()), (version, "/x"), "{protocol}");
        gw.shutdown().await;
    }
    // Not trusted: refused with 502, nothing reaches the upstream.
    let before = seen.lock().unwrap().len();
    let other = format!("ca = \"{}\"", toml_path(&api.ca_cert));
    let gw = TestGateway::start(&https_route(up, "http1", &other), None).await;
    assert_eq!(get(gw.addr, "/x").await.status, 502);
    assert_eq!(seen.lock().unwrap().len(), before);
    gw.shutdown().await;
    // Unless verification is off (explicitly).
    let gw = TestGateway::start(
        &https_route(up, "http1", "insecure_skip_verify = true"),
        None,
    )
    .await;
    assert_eq!(get(gw.addr, "/x").await.status, 200);
    gw.shutdown().await;

    // A certificate for api.test on 127.0.0.1: verified against server_name, sent by SNI.
    let (up2, seen2) = https_upstream(Acceptor::load(plain(&api, false), alpn).unwrap(), "b").await;
    let api_ca = format!("ca = \"{}\"", toml_path(&api.ca_cert));
    let gw = TestGateway::start(&https_route(up2, "http1", &api_ca), None).await;
    assert_eq!(
        get(gw.addr, "/x").await.status,
        502,
        "127.0.0.1 is not api.test"
    );
    gw.shutdown().await;
    let named = format!("{api_ca}, server_name = \"api.test\"");
    let gw = TestGateway::start(&https_route(up2, "http1", &named), None).await;
    assert_eq!(get(gw.addr, "/x").await.status, 200);
    assert_eq!(
        seen2.lock().unwrap().last().unwrap().0.as_deref(),
        Some("api.test")
    );
    gw.shutdown().await;

    // An upstream that requires client certificates.
    let (up3, _) = https_upstream(Acceptor::load(plain(&pki, true), alpn).unwrap(), "c").await;
    let gw = TestGateway::start(&https_route(up3, "http1", &ca), None).await;
    assert_eq!(
        get(gw.addr, "/x").await.status,
        502,
        "no client certificate"
    );
    gw.shutdown().await;
    let with = format!(
        "{ca}, cert = \"{}\", key = \"{}\"",
        toml_path(&pki.client_cert),
        toml_path(&pki.client_key)
    );
    let health = "\nhealth_check = { kind = \"http\", path = \"/health\", interval_ms = 50, timeout_ms = 1000, healthy_threshold = 1, unhealthy_threshold = 1 }\n";
    let gw = TestGateway::start(
        &format!("{}{health}", https_route(up3, "http1", &with)),
        None,
    )
    .await;
    assert_eq!(get(gw.addr, "/x").await.status, 200);
    // Health checks go over TLS too (with the client certificate): the endpoint stays healthy.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let status = gw.gw.status();
    assert_eq!(
        status["upstreams"][0]["endpoints"][0]["healthy"], true,
        "{status}"
    );
    gw.shutdown().await;

    // Bad settings are refused with the field.
    let cfg = weft_gateway::Config::from_toml(
        &https_route(
            up,
            "http1",
            &format!("cert = \"{}\"", toml_path(&pki.client_cert)),
        ),
        "t.toml",
    );
    let e = cfg.map(|_| ()).unwrap_err().to_string();
    assert!(
        e.contains("tls") && e.contains("cert and key go together"),
        "{e}"
    );
    let cfg = weft_gateway::Config::from_toml(
        &https_route(up, "http1", "ca = \"/nonexistent.pem\""),
        "t.toml",
    )
    .unwrap();
    let e = weft_gateway::Gateway::new(cfg, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent.pem"), "{e}");
}
