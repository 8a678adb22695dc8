//! `weft up` with TLS, as real processes: the CLI over https with --cacert, client
//! certificates required with --client-cert-auth, bad files refused at start, and listeners
//! off loopback refused unless they have TLS and authentication.

use crate::common;

use common::{start_with, weft, BIN};
use weft_tls::testing::Pki;

fn https(endpoint: &str) -> String {
    endpoint.replace("https://127.0.0.1", "https://localhost")
}

#[test]
fn the_cli_talks_to_a_tls_node_with_its_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let data = dir.path().join("data");
    let node = start_with(&[
        "--data-dir".as_ref(),
        data.as_os_str(),
        "--cert-file".as_ref(),
        pki.server_cert.as_os_str(),
        "--key-file".as_ref(),
        pki.server_key.as_os_str(),
    ]);
    assert!(node.endpoint.starts_with("https://"), "{}", node.endpoint);
    let ep = https(&node.endpoint);
    let ca = pki.ca_cert.to_str().unwrap();
    let (code, _, err) = weft(&["kv", "put", "k", "v", "--cacert", ca], &ep, None);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = weft(&["kv", "get", "k", "--cacert", ca], &ep, None);
    assert_eq!((code, out.trim()), (0, "k\nv"), "{err}");
    // Without the CA the server is not trusted; over plain http nothing answers.
    let (code, _, err) = weft(&["kv", "get", "k"], &ep, None);
    assert_ne!(code, 0);
    assert!(err.contains("cannot reach"), "{err}");
    let (code, _, _) = weft(&["kv", "get", "k"], &ep.replace("https", "http"), None);
    assert_ne!(code, 0);
    // TLS options on an http endpoint are a mistake, said so.
    let (code, _, err) = weft(
        &["kv", "get", "k", "--cacert", ca],
        "http://127.0.0.1:1",
        None,
    );
    assert_ne!(code, 0);
    assert!(err.contains("https://"), "{err}");
}

#[test]
fn client_certificates_are_required_with_client_cert_auth() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let other = Pki::named(dir.path(), "other CA", "localhost").unwrap();
    let data = dir.path().join("data");
    let node = start_with(&[
        "--data-dir".as_ref(),
        data.as_os_str(),
        "--cert-file".as_ref(),
        pki.server_cert.as_os_str(),
        "--key-file".as_ref(),
        pki.server_key.as_os_str(),
        "--client-cert-auth".as_ref(),
        "--trusted-ca-file".as_ref(),
        pki.ca_cert.as_os_str(),
    ]);
    let ep = https(&node.endpoint);
    let ca = pki.ca_cert.to_str().unwrap();
    let (code, _, _) = weft(&["status", "--cacert", ca], &ep, None);
    assert_ne!(code, 0, "no client certificate: refused");
    let (cert, key) = (
        pki.client_cert.to_str().unwrap(),
        pki.client_key.to_str().unwrap(),
    );
    let (code, out, err) = weft(
        &["status", "--cacert", ca, "--cert", cert, "--key", key],
        &ep,
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("revision"), "{out}");
    let (ocert, okey) = (
        other.client_cert.to_str().unwrap(),
        other.client_key.to_str().unwrap(),
    );
    let (code, _, _) = weft(
        &["status", "--cacert", ca, "--cert", ocert, "--key", okey],
        &ep,
        None,
    );
    assert_ne!(code, 0, "a certificate from another CA: refused");
}

