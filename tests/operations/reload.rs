//! Live reload: file edits (in place, or a Kubernetes ConfigMap `..data` symlink swap) and
//! SIGHUP apply a new config without dropping live sessions; an invalid edit is rejected and
//! the old config keeps serving.

use serde_json::json;
use sidewire::protocol::Encoding;
use sidewire::protocol::client::Push;
use tokio::time::Instant;

use crate::support::*;
use crate::support::{
    HandshakeFailure, Server, WAIT, WsClient, WsOptions, api_ok, rpc, subscribe, try_http,
    unique_channel,
};

const ORIGIN_A: &str = "http://a.example";
const ORIGIN_B: &str = "http://b.example";

fn origins_yaml(origin: &str) -> String {
    format!("allowed_origins: [\"{origin}\"]\nhttp_stream: true\n")
}

/// Status of a WebSocket handshake with `origin`: 101 when accepted (the session then
/// connects), else the refusal status.
async fn handshake_status(server_addr: std::net::SocketAddr, origin: &str) -> u16 {
    match WsClient::try_connect(server_addr, WsOptions::json().origin(origin)).await {
        Ok(mut client) => {
            client.handshake().await;
            101
        }
        Err(HandshakeFailure::Status(status)) => status,
        Err(HandshakeFailure::Other(why)) => panic!("handshake with Origin {origin}: {why}"),
    }
}

/// Waits until `sidewire_config_reloads_total{result}` reaches `at_least`.
async fn wait_reloads(server: &Server, result: &str, at_least: f64) -> Scrape {
    wait_metric(
        server.admin_addr,
        "sidewire_config_reloads_total",
        &[("result", result)],
        RELOAD_WAIT,
        |v| v >= at_least,
    )
    .await
}

fn is_publication_on(channel: &str) -> impl Fn(&Push) -> bool + '_ {
    move |p: &Push| p.channel == channel && p.r#pub.is_some()
}

