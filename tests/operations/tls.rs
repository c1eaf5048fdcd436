//! TLS on the client listener: wss sessions and HTTPS passthrough with a certificate made at
//! test time, ALPN `h2`, and a certificate swap that new handshakes see while a live wss
//! session stays connected.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::support::*;

/// A self-signed certificate for `localhost` / `127.0.0.1`.
pub(crate) struct TestCert {
    cert_pem: String,
    key_pem: String,
    pub(crate) der: CertificateDer<'static>,
}

pub(crate) fn make_cert(common_name: &str, serial: u64) -> TestCert {
    let key = rcgen::KeyPair::generate().expect("generate key");
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("certificate params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params.serial_number = Some(rcgen::SerialNumber::from(serial));
    let cert = params.self_signed(&key).expect("self-sign");
    TestCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        der: cert.der().clone(),
    }
}

/// Writes the pair the way a Secret update lands: each file replaced atomically (key first).
pub(crate) fn install(cert: &TestCert, dir: &Path) {
    for (name, text) in [("tls.key", &cert.key_pem), ("tls.crt", &cert.cert_pem)] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

/// A TLS client trusting exactly `trusted`, offering `alpn`.
pub(crate) fn connector(trusted: &[&TestCert], alpn: &[&[u8]]) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    for cert in trusted {
        roots.add(cert.der.clone()).expect("trust anchor");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    TlsConnector::from(Arc::new(config))
}

pub(crate) async fn tls_connect(
    connector: &TlsConnector,
    addr: SocketAddr,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(WAIT, connector.connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

pub(crate) fn peer_cert(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .expect("peer certificate")[0]
        .clone()
}

/// A ready sidewire serving TLS with the certificate installed in `dir`, `extra` top-level
/// lines, and `backend` as its backend.
async fn tls_server(dir: &std::path::Path, extra: &str, backend: &Backend) -> Server {
    let server = Server::start(&format!(
        "{extra}tls:\n  cert_file: \"{}\"\n  key_file: \"{}\"\n{}",
        dir.join("tls.crt").display(),
        dir.join("tls.key").display(),
        backend.yaml(&[])
    ))
    .await;
    server.wait_ready(RELOAD_WAIT).await;
    server
}

#[tokio::test]
async fn tls_serves_wss_and_https_with_h2_and_swaps_certificates() {
    let mut backend = Backend::start().await;
    let tls_dir = tempfile::tempdir().unwrap();
    let first = make_cert("sidewire-test-one", 1);
    let second = make_cert("sidewire-test-two", 2);
    install(&first, tls_dir.path());
    let server = tls_server(tls_dir.path(), "http_stream: true\n", &backend).await;
    let addr = server.client_addr;
    let http1 = connector(&[&first, &second], &[b"http/1.1"]);

    // HTTP-stream over TLS with ALPN http/1.1: served on the owned HTTP/1.1 path (its
    // response ends the connection), connect reply included.
    let mut tls = tls_connect(&http1, addr).await.expect("TLS handshake");
    let connect = br#"{"id":1,"connect":{}}"#;
    let head = format!(
        "POST /connection/http_stream HTTP/1.1\r\nhost: localhost\r\ncontent-length: {}\r\n\r\n",
        connect.len()
    );
    tls.write_all(&[head.as_bytes(), connect].concat())
        .await
        .unwrap();
    let mut seen = Vec::new();
    tokio::time::timeout(RELOAD_WAIT, async {
        while !String::from_utf8_lossy(&seen).contains("\"session\"") {
            let mut buf = [0u8; 1024];
            let n = tls.read(&mut buf).await.unwrap();
            assert!(n > 0, "{}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("connect reply over TLS");
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.starts_with("HTTP/1.1 200 OK\r\n"), "{seen}");
    assert!(seen.contains("\r\nconnection: close\r\n"), "{seen}");
    drop(tls);

    // wss: a session over TLS.
    let tls = tls_connect(&http1, addr).await.expect("TLS handshake");
    assert_eq!(peer_cert(&tls), first.der, "served certificate");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut wss = JsonWs::connect("wss://localhost/connection/websocket", tls).await;
    let reply = wss
        .request(json!({"rpc": {"method": "echo", "data": {"n": 1}}}))
        .await;
    assert_eq!(reply["rpc"]["data"], json!({"n": 1}), "{reply}");

    // HTTPS passthrough (HTTP/1.1).
    let tls = tls_connect(&http1, addr).await.expect("TLS handshake");
    let fetched = exchange(
        tls,
        http::Request::get("/over-tls?q=1")
            .header("host", "localhost")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(fetched.status, 200, "{fetched:?}");
    assert_eq!(fetched.text(), BACKEND_HELLO);
    let seen = backend.next_request().await;
    assert_eq!(seen.path_and_query, "/over-tls?q=1");
    assert_eq!(header_value(&seen.headers, "x-forwarded-proto"), "https");

    // ALPN h2 when offered, and an HTTP/2 request through to the backend.
    let h2 = connector(&[&first, &second], &[b"h2", b"http/1.1"]);
    let tls = tls_connect(&h2, addr).await.expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .expect("HTTP/2 handshake");
    let driver = tokio::spawn(connection);
    let response = tokio::time::timeout(
        WAIT,
        sender.send_request(
            http::Request::get("https://localhost/over-h2")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        ),
    )
    .await
    .expect("HTTP/2 response in time")
    .expect("HTTP/2 response");
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], BACKEND_HELLO.as_bytes());
    assert_eq!(backend.next_request().await.path_and_query, "/over-h2");
    driver.abort();

    // Swap the certificate files: new handshakes get the new certificate (bounded polling of
    // handshakes: there is no event to await from outside the process).
    install(&second, tls_dir.path());
    let deadline = Instant::now() + RELOAD_WAIT;
    loop {
        let tls = tls_connect(&http1, addr)
            .await
            .expect("TLS handshake during the swap");
        let served = peer_cert(&tls);
        if served == second.der {
            break;
        }
        assert_eq!(served, first.der, "neither certificate was served");
        assert!(
            Instant::now() < deadline,
            "the new certificate was not served within {RELOAD_WAIT:?}; stderr:\n{}",
            server.stderr_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A client trusting only the new certificate connects and gets a session.
    let only_second = connector(&[&second], &[b"http/1.1"]);
    let tls = tls_connect(&only_second, addr)
        .await
        .expect("TLS with the new certificate");
    let mut fresh = JsonWs::connect("wss://localhost/connection/websocket", tls).await;
    let reply = fresh
        .request(json!({"rpc": {"method": "echo", "data": "new"}}))
        .await;
    assert_eq!(reply["rpc"]["data"], json!("new"), "{reply}");
    // And a client trusting only the old one no longer does.
    let only_first = connector(&[&first], &[b"http/1.1"]);
    assert!(
        tls_connect(&only_first, addr).await.is_err(),
        "a client trusting only the old certificate still completed a handshake"
    );

    // The wss session opened before the swap is still connected (and still on the old one).
    assert_eq!(peer_cert(wss.stream()), first.der);
    let reply = wss
        .request(json!({"rpc": {"method": "echo", "data": {"n": 2}}}))
        .await;
    assert_eq!(reply["rpc"]["data"], json!({"n": 2}), "{reply}");
}

/// The server's TLS stream (rustls's unbuffered API, `server::tls_stream`) carries WebSocket
/// messages larger than one TLS record both ways, and a client that dribbles a record header
/// and stops is closed at the handshake deadline.
#[tokio::test]
async fn wss_carries_multi_record_messages_and_a_stalled_handshake_is_cut() {
    let backend = Backend::start().await;
    let tls_dir = tempfile::tempdir().unwrap();
    let cert = make_cert("sidewire-test-records", 3);
    install(&cert, tls_dir.path());
    let server = tls_server(
        tls_dir.path(),
        "client_handshake_timeout: \"500ms\"\n",
        &backend,
    )
    .await;
    let addr = server.client_addr;
    let http1 = connector(&[&cert], &[b"http/1.1"]);

    let tls = tls_connect(&http1, addr).await.expect("TLS handshake");
    let mut wss = JsonWs::connect("wss://localhost/connection/websocket", tls).await;
    // ~40 KiB each way: three TLS records in, three out.
    let big: String = (0..40_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let reply = wss
        .request(json!({"rpc": {"method": "echo", "data": {"big": big}}}))
        .await;
    assert_eq!(reply["rpc"]["data"]["big"], json!(big), "large echo");
    let reply = wss
        .request(json!({"rpc": {"method": "echo", "data": {"n": 3}}}))
        .await;
    assert_eq!(reply["rpc"]["data"], json!({"n": 3}), "{reply}");

    // A handshake record header, then silence: closed by the handshake deadline.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(WAIT, stalled.read(&mut buf))
        .await
        .expect("the stalled handshake was not closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // The established session is unaffected.
    let reply = wss
        .request(json!({"rpc": {"method": "echo", "data": {"n": 4}}}))
        .await;
    assert_eq!(reply["rpc"]["data"], json!({"n": 4}), "{reply}");
}

/// A one-route HTTPS backend on an ephemeral port, serving `cert`.
async fn https_backend(cert: &TestCert) -> SocketAddr {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let key = <rustls_pki_types::PrivateKeyDer<'static> as rustls_pki_types::pem::PemObject>::from_pem_slice(
        cert.key_pem.as_bytes(),
    )
    .expect("key pem");
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.der.clone()], key)
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = hyper::service::service_fn(
                    |request: http::Request<hyper::body::Incoming>| async move {
                        let body = format!("secure backend saw {}", request.uri().path());
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(body),
                        )))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn link_to_an_https_hub_and_passthrough_to_an_https_backend() {
    let cert = make_cert("sidewire-upstream", 7);
    let dir = tempfile::tempdir().unwrap();
    install(&cert, dir.path());
    let cert_file = dir.path().join("tls.crt");
    let key_file = dir.path().join("tls.key");
    let hub = crate::support::Hub::start(&format!(
        "tls: {{cert_file: \"{}\", key_file: \"{}\"}}",
        cert_file.display(),
        key_file.display()
    ))
    .await;
    let backend = https_backend(&cert).await;
    let server = Server::start(&format!(
        "upstream:\n  endpoint: \"https://localhost:{}\"\n  tls_ca_file: \"{ca}\"\n  reconnect_backoff_min: \"50ms\"\n  reconnect_backoff_max: \"500ms\"\nbackend:\n  url: \"https://localhost:{}\"\n  tls_ca_file: \"{ca}\"\n",
        hub.link_addr.port(),
        backend.port(),
        ca = cert_file.display(),
    ))
    .await;
    // Ready means the Link to the TLS hub is up.
    server.wait_ready(RELOAD_WAIT).await;
    let tcp = TcpStream::connect(server.client_addr).await.unwrap();
    let mut ws = JsonWs::connect("ws://localhost/connection/websocket", tcp).await;
    let reply = ws
        .request(json!({"rpc": {"method": "echo", "data": {"over": "tls"}}}))
        .await;
    assert_eq!(reply["rpc"]["data"], json!({"over": "tls"}), "{reply}");

    let fetched = fetch(
        server.client_addr,
        request_to(server.client_addr, "GET", "/secure/path")
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(fetched.status, 200, "{}", fetched.text());
    assert_eq!(fetched.text(), "secure backend saw /secure/path");
}
