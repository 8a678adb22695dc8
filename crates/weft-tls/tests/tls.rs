//! The acceptor and the client configuration over real loopback connections: a handshake and
//! data, client certificates required and checked, reload without dropping connections, and
//! bad files refused with the file and the reason.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_tls::testing::Pki;
use weft_tls::{client_config, Acceptor, ClientFiles, ServerFiles, SniFiles, TlsError};

/// An echo server over TLS; returns its address.
async fn echo(acceptor: Arc<Acceptor>) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            let a = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut s) = a.accept(tcp).await else {
                    return;
                };
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

type Client = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

async fn connect(addr: std::net::SocketAddr, files: &ClientFiles) -> std::io::Result<Client> {
    connect_as(addr, "localhost", files).await
}

async fn connect_as(
    addr: std::net::SocketAddr,
    host: &str,
    files: &ClientFiles,
) -> std::io::Result<Client> {
    let cfg = client_config(files, &[]).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = weft_tls::server_name(host).unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
}

/// A round trip on the connection (TLS 1.3 reports a refused client certificate only at the
/// first read).
async fn ping(c: &mut Client) -> std::io::Result<()> {
    c.write_all(b"ping").await?;
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).await?;
    assert_eq!(&buf, b"ping");
    Ok(())
}

fn trust(pki: &Pki) -> ClientFiles {
    ClientFiles {
        ca: Some(pki.ca_cert.clone()),
        ..Default::default()
    }
}

fn server(pki: &Pki, mtls: bool) -> ServerFiles {
    ServerFiles {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
        client_ca: mtls.then(|| pki.ca_cert.clone()),
    }
}

#[tokio::test]
async fn a_handshake_carries_data_and_an_untrusted_server_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let other = Pki::named(dir.path(), "other CA", "localhost").unwrap();
    let addr = echo(Acceptor::load(server(&pki, false), &[b"http/1.1"]).unwrap()).await;
    let mut c = connect(addr, &trust(&pki)).await.unwrap();
    ping(&mut c).await.unwrap();
    let err = connect(addr, &trust(&other)).await.unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
}

#[tokio::test]
async fn client_certificates_are_required_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let other = Pki::named(dir.path(), "other CA", "localhost").unwrap();
    let acceptor = Acceptor::load(server(&pki, true), &[]).unwrap();
    assert!(acceptor.client_auth());
    let addr = echo(acceptor).await;
    let mine = ClientFiles {
        ca: Some(pki.ca_cert.clone()),
        cert: Some(pki.client_cert.clone()),
        key: Some(pki.client_key.clone()),
    };
    ping(&mut connect(addr, &mine).await.unwrap())
        .await
        .unwrap();
    // Without a certificate, and with one from another CA: refused.
    for files in [
        trust(&pki),
        ClientFiles {
            cert: Some(other.client_cert.clone()),
            key: Some(other.client_key.clone()),
            ..trust(&pki)
        },
    ] {
        let refused = match connect(addr, &files).await {
            Err(_) => true,
            Ok(mut c) => ping(&mut c).await.is_err(),
        };
        assert!(refused, "a client with {files:?} got through");
    }
}

#[tokio::test]
async fn new_files_are_picked_up_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let first = Pki::new(dir.path()).unwrap();
    let second = Pki::named(dir.path(), "second CA", "localhost").unwrap();
    // The listener's own files, which the test replaces.
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::copy(&first.server_cert, &cert).unwrap();
    std::fs::copy(&first.server_key, &key).unwrap();
    let files = ServerFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: None,
    };
    let acceptor = Acceptor::load(files, &[]).unwrap();
    let _watch = acceptor.watch(Duration::from_millis(50));
    let addr = echo(acceptor.clone()).await;
    let mut old = connect(addr, &trust(&first)).await.unwrap();
    ping(&mut old).await.unwrap();
    assert!(
        !acceptor.reload_if_changed().unwrap(),
        "nothing changed yet"
    );

    // A broken key: refused, and the old configuration keeps serving.
    std::fs::write(&key, "not a key").unwrap();
    let err = acceptor.reload().unwrap_err();
    assert!(err.to_string().contains("key.pem"), "{err}");
    ping(&mut connect(addr, &trust(&first)).await.unwrap())
        .await
        .unwrap();

    std::fs::copy(&second.server_cert, &cert).unwrap();
    std::fs::copy(&second.server_key, &key).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut c) = connect(addr, &trust(&second)).await {
            ping(&mut c).await.unwrap();
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never reloaded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        connect(addr, &trust(&first)).await.is_err(),
        "the old certificate is gone"
    );
    ping(&mut old).await.unwrap();
}

