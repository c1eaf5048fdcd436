//! Conformance of the sidecar to the Link contract (docs/link.md) against upstreams that
//! misbehave on purpose: a missing reply, a double reply, frames for unknown sessions, a push
//! whose channels disagree, unknown frames, a refused connect, a wrong or missing token. Each
//! test checks that the damage stays within that session or stream.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use sidewire::linkproto::sidecar_frame::Frame;
use sidewire::protocol::client::ConnectRequest;
use support::scripted_upstream::{
    self, ScriptOptions, UNKNOWN_SESSION, assert_echo, sidecar, upstream_yaml,
};
use support::*;

fn options(capabilities: &[&str]) -> ScriptOptions {
    ScriptOptions {
        capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
        token: None,
    }
}

async fn metric(server: &Server, line: &str) -> bool {
    scrape(server.admin_addr).await.text.contains(line)
}

#[tokio::test]
async fn missing_reply_times_out_with_error_100_and_upstream_is_told() {
    let (upstream, script) = scripted_upstream::start(options(&["command_timeout"])).await;
    let server = sidecar(upstream, "command_timeout: \"300ms\"").await;
    let mut client = server.ws(WsOptions::json()).await;
    client.handshake().await;
    let mut bystander = server.ws(WsOptions::protobuf()).await;
    bystander.handshake().await;

    let reply = client.request(rpc_raw("hang", b"{}")).await;
    let error = reply.error.clone().expect("a timeout error reply");
    assert_eq!((error.code, error.temporary), (100, true), "{reply:?}");
    let id = reply.id;
    eventually(WAIT, "SessionCommandTimeout upstream", || async {
        !script
            .frames(|f| match f {
                Frame::CommandTimeout(t) if t.id == id => Some(()),
                _ => None,
            })
            .is_empty()
    })
    .await;
    // The session and its neighbour go on.
    assert_echo(&mut client, "after a timeout").await;
    assert_echo(&mut bystander, "bystander").await;
    assert!(metric(&server, "sidewire_link_command_timeouts_total 1").await);
}

#[tokio::test]
async fn timeout_frame_is_sent_only_to_upstreams_that_declared_it() {
    let (upstream, script) = scripted_upstream::start(options(&[])).await;
    let server = sidecar(upstream, "command_timeout: \"200ms\"").await;
    let mut client = server.ws(WsOptions::json()).await;
    client.handshake().await;
    assert_eq!(
        client
            .request(rpc_raw("hang", b"{}"))
            .await
            .error
            .map(|e| e.code),
        Some(100)
    );
    assert_echo(&mut client, "after a timeout").await;
    let timeouts = script.frames(|f| matches!(f, Frame::CommandTimeout(_)).then_some(()));
    assert!(
        timeouts.is_empty(),
        "a v1 upstream never sees the new frame"
    );
}

#[tokio::test]
async fn double_reply_reaches_the_client_once() {
    let (upstream, _script) = scripted_upstream::start(options(&[])).await;
    let server = sidecar(upstream, "").await;
    let mut client = server.ws(WsOptions::json()).await;
    client.handshake().await;
    assert_eq!(client.request(rpc_raw("twice", b"{}")).await.error, None);
    assert_echo(&mut client, "after a double reply").await;
    assert!(
        client.unconsumed().iter().all(|r| r.id == 0),
        "no second reply: {:?}",
        client.unconsumed()
    );
    assert!(
        metric(
            &server,
            "sidewire_link_frames_dropped_total{reason=\"unsolicited_reply\"} 1"
        )
        .await
    );
}

#[tokio::test]
async fn frames_for_unknown_sessions_are_counted_and_harm_nobody() {
    let (upstream, _script) = scripted_upstream::start(options(&[])).await;
    let server = sidecar(upstream, "").await;
    let mut client = server.ws(WsOptions::json()).await;
    client.handshake().await;
    assert_eq!(client.request(subscribe("news")).await.error, None);
    assert_eq!(
        client
            .request(rpc_raw("unknown_session", b"{}"))
            .await
            .error,
        None
    );
    assert_echo(&mut client, "after frames for an unknown session").await;
    // Reply, membership and disconnect for session UNKNOWN_SESSION: three drops.
    assert!(
        metric(
            &server,
            "sidewire_link_frames_dropped_total{reason=\"unknown_session\"} 3"
        )
        .await,
        "session {UNKNOWN_SESSION}"
    );
}