/// Rewriting `allowed_origins` takes effect for new handshakes while a live WebSocket session
/// and a live HTTP-streaming session keep working (rpc, publications via /emulation
/// subscription).
#[tokio::test]
async fn origin_change_applies_to_new_handshakes_and_keeps_live_sessions() {
    let server = Server::start(&origins_yaml(ORIGIN_A)).await;
    server.wait_ready(RELOAD_WAIT).await;
    let addr = server.client_addr;
    let channel = unique_channel("reload");

    // A WebSocket session, connected and subscribed.
    let mut ws = server.ws(WsOptions::json().origin(ORIGIN_A)).await;
    ws.handshake().await;
    let reply = ws.request(subscribe(&channel)).await;
    assert_eq!(reply.error, None, "{reply:?}");

    // An HTTP-streaming session, subscribed through /emulation.
    let mut stream = StreamClient::http_stream(addr, Encoding::Json, Some(ORIGIN_A)).await;
    let reply = stream.request(subscribe(&channel), 2).await;
    assert!(reply.subscribe.is_some(), "{reply:?}");

    assert_eq!(handshake_status(addr, ORIGIN_B).await, 403);

    // Edit the file in place (truncate + write, as an editor without atomic save does).
    std::fs::write(
        server.config_path(),
        Server::config_text(&origins_yaml(ORIGIN_B)),
    )
    .unwrap();
    wait_reloads(&server, "applied", 1.0).await;

    assert_eq!(handshake_status(addr, ORIGIN_B).await, 101);
    assert_eq!(handshake_status(addr, ORIGIN_A).await, 403);

    // Both old sessions are still there.
    let reply = ws.request(rpc("echo", &json!({"still": "here"}))).await;
    assert_eq!(reply.error, None, "{reply:?}");
    let result = reply.rpc.expect("rpc result");
    assert_eq!(
        crate::support::json_of(&result.data),
        json!({"still": "here"})
    );

    api_ok(
        server.admin_addr,
        "publish",
        &json!({"channel": channel, "data": {"after": "reload"}}),
        None,
    )
    .await;
    let push = ws
        .expect_push(
            "publication after reload",
            crate::support::WAIT,
            is_publication_on(&channel),
        )
        .await;
    assert_eq!(
        crate::support::json_of(&push.r#pub.unwrap().data),
        json!({"after": "reload"})
    );
    let data = stream.expect_publication(&channel).await;
    assert_eq!(data, json!({"after": "reload"}));
}

/// Kubernetes ConfigMap layout: `config.yaml -> ..data/config.yaml`, `..data -> ..2026_1`.
/// Publishing `..2026_2` and renaming a new `..data` symlink over the old one reloads.
#[tokio::test]
async fn configmap_symlink_swap_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let write_generation = |name: &str, origin: &str| {
        std::fs::create_dir(root.join(name)).unwrap();
        std::fs::write(
            root.join(name).join("config.yaml"),
            Server::config_text(&origins_yaml(origin)),
        )
        .unwrap();
    };
    write_generation("..2026_1", ORIGIN_A);
    std::os::unix::fs::symlink("..2026_1", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/config.yaml", root.join("config.yaml")).unwrap();
    let config_path = root.join("config.yaml");

    let server = Server::start_with_config_file(dir, config_path.clone()).await;
    server.wait_ready(RELOAD_WAIT).await;
    let addr = server.client_addr;
    assert_eq!(handshake_status(addr, ORIGIN_A).await, 101);
    assert_eq!(handshake_status(addr, ORIGIN_B).await, 403);

    let mut live = server.ws(WsOptions::json().origin(ORIGIN_A)).await;
    live.handshake().await;

    // What the kubelet does: new timestamped dir, new `..data_tmp` symlink, atomic rename.
    write_generation("..2026_2", ORIGIN_B);
    std::os::unix::fs::symlink("..2026_2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join("..2026_1")).unwrap();

    wait_reloads(&server, "applied", 1.0).await;
    assert_eq!(handshake_status(addr, ORIGIN_B).await, 101);
    assert_eq!(handshake_status(addr, ORIGIN_A).await, 403);
    let reply = live.request(rpc("echo", &json!("ok"))).await;
    assert_eq!(reply.error, None, "live session after the swap: {reply:?}");
}

/// An unknown key or a duration without a unit is rejected (counted as `rejected`), and the
/// old config keeps serving. SIGHUP re-reads the file even when it did not change.
#[tokio::test]
async fn invalid_edit_is_rejected_and_sighup_reloads() {
    let mut server = Server::start(&origins_yaml(ORIGIN_A)).await;
    server.wait_ready(RELOAD_WAIT).await;
    let addr = server.client_addr;
    let mut live = server.ws(WsOptions::json().origin(ORIGIN_A)).await;
    live.handshake().await;

    let invalid_edits = [
        format!("{}unknown_key: 1\n", origins_yaml(ORIGIN_B)),
        format!("{}ping_interval: 25\n", origins_yaml(ORIGIN_B)),
        // Parses, but fails validation (pong_timeout must be shorter than ping_interval).
        format!("{}ping_interval: \"5s\"\n", origins_yaml(ORIGIN_B)),
    ];
    for (index, edit) in invalid_edits.iter().enumerate() {
        server.rewrite_config(edit);
        let scraped = wait_reloads(&server, "rejected", (index + 1) as f64).await;
        assert_eq!(
            scraped.value("sidewire_config_reloads_total", &[("result", "applied")]),
            0.0,
            "an invalid edit was applied:\n{edit}"
        );
        // The old config still serves.
        assert_eq!(
            handshake_status(addr, ORIGIN_A).await,
            101,
            "after edit {index}"
        );
        assert_eq!(
            handshake_status(addr, ORIGIN_B).await,
            403,
            "after edit {index}"
        );
    }

    // SIGHUP re-reads the (still invalid, unchanged) file: one more rejection.
    let rejected_before = invalid_edits.len() as f64;
    server.signal("HUP");
    wait_reloads(&server, "rejected", rejected_before + 1.0).await;

    // Back to the original text: parsed, and the same as the config in force.
    let started = Instant::now();
    server.rewrite_config(&origins_yaml(ORIGIN_A));
    wait_reloads(&server, "unchanged", 1.0).await;
    // SIGHUP with an unchanged file still reloads (counted as unchanged).
    server.signal("HUP");
    let scraped = wait_reloads(&server, "unchanged", 2.0).await;
    assert_eq!(
        scraped.value("sidewire_config_reloads_total", &[("result", "rejected")]),
        rejected_before + 1.0,
        "after {:?}",
        started.elapsed()
    );
    assert!(server.alive(), "SIGHUP must not stop the process");

    // A valid change sent with SIGHUP right after writing is applied.
    server.rewrite_config(&origins_yaml(ORIGIN_B));
    server.signal("HUP");
    wait_reloads(&server, "applied", 1.0).await;
    assert_eq!(handshake_status(addr, ORIGIN_B).await, 101);
    assert_eq!(handshake_status(addr, ORIGIN_A).await, 403);

    let reply = live.request(rpc("echo", &json!(1))).await;
    assert_eq!(
        reply.error, None,
        "live session after the reloads: {reply:?}"
    );
}

/// A SIGHUP sent as soon as the "listening" line is printed (what a supervisor that reloads
/// right after startup does) is a reload, never a kill: the handler must be installed before
/// the line announces the process. Repeated because the window is short.
#[tokio::test]
async fn sighup_right_after_the_listening_line_reloads() {
    for attempt in 0..5 {
        let mut server = Server::start("").await;
        server.signal("HUP");
        if try_http(server.admin_addr, "GET", "/healthz", &[], None)
            .await
            .is_err()
        {
            let status = server.wait_exit(WAIT).await;
            panic!(
                "attempt {attempt}: sidewire did not survive a SIGHUP sent right after its listening line (exit: {status:?})"
            );
        }
        wait_reloads(&server, "unchanged", 1.0).await;
    }
}

/// A config naming a certificate that is not there yet is rejected, and the old config (and
/// certificate) keep serving; once the files appear the same config file is applied, without
/// being touched again: a rejected config is retried.
#[tokio::test]
async fn a_config_rejected_for_a_missing_certificate_is_applied_once_it_appears() {
    use crate::tls::{connector, install, make_cert, peer_cert, tls_connect};
    let first_dir = tempfile::tempdir().unwrap();
    let later_dir = tempfile::tempdir().unwrap();
    let first = make_cert("sidewire-reload-one", 1);
    let second = make_cert("sidewire-reload-two", 2);
    install(&first, first_dir.path());
    let tls_yaml = |dir: &std::path::Path| {
        format!(
            "tls:\n  cert_file: \"{}\"\n  key_file: \"{}\"\n",
            dir.join("tls.crt").display(),
            dir.join("tls.key").display()
        )
    };
    let server = Server::start(&tls_yaml(first_dir.path())).await;
    server.wait_ready(RELOAD_WAIT).await;
    let trusting_both = connector(&[&first, &second], &[b"http/1.1"]);
    let served = |tls: std::io::Result<_>| peer_cert(&tls.expect("TLS handshake"));

    server.rewrite_config(&tls_yaml(later_dir.path()));
    let scraped = wait_reloads(&server, "rejected", 1.0).await;
    assert_eq!(
        scraped.value("sidewire_config_reloads_total", &[("result", "applied")]),
        0.0,
        "a config whose certificate is missing was applied"
    );
    let tls = tls_connect(&trusting_both, server.client_addr).await;
    assert_eq!(served(tls), first.der, "the old certificate still serves");

    // The certificate is mounted after the config: no further edit of the config file.
    install(&second, later_dir.path());
    wait_reloads(&server, "applied", 1.0).await;
    let tls = tls_connect(&trusting_both, server.client_addr).await;
    assert_eq!(
        served(tls),
        second.der,
        "the retried config serves its certificate"
    );
}