/// `weft up` that must fail before serving anything: its stderr.
fn refused(args: &[&str]) -> String {
    let out = std::process::Command::new(BIN)
        .arg("up")
        .args(args)
        .env("WEFT_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success(), "started with {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_files_and_exposed_listeners_are_refused_with_what_to_add() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let (cert, key) = (
        pki.server_cert.to_str().unwrap(),
        pki.server_key.to_str().unwrap(),
    );
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "junk").unwrap();
    let junk = junk.to_str().unwrap();
    let err = refused(&["--data-dir", data, "--cert-file", junk, "--key-file", key]);
    assert!(
        err.contains("junk.pem") && err.contains("no certificate"),
        "{err}"
    );
    let err = refused(&["--data-dir", data, "--cert-file", cert, "--key-file", junk]);
    assert!(
        err.contains("junk.pem") && err.contains("no private key"),
        "{err}"
    );
    // Off loopback (refused before anything binds): TLS first, then authentication.
    let err = refused(&["--data-dir", data, "--listen", "0.0.0.0:0", "--token", "t"]);
    assert!(
        err.contains("without TLS") && err.contains("--cert-file"),
        "{err}"
    );
    let tls = [
        "--data-dir",
        data,
        "--listen",
        "0.0.0.0:0",
        "--cert-file",
        cert,
        "--key-file",
        key,
    ];
    let err = refused(&tls);
    assert!(
        err.contains("without authentication") && err.contains("--token"),
        "{err}"
    );
    // The etcd API off loopback with TLS but neither users (auth disabled) nor client
    // certificates: refused before it binds.
    #[cfg(feature = "etcd")]
    {
        let mut etcd = tls.to_vec();
        etcd[3] = "127.0.0.1:0";
        etcd.extend(["--etcd-listen", "0.0.0.0:0"]);
        let err = refused(&etcd);
        assert!(
            err.contains("--etcd-listen") && err.contains("auth enable"),
            "{err}"
        );
    }
}

/// `weft up` on an etcd cluster that serves TLS and requires client certificates.
#[cfg(feature = "etcd")]
#[test]
fn the_node_runs_on_an_etcd_cluster_over_tls_with_a_client_certificate() {
    let Some(bin) = weft_store_etcd::testing::etcd_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let client = weft_store_etcd::EtcdTls {
        ca: Some(pki.ca_cert.clone()),
        cert: Some(pki.client_cert.clone()),
        key: Some(pki.client_key.clone()),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let etcd = rt.block_on(weft_store_etcd::testing::EtcdServer::start_tls(
        bin,
        &pki.server_cert,
        &pki.server_key,
        Some(&pki.ca_cert),
        client,
    ));
    assert!(etcd.endpoint.starts_with("https://"), "{}", etcd.endpoint);
    let node = start_with(&[
        "--data-dir".as_ref(),
        dir.path().join("data").as_os_str(),
        "--etcd-endpoints".as_ref(),
        etcd.endpoint.as_ref(),
        "--etcd-cacert".as_ref(),
        pki.ca_cert.as_os_str(),
        "--etcd-cert".as_ref(),
        pki.client_cert.as_os_str(),
        "--etcd-key".as_ref(),
        pki.client_key.as_os_str(),
        "--sagas".as_ref(),
        "false".as_ref(),
    ]);
    let (code, _, err) = weft(&["kv", "put", "over-tls", "yes"], &node.endpoint, None);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = weft(&["kv", "get", "over-tls"], &node.endpoint, None);
    assert_eq!((code, out.trim()), (0, "over-tls\nyes"), "{err}");
    // The value is in etcd itself, read with the same TLS settings.
    let got = rt.block_on(async {
        let tls = weft_store_etcd::EtcdTls {
            ca: Some(pki.ca_cert.clone()),
            cert: Some(pki.client_cert.clone()),
            key: Some(pki.client_key.clone()),
        };
        let s = weft_store_etcd::EtcdStore::connect_tls(std::slice::from_ref(&etcd.endpoint), &tls)
            .await
            .unwrap();
        let mut c = s.client().clone();
        c.get("over-tls", None).await.unwrap().kvs().len()
    });
    assert_eq!(got, 1);
}

/// A replica follows an https:// primary that requires client certificates: the stream,
/// the catch-up probe and forwarded writes all go over TLS.
#[test]
fn a_replica_follows_a_tls_primary_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path()).unwrap();
    let (pdata, rdata) = (dir.path().join("p"), dir.path().join("r"));
    let primary = start_with(&[
        "--data-dir".as_ref(),
        pdata.as_os_str(),
        "--token".as_ref(),
        "t".as_ref(),
        "--cert-file".as_ref(),
        pki.server_cert.as_os_str(),
        "--key-file".as_ref(),
        pki.server_key.as_os_str(),
        "--client-cert-auth".as_ref(),
        "--trusted-ca-file".as_ref(),
        pki.ca_cert.as_os_str(),
    ]);
    let pep = https(&primary.endpoint);
    let replica = start_with(&[
        "--data-dir".as_ref(),
        rdata.as_os_str(),
        "--token".as_ref(),
        "t".as_ref(),
        "--replica-of".as_ref(),
        pep.as_ref(),
        "--repl-cacert".as_ref(),
        pki.ca_cert.as_os_str(),
        "--repl-cert".as_ref(),
        pki.client_cert.as_os_str(),
        "--repl-key".as_ref(),
        pki.client_key.as_os_str(),
    ]);
    let (ca, cert, key) = (
        pki.ca_cert.to_str().unwrap(),
        pki.client_cert.to_str().unwrap(),
        pki.client_key.to_str().unwrap(),
    );
    let tls = ["--token", "t", "--cacert", ca, "--cert", cert, "--key", key];
    let mut put = vec!["kv", "put", "k", "from-primary"];
    put.extend_from_slice(&tls);
    let (code, _, err) = weft(&put, &pep, None);
    assert_eq!(code, 0, "{err}");
    let seen = |want: &str| {
        for _ in 0..100 {
            let (_, out, _) = weft(&["kv", "get", "k", "--token", "t"], &replica.endpoint, None);
            if out.trim() == format!("k\n{want}") {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        false
    };
    assert!(
        seen("from-primary"),
        "the replica never saw the primary's write"
    );
    // A write sent to the replica is forwarded to the primary over the same TLS stream.
    let (code, _, err) = weft(
        &["kv", "put", "k", "via-replica", "--token", "t"],
        &replica.endpoint,
        None,
    );
    assert_eq!(code, 0, "{err}");
    let mut get = vec!["kv", "get", "k"];
    get.extend_from_slice(&tls);
    let (code, out, err) = weft(&get, &pep, None);
    assert_eq!((code, out.trim()), (0, "k\nvia-replica"), "{err}");
    assert!(seen("via-replica"));
}