#[tokio::test]
async fn push_with_mismatched_channels_is_dropped() {
    let (upstream, _script) = scripted_upstream::start(options(&[])).await;
    let server = sidecar(upstream, "").await;
    let mut client = server.ws(WsOptions::json()).await;
    client.handshake().await;
    assert_eq!(client.request(subscribe("news")).await.error, None);
    assert_eq!(client.request(rpc_raw("mismatch", b"{}")).await.error, None);
    // A correct publication after it is the first one the client sees.
    assert_eq!(
        client
            .request(publish("news", &json!({"right": true})))
            .await
            .error,
        None
    );
    let publication = client.expect_publication("news", 1).await;
    assert_eq!(publication.data, Bytes::from_static(br#"{"right":true}"#));
    let stray = client.take_pushes(|p| {
        p.channel == "other"
            || p.r#pub
                .as_ref()
                .is_some_and(|p| p.data.starts_with(br#"{"wrong"#))
    });
    assert!(stray.is_empty(), "{stray:?}");
    assert!(
        metric(
            &server,
            "sidewire_link_frames_dropped_total{reason=\"channel_mismatch\"} 1"
        )
        .await
    );
}

#[tokio::test]
async fn unknown_frame_is_answered_with_link_error_and_the_stream_goes_on() {
    let (upstream, script) = scripted_upstream::start(options(&["link_error"])).await;
    let server = sidecar(upstream, "").await;
    let mut client = server.ws(WsOptions::json()).await;
    client.handshake().await;
    assert_eq!(
        client.request(rpc_raw("unknown_frame", b"{}")).await.error,
        None
    );
    eventually(WAIT, "LinkError upstream", || async {
        !script
            .frames(|f| match f {
                Frame::Error(e) if e.code == 1 => Some(()),
                _ => None,
            })
            .is_empty()
    })
    .await;
    assert_echo(&mut client, "after an unknown frame").await;
    assert_eq!(
        script.streams_opened.load(Ordering::SeqCst),
        1,
        "same stream"
    );
    assert!(
        metric(
            &server,
            "sidewire_link_frames_dropped_total{reason=\"unknown_frame\"} 1"
        )
        .await
    );
}

#[tokio::test]
async fn hello_declares_protocol_version_and_capabilities() {
    let (upstream, script) = scripted_upstream::start(options(&[])).await;
    let _server = sidecar(upstream, "").await;
    let hellos = script.frames(|f| match f {
        Frame::Hello(h) => Some(h.clone()),
        _ => None,
    });
    let hello = hellos.first().expect("hello");
    assert_eq!(hello.protocol_version, 1);
    for capability in ["command_timeout", "link_error"] {
        assert!(
            hello.capabilities.iter().any(|c| c == capability),
            "{hello:?}"
        );
    }
}

#[tokio::test]
async fn refused_connect_ends_the_session_on_both_sides() {
    let (upstream, script) = scripted_upstream::start(options(&[])).await;
    let server = sidecar(upstream, "").await;
    let mut client = server.ws(WsOptions::json()).await;
    let reply = client
        .connect_with(ConnectRequest {
            token: "refuse".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(reply.error.map(|e| e.code), Some(101));
    // The error reply, then the connection ends (no 3501 later, no lingering session).
    let (code, reason) = client.expect_close(WAIT).await;
    assert_eq!((code, reason.as_str()), (3000, "connect refused"));
    let opened = script.frames(|f| match f {
        Frame::Open(o) => Some(o.session),
        _ => None,
    });
    let session = *opened.last().expect("SessionOpen");
    eventually(WAIT, "SessionClose for the refused session", || async {
        !script
            .frames(|f| match f {
                Frame::Close(c) if c.session == session && c.code == 3000 => Some(()),
                _ => None,
            })
            .is_empty()
    })
    .await;
    let mut other = server.ws(WsOptions::json()).await;
    other.handshake().await;
    assert_echo(&mut other, "another session after a refusal").await;
}

#[tokio::test]
async fn unanswered_connect_times_out_as_a_temporary_refusal_not_stale() {
    let (upstream, script) = scripted_upstream::start(options(&["command_timeout"])).await;
    // The stale timer (3502, terminal for SDKs) is far away; the command timeout decides.
    let server = Server::start(&format!(
        "stale_close_delay: \"30s\"\n{}",
        upstream_yaml(upstream, "command_timeout: \"300ms\"")
    ))
    .await;
    server.wait_ready(WAIT).await;
    let mut client = server.ws(WsOptions::json()).await;
    let reply = client
        .connect_with(ConnectRequest {
            token: "hang".into(),
            ..Default::default()
        })
        .await;
    let error = reply.error.expect("a timeout error for connect");
    assert_eq!((error.code, error.temporary), (100, true));
    assert_eq!(client.expect_close(WAIT).await.0, 3000);
    eventually(
        WAIT,
        "SessionCommandTimeout and SessionClose upstream",
        || async {
            let timeouts = script.frames(|f| matches!(f, Frame::CommandTimeout(_)).then_some(()));
            let closes = script.frames(|f| matches!(f, Frame::Close(_)).then_some(()));
            timeouts.len() == 1 && closes.len() == 1
        },
    )
    .await;
}

#[tokio::test]
async fn wrong_or_missing_token_is_refused_before_welcome_and_retried() {
    let (upstream, script) = scripted_upstream::start(ScriptOptions {
        capabilities: Vec::new(),
        token: Some("right-token".into()),
    })
    .await;
    let wrong = Server::start(&upstream_yaml(upstream, "token: \"wrong-token\"")).await;
    let missing = Server::start(&upstream_yaml(upstream, "")).await;
    // Both keep retrying with backoff, and neither becomes ready.
    eventually(WAIT, "several refused attempts", || async {
        script.refused.load(Ordering::SeqCst) >= 6
    })
    .await;
    assert_eq!(http_get(wrong.admin_addr, "/readyz").await.0, 503);
    assert_eq!(http_get(missing.admin_addr, "/readyz").await.0, 503);
    assert_eq!(
        script.streams_opened.load(Ordering::SeqCst),
        0,
        "never welcomed"
    );
    assert!(
        script.frames(|f| Some(f.clone())).is_empty(),
        "no frame got through"
    );
    // The right token, from a file, gets through.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "right-token\n").unwrap();
    let right = sidecar(upstream, &format!("token_file: \"{}\"", file.display())).await;
    let mut client = right.ws(WsOptions::json()).await;
    client.handshake().await;
    assert_echo(&mut client, "with the right token").await;
}

#[tokio::test]
async fn standalone_hub_requires_its_link_token() {
    let hub = Hub::start("link_token: \"hub-secret\"").await;
    let endpoint = hub.link_addr;
    let refused = Server::start(&upstream_yaml(endpoint, "token: \"nope\"")).await;
    let accepted = sidecar(endpoint, "token: \"hub-secret\"").await;
    let mut client = accepted.ws(WsOptions::json()).await;
    client.handshake().await;
    // The refused sidecar stays not ready while the other one has long been up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(http_get(refused.admin_addr, "/readyz").await.0, 503);
}

/// A CA, a server certificate for `localhost` and a client certificate, as PEM files.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        write("ca.pem", ca_cert.pem());
        for (name, san) in [("server", "localhost"), ("client", "sidecar")] {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(vec![san.to_owned()])
                .unwrap()
                .signed_by(&key, &issuer)
                .unwrap();
            write(&format!("{name}.pem"), cert.pem());
            write(&format!("{name}.key"), key.serialize_pem());
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn tls_sidecar_yaml(pki: &Pki, link: SocketAddr, client_cert: bool) -> String {
    let mut yaml = format!(
        "upstream:\n  endpoint: \"https://{link}\"\n  tls_domain: \"localhost\"\n  tls_ca_file: \"{}\"\n  reconnect_backoff_min: \"50ms\"\n  reconnect_backoff_max: \"200ms\"\n",
        pki.path("ca.pem")
    );
    if client_cert {
        yaml.push_str(&format!(
            "  tls_cert_file: \"{}\"\n  tls_key_file: \"{}\"\n",
            pki.path("client.pem"),
            pki.path("client.key")
        ));
    }
    yaml
}

#[tokio::test]
async fn standalone_hub_with_client_ca_requires_a_client_certificate() {
    let pki = Pki::new();
    let hub = Hub::start(&format!(
        "tls:\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  client_ca_file: \"{}\"",
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem")
    ))
    .await;
    let anonymous = Server::start(&tls_sidecar_yaml(&pki, hub.link_addr, false)).await;
    let identified = Server::start(&tls_sidecar_yaml(&pki, hub.link_addr, true)).await;
    identified.wait_ready(WAIT).await;
    let mut client = identified.ws(WsOptions::json()).await;
    client.handshake().await;
    assert_eq!(client.request(subscribe("tls")).await.error, None);
    // The sidecar without a certificate has had every chance to connect meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(http_get(anonymous.admin_addr, "/readyz").await.0, 503);
}

#[tokio::test]
async fn link_listener_sets_so_reuseaddr() {
    use std::os::fd::AsRawFd;
    let (listener, _) = sidewire::bind_hub_link_listener("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a valid socket fd and correctly sized out-parameters.
    let rc = unsafe {
        libc::getsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0);
    assert_ne!(
        value, 0,
        "tokio's TcpListener::bind sets SO_REUSEADDR on Unix"
    );
}