fn load_err(files: ServerFiles) -> TlsError {
    Acceptor::load(files, &[]).unwrap_err()
}

#[test]
fn bad_files_are_refused_with_the_file_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let other = Pki::named(dir.path(), "other CA", "localhost").unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "hello").unwrap();
    let missing = dir.path().join("missing.pem");
    let says = |e: TlsError, file: &Path, what: &str| {
        let m = e.to_string();
        assert!(m.contains(&file.display().to_string()), "{m}");
        assert!(m.contains(what), "{m}");
    };
    let e = load_err(ServerFiles {
        cert: missing.clone(),
        ..server(&pki, false)
    });
    assert!(e.is_retryable());
    says(e, &missing, "cannot read");
    let e = load_err(ServerFiles {
        cert: junk.clone(),
        ..server(&pki, false)
    });
    says(e, &junk, "no certificate");
    let e = load_err(ServerFiles {
        key: junk.clone(),
        ..server(&pki, false)
    });
    says(e, &junk, "no private key");
    let e = load_err(ServerFiles {
        key: other.server_key.clone(),
        ..server(&pki, false)
    });
    says(e, &other.server_key, "does not go with the certificate");
    let e = load_err(ServerFiles {
        client_ca: Some(junk.clone()),
        ..server(&pki, false)
    });
    says(e, &junk, "no certificate");
    let e = client_config(
        &ClientFiles {
            cert: Some(pki.client_cert.clone()),
            ..Default::default()
        },
        &[],
    )
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("both a certificate file and its key"),
        "{e}"
    );
}

#[tokio::test]
async fn sni_picks_the_certificate_by_name_and_falls_back_to_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let default = Pki::new(dir.path()).unwrap();
    let api = Pki::named(dir.path(), "api CA", "api.test").unwrap();
    let wild = Pki::named(dir.path(), "wild CA", "*.svc.test").unwrap();
    let sni = vec![
        SniFiles {
            names: vec!["API.test".into()],
            cert: api.server_cert.clone(),
            key: api.server_key.clone(),
        },
        SniFiles {
            names: vec!["*.svc.test".into()],
            cert: wild.server_cert.clone(),
            key: wild.server_key.clone(),
        },
    ];
    let acceptor = Acceptor::load_sni(server(&default, false), sni.clone(), &[]).unwrap();
    let addr = echo(acceptor).await;
    ping(&mut connect_as(addr, "api.test", &trust(&api)).await.unwrap())
        .await
        .unwrap();
    ping(
        &mut connect_as(addr, "orders.svc.test", &trust(&wild))
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    ping(&mut connect(addr, &trust(&default)).await.unwrap())
        .await
        .unwrap();
    // A name no SNI entry has gets the default certificate (not valid for it here).
    assert!(connect_as(addr, "a.b.svc.test", &trust(&wild))
        .await
        .is_err());
    assert!(connect_as(addr, "other.test", &trust(&api)).await.is_err());
    // A name given twice is refused, naming the file.
    let mut twice = sni.clone();
    twice[1].names.push("api.test".into());
    let e = Acceptor::load_sni(server(&default, false), twice, &[]).unwrap_err();
    assert!(e.to_string().contains("given twice"), "{e}");
}
