//! The Link to an external upstream (`sidewire hub`), against the real binaries: relaying,
//! losing the hub (sessions closed 3004, readiness false), reconnecting to a restarted hub,
//! and an upstream that is not there at all.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use sidewire::protocol::Encoding;
use sidewire::protocol::client::Command;
use support::*;

/// Time allowed for the sidecar to notice a lost or regained Link.
const LINK_CHANGE: Duration = Duration::from_secs(10);

fn upstream_yaml(endpoint: &str) -> String {
    format!(
        "upstream:\n  endpoint: \"{endpoint}\"\n  reconnect_backoff_min: \"50ms\"\n  reconnect_backoff_max: \"500ms\"\n"
    )
}

/// A port nobody listens on right now (bound, then released).
fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Starts a hub whose Link listens on `link`, retrying while the port is not yet reusable.
async fn hub_on(link: SocketAddr) -> Hub {
    let mut last = String::new();
    for _ in 0..50 {
        match Hub::try_start_on(link, "").await {
            Ok(hub) => return hub,
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("could not start a hub on {link}: {last}");
}

async fn readyz(server: &Server) -> u16 {
    http_get(server.admin_addr, "/readyz").await.0
}

async fn wait_readyz(server: &Server, status: u16) {
    let admin = server.admin_addr;
    eventually(
        LINK_CHANGE,
        &format!("GET /readyz == {status}"),
        || async move {
            matches!(try_http(admin, "GET", "/readyz", &[], None).await, Ok((s, _)) if s == status)
        },
    )
    .await;
}

/// A connect on a fresh connection is refused with close 3004 "upstream unavailable".
async fn assert_connect_refused(server: &Server, encoding: Encoding) {
    let mut c = server.ws(WsOptions::for_encoding(encoding)).await;
    let id = c.next_id();
    c.send_commands(&[Command {
        id,
        connect: Some(Default::default()),
        ..Default::default()
    }])
    .await;
    let (code, reason) = c.expect_close(WAIT).await;
    assert_eq!(
        (code, reason.as_str()),
        (3004, "upstream unavailable"),
        "{encoding:?}: connect while the Link is down"
    );
}

/// A client that connects, subscribes, gets an API publication and an rpc echo through `hub`.
async fn working_client(server: &Server, hub: &Hub, encoding: Encoding) -> WsClient {
    let mut c = server.ws(WsOptions::for_encoding(encoding)).await;
    c.auto_pong = true;
    c.handshake().await;
    let chan = unique_channel("via-link");
    let reply = c.request(subscribe(&chan)).await;
    assert_eq!(reply.error, None, "{reply:?}");
    api_publish(hub.api_addr, &chan, &json!({"via": "hub"})).await;
    let publication = c.expect_publication(&chan, 1).await;
    assert_eq!(json_of(&publication.data), json!({"via": "hub"}));
    let reply = c.request(rpc("echo", &json!({"e": 1}))).await;
    assert_eq!(reply.error, None, "{reply:?}");
    assert_eq!(
        json_of(&reply.rpc.expect("rpc result").data),
        json!({"e": 1})
    );
    c
}

#[tokio::test]
async fn hub_loss_closes_sessions_3004_and_a_restarted_hub_is_used() {
    let mut hub = Hub::start("").await;
    let link = hub.link_addr;
    let server = Server::start(&upstream_yaml(&hub.endpoint())).await;
    server.wait_ready(LINK_CHANGE).await;
    assert_eq!(http_get(server.admin_addr, "/healthz").await.0, 200);

    let mut json_client = working_client(&server, &hub, Encoding::Json).await;
    let mut pb_client = working_client(&server, &hub, Encoding::Protobuf).await;

    // Lose the hub: sessions are closed with a reconnect-class code, readiness drops.
    hub.kill();
    for (name, c) in [("json", &mut json_client), ("protobuf", &mut pb_client)] {
        let (code, reason) = c.expect_close(LINK_CHANGE).await;
        assert_eq!(
            (code, reason.as_str()),
            (3004, "upstream unavailable"),
            "{name} session of the lost Link"
        );
    }
    wait_readyz(&server, 503).await;
    assert_eq!(
        http_get(server.admin_addr, "/healthz").await.0,
        200,
        "healthz stays 200"
    );
    assert_connect_refused(&server, Encoding::Json).await;
    assert_connect_refused(&server, Encoding::Protobuf).await;

    // A hub comes back on the same Link address: the sidecar reconnects by itself.
    let hub = hub_on(link).await;
    wait_readyz(&server, 200).await;
    working_client(&server, &hub, Encoding::Json).await;
    working_client(&server, &hub, Encoding::Protobuf).await;
}

#[tokio::test]
async fn unreachable_upstream_refuses_connects_3004() {
    let nowhere = closed_port();
    let server = Server::start(&upstream_yaml(&format!("http://{nowhere}"))).await;
    assert_eq!(http_get(server.admin_addr, "/healthz").await.0, 200);
    assert_eq!(readyz(&server).await, 503, "readyz without a Link");
    assert_connect_refused(&server, Encoding::Json).await;
    assert_connect_refused(&server, Encoding::Protobuf).await;
    assert_eq!(readyz(&server).await, 503, "readyz still without a Link");
}

#[tokio::test]
async fn sidecar_started_before_its_hub_connects_when_it_appears() {
    let link = closed_port();
    let server = Server::start(&upstream_yaml(&format!("http://{link}"))).await;
    assert_eq!(readyz(&server).await, 503, "readyz before the hub exists");
    assert_connect_refused(&server, Encoding::Json).await;

    let hub = hub_on(link).await;
    wait_readyz(&server, 200).await;
    working_client(&server, &hub, Encoding::Json).await;
}
