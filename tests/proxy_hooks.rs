//! Centrifugo-compatible proxy hooks of the embedded hub, on the real binary against an
//! in-test fake backend (hyper on an ephemeral port): connect, subscribe, publish, rpc,
//! refresh and sub_refresh; error / disconnect mapping; failures (500, timeout) answered with
//! error 100 and never a hang; headers forwarded from the connection request (and never from
//! emulation POSTs); metrics; the bound on calls in flight; `sidewire check`; the hooks with
//! the Redis engine across two replicas.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use sidewire::protocol::client::{Command, ConnectRequest, SubscribeRequest};
use support::*;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// One request the fake backend received.
#[derive(Debug, Clone)]
struct Call {
    path: String,
    headers: http::HeaderMap,
    body: Value,
}

/// How the fake backend answers.
enum Answer {
    Json(Value),
    Delayed(Duration, Value),
    Status(u16),
    Hang,
}

type Answerer = dyn Fn(&str, &Value, &http::HeaderMap) -> Answer + Send + Sync;

/// A fake backend implementing the hook endpoints with `answer`, recording every call.
struct HookBackend {
    addr: SocketAddr,
    calls: Arc<Mutex<Vec<Call>>>,
    task: JoinHandle<()>,
}

impl Drop for HookBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HookBackend {
    async fn start(answer: Arc<Answerer>) -> HookBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend addr");
        let calls: Arc<Mutex<Vec<Call>>> = Arc::default();
        let recorded = calls.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let (answer, recorded) = (answer.clone(), recorded.clone());
                connections.spawn(async move {
                    let service = service_fn(move |request: hyper::Request<Incoming>| {
                        let (answer, recorded) = (answer.clone(), recorded.clone());
                        async move {
                            let (parts, body) = request.into_parts();
                            let bytes = body.collect().await.map(|b| b.to_bytes());
                            let body: Value = bytes
                                .ok()
                                .and_then(|b| serde_json::from_slice(&b).ok())
                                .unwrap_or(Value::Null);
                            let path = parts.uri.path().to_owned();
                            let reply = answer(&path, &body, &parts.headers);
                            recorded.lock().unwrap().push(Call {
                                path,
                                headers: parts.headers,
                                body,
                            });
                            let response = match reply {
                                Answer::Json(value) => hyper::Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(value.to_string()))),
                                Answer::Delayed(delay, value) => {
                                    tokio::time::sleep(delay).await;
                                    hyper::Response::builder()
                                        .body(Full::new(Bytes::from(value.to_string())))
                                }
                                Answer::Status(code) => hyper::Response::builder()
                                    .status(code)
                                    .body(Full::new(Bytes::from_static(b"nope"))),
                                Answer::Hang => {
                                    std::future::pending::<()>().await;
                                    unreachable!()
                                }
                            };
                            Ok::<_, Infallible>(response.unwrap())
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        HookBackend { addr, calls, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn calls(&self, path: &str) -> Vec<Call> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.path == path)
            .cloned()
            .collect()
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `user=NAME` from a Cookie header.
fn cookie_user(headers: &http::HeaderMap) -> String {
    headers
        .get("cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(';')
                .find_map(|kv| kv.trim().strip_prefix("user=").map(str::to_owned))
        })
        .unwrap_or_default()
}

/// The backend every test uses: decisions by cookie user, channel and method.
fn backend_logic(path: &str, body: &Value, headers: &http::HeaderMap) -> Answer {
    match path {
        "/connect" => match cookie_user(headers).as_str() {
            "" => Answer::Json(json!({"error": {"code": 1001, "message": "no cookie"}})),
            "bad" => Answer::Json(json!({"error": {"code": 1000, "message": "bad user"}})),
            "gone" => Answer::Json(json!({"disconnect": {"code": 4501, "reason": "gone"}})),
            "slow" => Answer::Hang,
            "broken" => Answer::Status(500),
            "nobody" => Answer::Json(json!({})),
            "stray" => {
                Answer::Json(json!({"result": {"user": "stray", "channels": ["nowhere:x"]}}))
            }
            "short" => Answer::Json(json!({"result": {"user": "short", "expire_at": now() + 1}})),
            "brief" => Answer::Json(json!({"result": {"user": "brief", "expire_at": now() + 1}})),
            user => Answer::Json(json!({"result": {
                "user": user,
                "data": {"hello": user},
                "info": {"name": user},
                "channels": [format!("news:{user}")],
                "meta": {"tier": "gold"},
            }})),
        },
        "/refresh" => match body["user"].as_str().unwrap_or_default() {
            "short" if body["meta"].is_null() => {
                Answer::Json(json!({"result": {"expire_at": now() + 600}}))
            }
            _ => Answer::Json(json!({"result": {"expired": true}})),
        },
        "/subscribe" => {
            let channel = body["channel"].as_str().unwrap_or_default();
            if channel.starts_with("sub:open") {
                Answer::Json(
                    json!({"result": {"data": {"granted": channel}, "info": {"role": "reader"}}}),
                )
            } else if channel.starts_with("sub:slow") {
                Answer::Delayed(
                    Duration::from_millis(400),
                    json!({"result": {"data": {"granted": channel}}}),
                )
            } else if channel.starts_with("sub:short") {
                Answer::Json(json!({"result": {"expire_at": now() + 1}}))
            } else if channel.starts_with("sub:gone") {
                Answer::Json(json!({"disconnect": {"code": 4502, "reason": "no"}}))
            } else {
                Answer::Json(json!({"error": {"code": 1003, "message": "denied"}}))
            }
        }
        "/sub_refresh" => Answer::Json(json!({"result": {"expired": true}})),
        "/publish" => match body["channel"].as_str().unwrap_or_default() {
            "pub:ok" => Answer::Json(json!({"result": {"data": {"rewritten": body["data"]}}})),
            "pub:keep" => Answer::Json(json!({"result": {}})),
            _ => Answer::Json(json!({"error": {"code": 1004, "message": "read only"}})),
        },
        "/rpc" => match body["method"].as_str().unwrap_or_default() {
            "app:sum" => {
                let sum = body["data"]["a"].as_i64().unwrap_or(0)
                    + body["data"]["b"].as_i64().unwrap_or(0);
                Answer::Json(json!({"result": {"data": {"sum": sum}}}))
            }
            "app:hang" => Answer::Hang,
            // Over the 1 MiB bound on hook responses.
            "app:huge" => Answer::Json(json!({"result": {"data": {"blob": "x".repeat(2 << 20)}}})),
            "app:garbage" => Answer::Json(json!(["not", "an", "answer"])),
            _ => Answer::Json(json!({"error": {"code": 1005, "message": "unknown method"}})),
        },
        _ => Answer::Status(404),
    }
}

/// Sidecar config with every hook pointing at `backend`.
fn hooks_yaml(backend: &HookBackend, extra_hub: &str) -> String {
    format!(
        r#"http_stream: true
hub:
{extra_hub}
  client:
    proxy:
      connect:
        enabled: true
        endpoint: "{connect}"
        timeout: "500ms"
        http_headers: ["Cookie"]
        http:
          static_headers:
            x-proxy-secret: "s3cret"
      refresh:
        enabled: true
        endpoint: "{refresh}"
  channel:
    without_namespace:
      allow_subscribe_for_client: true
    namespaces:
      - name: news
        allow_subscribe_for_client: true
      - name: sub
        subscribe_proxy_enabled: true
        sub_refresh_proxy_enabled: true
        presence: true
        allow_presence_for_subscriber: true
      - name: pub
        publish_proxy_enabled: true
        allow_subscribe_for_client: true
        history_size: 10
        history_ttl: "60s"
        allow_history_for_subscriber: true
    proxy:
      subscribe:
        endpoint: "{subscribe}"
        include_connection_meta: true
      publish:
        endpoint: "{publish}"
      sub_refresh:
        endpoint: "{sub_refresh}"
  rpc:
    proxy:
      endpoint: "{rpc}"
      timeout: "3s"
      http_headers: ["cookie"]
    namespaces:
      - name: app
        proxy_enabled: true
"#,
        connect = backend.url("/connect"),
        refresh = backend.url("/refresh"),
        subscribe = backend.url("/subscribe"),
        publish = backend.url("/publish"),
        sub_refresh = backend.url("/sub_refresh"),
        rpc = backend.url("/rpc"),
    )
}

async fn setup(extra_hub: &str) -> (HookBackend, Server) {
    let backend = HookBackend::start(Arc::new(backend_logic)).await;
    let server = Server::start(&hooks_yaml(&backend, extra_hub)).await;
    (backend, server)
}

async fn client_as(server: &Server, user: &str) -> WsClient {
    server
        .ws(WsOptions::json().header("Cookie", &format!("theme=dark; user={user}")))
        .await
}

fn error_code(reply: &sidewire::protocol::client::Reply) -> u32 {
    reply.error.as_ref().map(|e| e.code).unwrap_or(0)
}

async fn metrics_text(server: &Server) -> String {
    scrape(server.admin_addr).await.text
}

#[tokio::test]
async fn connect_hook_authenticates_by_cookie_and_subscribes_server_side() {
    let (backend, server) = setup("").await;
    let mut client = client_as(&server, "alice").await;
    let reply = client
        .connect_with(ConnectRequest {
            name: "js".into(),
            data: json_bytes(&json!({"app": 1})),
            ..Default::default()
        })
        .await;
    let result = reply.connect.clone().unwrap_or_else(|| panic!("{reply:?}"));
    assert_eq!(json_of(&result.data), json!({"hello": "alice"}));
    assert!(result.subs.contains_key("news:alice"), "{result:?}");
    assert!(!result.expires);

    let calls = backend.calls("/connect");
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.body["client"], json!(result.client));
    assert_eq!(call.body["transport"], "websocket");
    assert_eq!(call.body["protocol"], "json");
    assert_eq!(call.body["encoding"], "json");
    assert_eq!(call.body["name"], "js");
    assert_eq!(call.body["data"], json!({"app": 1}));
    assert!(call.body.get("user").is_none(), "{}", call.body);
    assert_eq!(header_of(call, "cookie"), "theme=dark; user=alice");
    assert_eq!(header_of(call, "x-proxy-secret"), "s3cret");
    assert_eq!(header_of(call, "content-type"), "application/json");
    // Not listed in http_headers, though forwarded over the Link.
    assert!(call.headers.get("user-agent").is_none());

    // The server-side subscription delivers publications.
    api_publish(server.admin_addr, "news:alice", &json!({"n": 1})).await;
    let publication = publication_on(&mut client, "news:alice").await;
    assert_eq!(json_of(&publication.data), json!({"n": 1}));
}

async fn publication_on(
    client: &mut WsClient,
    channel: &str,
) -> sidewire::protocol::client::Publication {
    let push = client
        .expect_push(&format!("publication on {channel}"), WAIT, |p| {
            p.channel == channel && p.r#pub.is_some()
        })
        .await;
    push.r#pub.unwrap_or_default()
}

fn header_of(call: &Call, name: &str) -> String {
    call.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn connect_hook_error_and_disconnect_reach_the_client() {
    let (_backend, server) = setup("").await;
    let mut bad = client_as(&server, "bad").await;
    let reply = bad.connect_with(ConnectRequest::default()).await;
    let error = reply.error.clone().unwrap_or_else(|| panic!("{reply:?}"));
    assert_eq!((error.code, error.message.as_str()), (1000, "bad user"));
    assert!(!error.temporary);

    let mut gone = client_as(&server, "gone").await;
    gone.send_commands(&[Command {
        id: 1,
        connect: Some(ConnectRequest::default()),
        ..Default::default()
    }])
    .await;
    let (code, reason) = gone.expect_close(WAIT).await;
    assert_eq!((code, reason.as_str()), (4501, "gone"));

    // No `result`: no credentials, refused as a bad request (3501).
    let mut nobody = client_as(&server, "nobody").await;
    nobody
        .send_commands(&[Command {
            id: 1,
            connect: Some(ConnectRequest::default()),
            ..Default::default()
        }])
        .await;
    assert_eq!(nobody.expect_close(WAIT).await.0, 3501);

    // A server-side channel of an unknown namespace: 102 (Centrifugo).
    let mut stray = client_as(&server, "stray").await;
    assert_eq!(
        error_code(&stray.connect_with(ConnectRequest::default()).await),
        102
    );
}

#[tokio::test]
async fn hook_failures_answer_error_100_without_hanging() {
    let (_backend, server) = setup("").await;
    let mut broken = client_as(&server, "broken").await;
    let reply = broken.connect_with(ConnectRequest::default()).await;
    let error = reply.error.clone().unwrap_or_else(|| panic!("{reply:?}"));
    assert_eq!(error.code, 100);
    assert!(error.temporary);

    // The hook hangs: the 500ms timeout answers 100, well before the 10s command timeout.
    let started = Instant::now();
    let mut slow = client_as(&server, "slow").await;
    assert_eq!(
        error_code(&slow.connect_with(ConnectRequest::default()).await),
        100
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    let text = metrics_text(&server).await;
    for sample in [
        r#"sidewire_hub_proxy_errors_total{hook="connect",kind="status"} 1"#,
        r#"sidewire_hub_proxy_errors_total{hook="connect",kind="timeout"} 1"#,
        r#"sidewire_hub_proxy_calls_total{hook="connect"} 2"#,
        r#"sidewire_hub_proxy_duration_seconds_count{hook="connect"} 2"#,
    ] {
        assert!(text.contains(sample), "{sample} not in metrics");
    }
}

#[tokio::test]
async fn a_connection_token_takes_the_jwt_path() {
    let secret = "hooks-secret";
    let backend = HookBackend::start(Arc::new(backend_logic)).await;
    let yaml = hooks_yaml(&backend, "").replacen(
        "  client:\n",
        &format!("  client:\n    token:\n      hmac_secret_key: \"{secret}\"\n"),
        1,
    );
    let server = Server::start(&yaml).await;
    let mut client = client_as(&server, "alice").await;
    let token = hs256_token(secret, "jwt-user", 1);
    let reply = client.connect_with(connect_token(&token)).await;
    let result = reply.connect.clone().unwrap_or_else(|| panic!("{reply:?}"));
    assert!(backend.calls("/connect").is_empty());
    // With the refresh hook on, the hub (not the client) refreshes token connections too.
    assert!(!result.expires, "{result:?}");
    let (code, _) = client.expect_close(Duration::from_secs(8)).await;
    assert_eq!(code, 3005, "the hook answered `expired`");
    let calls = backend.calls("/refresh");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].body["user"], "jwt-user");
}

#[tokio::test]
async fn subscribe_hook_grants_or_refuses_and_sees_the_user() {
    let (backend, server) = setup("").await;
    let mut client = client_as(&server, "carol").await;
    client.handshake().await;
    let reply = client
        .request(subscribe_with(SubscribeRequest {
            channel: "sub:open-1".into(),
            data: json_bytes(&json!({"want": "it"})),
            ..Default::default()
        }))
        .await;
    let result = reply
        .subscribe
        .clone()
        .unwrap_or_else(|| panic!("{reply:?}"));
    assert_eq!(json_of(&result.data), json!({"granted": "sub:open-1"}));
    let denied = client.request(subscribe("sub:closed")).await;
    let error = denied.error.clone().unwrap_or_else(|| panic!("{denied:?}"));
    assert_eq!((error.code, error.message.as_str()), (1003, "denied"));

    let calls = backend.calls("/subscribe");
    assert_eq!(calls.len(), 2);
    let call = &calls[0];
    assert_eq!(call.body["user"], "carol");
    assert_eq!(call.body["channel"], "sub:open-1");
    assert_eq!(call.body["data"], json!({"want": "it"}));
    assert_eq!(call.body["meta"], json!({"tier": "gold"}));
    // The subscribe hook's http_headers is empty: no cookie.
    assert!(call.headers.get("cookie").is_none());

    // A `disconnect` answer closes the connection with its code.
    client
        .send_commands(&[Command {
            id: 99,
            subscribe: Some(SubscribeRequest {
                channel: "sub:gone".into(),
                ..Default::default()
            }),
            ..Default::default()
        }])
        .await;
    assert_eq!(client.expect_close(WAIT).await.0, 4502);
}

#[tokio::test]
async fn an_unsubscribe_cancels_a_subscribe_waiting_for_its_hook() {
    let (_backend, server) = setup("").await;
    let mut client = client_as(&server, "ivan").await;
    client.handshake().await;
    let commands = [
        Command {
            id: 10,
            ..subscribe("sub:slow-a")
        },
        Command {
            id: 11,
            ..unsubscribe("sub:slow-a")
        },
        Command {
            id: 12,
            ..subscribe("sub:slow-b")
        },
        Command {
            id: 13,
            ..subscribe("sub:slow-b")
        },
    ];
    client.send_commands(&commands).await;
    assert!(client.expect_reply(11, WAIT).await.unsubscribe.is_some());
    // A second subscribe while the first waits for the hook: 105.
    assert_eq!(error_code(&client.expect_reply(13, WAIT).await), 105);
    // The cancelled one is answered (temporary error), never applied.
    assert_eq!(error_code(&client.expect_reply(10, WAIT).await), 100);
    let reply = client.expect_reply(12, WAIT).await;
    assert!(reply.subscribe.is_some(), "{reply:?}");
    let channels = api_ok(server.admin_addr, "channels", &json!({}), None).await;
    let listed = &channels["channels"];
    assert!(listed.get("sub:slow-b").is_some(), "{channels}");
    assert!(listed.get("sub:slow-a").is_none(), "{channels}");
}

#[tokio::test]
async fn publish_hook_rewrites_or_refuses_and_decides_alone() {
    let (backend, server) = setup("").await;
    let mut client = client_as(&server, "dave").await;
    client.handshake().await;
    let reply = client.request(subscribe("pub:ok")).await;
    assert!(reply.error.is_none(), "{reply:?}");
    let reply = client
        .request(publish("pub:ok", &json!({"text": "hi"})))
        .await;
    assert!(reply.publish.is_some(), "{reply:?}");
    let publication = publication_on(&mut client, "pub:ok").await;
    assert_eq!(
        json_of(&publication.data),
        json!({"rewritten": {"text": "hi"}})
    );
    // The publication carries the publisher's info.
    assert_eq!(publication.info.map(|i| i.user), Some("dave".to_owned()));

    // No data in the result: the client's data is published.
    client.request(subscribe("pub:keep")).await;
    client
        .request(publish("pub:keep", &json!({"same": 1})))
        .await;
    let publication = publication_on(&mut client, "pub:keep").await;
    assert_eq!(json_of(&publication.data), json!({"same": 1}));

    // Refused although the namespace has no allow_publish_* flag either way.
    let reply = client.request(publish("pub:other", &json!({}))).await;
    assert_eq!(error_code(&reply), 1004);
    assert_eq!(backend.calls("/publish").len(), 3);
    assert_eq!(backend.calls("/publish")[0].body["user"], "dave");
}

#[tokio::test]
async fn rpc_is_routed_by_namespace_and_echo_stays_built_in() {
    let (backend, server) = setup("").await;
    let mut client = client_as(&server, "erin").await;
    client.handshake().await;
    let reply = client
        .request(rpc("app:sum", &json!({"a": 2, "b": 3})))
        .await;
    let result = reply.rpc.clone().unwrap_or_else(|| panic!("{reply:?}"));
    assert_eq!(json_of(&result.data), json!({"sum": 5}));
    let reply = client.request(rpc("app:nothing", &json!({}))).await;
    assert_eq!(error_code(&reply), 1005);
    // Methods without a namespace are not proxied here: the built-in echo answers.
    let reply = client.request(rpc("echo", &json!({"x": 1}))).await;
    assert_eq!(
        json_of(&reply.rpc.unwrap_or_default().data),
        json!({"x": 1})
    );
    let reply = client.request(rpc("other:x", &json!({}))).await;
    assert_eq!(error_code(&reply), 104);
    // An oversized or malformed hook answer: error 100, counted as a `response` error.
    let reply = client.request(rpc("app:huge", &json!({}))).await;
    assert_eq!(error_code(&reply), 100);
    let reply = client.request(rpc("app:garbage", &json!({}))).await;
    assert_eq!(error_code(&reply), 100);
    let text = metrics_text(&server).await;
    assert!(
        text.contains(r#"sidewire_hub_proxy_errors_total{hook="rpc",kind="response"} 2"#),
        "response errors"
    );
    let calls = backend.calls("/rpc");
    assert_eq!(calls.len(), 4);
    assert_eq!(calls[0].body["method"], "app:sum");
    assert_eq!(calls[0].body["user"], "erin");
    assert_eq!(header_of(&calls[0], "cookie"), "theme=dark; user=erin");
}

#[tokio::test]
async fn emulation_post_headers_never_reach_the_backend() {
    let (backend, server) = setup("").await;
    let mut stream = StreamSession::connect(server.client_addr, "user=frank").await;
    stream
        .emulate(
            server.client_addr,
            "user=mallory",
            &json!({"id": 2, "rpc": {"method": "app:sum", "data": {"a": 1, "b": 1}}}),
        )
        .await;
    let reply = stream.expect(|m| m["id"] == 2).await;
    assert_eq!(reply["rpc"]["data"], json!({"sum": 2}), "{reply}");
    let calls = backend.calls("/rpc");
    assert_eq!(calls.len(), 1);
    assert_eq!(header_of(&calls[0], "cookie"), "user=frank");
    assert_eq!(calls[0].body["transport"], "http_stream");
    assert_eq!(
        backend.calls("/connect")[0].body["transport"],
        "http_stream"
    );
}

#[tokio::test]
async fn calls_in_flight_are_bounded_and_over_limit_answers_100_at_once() {
    let (_backend, server) = setup("  proxy_max_in_flight: 2").await;
    let mut client = client_as(&server, "grace").await;
    client.handshake().await;
    let commands: Vec<Command> = (0..10)
        .map(|i| Command {
            id: 100 + i,
            ..rpc("app:hang", &json!({}))
        })
        .collect();
    client.send_commands(&commands).await;
    // Eight answered at once (within WAIT, long before the 3s hook timeout ends the others).
    let started = Instant::now();
    let mut early = 0;
    let mut answered = HashMap::new();
    while answered.len() < 10 {
        let reply = client.next_reply(WAIT).await;
        if reply.id >= 100 {
            if started.elapsed() < Duration::from_secs(2) {
                early += 1;
            }
            answered.insert(reply.id, error_code(&reply));
        }
    }
    assert_eq!(early, 8, "{answered:?}");
    assert!(answered.values().all(|code| *code == 100), "{answered:?}");
    let text = metrics_text(&server).await;
    assert!(
        text.contains(r#"sidewire_hub_proxy_errors_total{hook="rpc",kind="overloaded"} 8"#),
        "overloaded count"
    );
    assert!(
        text.contains(r#"sidewire_hub_proxy_errors_total{hook="rpc",kind="timeout"} 2"#),
        "timeout count"
    );
    // The bound frees up again: a new call gets through.
    let reply = client
        .request(rpc("app:sum", &json!({"a": 1, "b": 2})))
        .await;
    assert!(reply.rpc.is_some(), "{reply:?}");
}

#[tokio::test]
async fn refresh_hook_prolongs_or_ends_expiring_connections() {
    let (backend, server) = setup("").await;
    // The hook answers a later expire_at for "short": the connection stays.
    let mut short = client_as(&server, "short").await;
    let reply = short.connect_with(ConnectRequest::default()).await;
    let result = reply.connect.clone().unwrap_or_else(|| panic!("{reply:?}"));
    assert!(
        !result.expires,
        "the hub refreshes, not the client: {result:?}"
    );
    eventually(Duration::from_secs(8), "refresh hook called", || async {
        !backend.calls("/refresh").is_empty()
    })
    .await;
    let call = &backend.calls("/refresh")[0];
    assert_eq!(call.body["user"], "short");
    assert_eq!(call.body["client"], json!(result.client));
    // Past the old expiry and a few sweeps later, still connected.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let reply = short.request(rpc("echo", &json!({"still": "here"}))).await;
    assert!(reply.rpc.is_some(), "{reply:?}");
    assert_eq!(backend.calls("/refresh").len(), 1);

    // The hook answers `expired` for "brief": closed with 3005.
    let mut brief = client_as(&server, "brief").await;
    brief.handshake().await;
    let (code, _) = brief.expect_close(Duration::from_secs(8)).await;
    assert_eq!(code, 3005);
}

#[tokio::test]
async fn sub_refresh_hook_ends_an_expired_subscription() {
    let (backend, server) = setup("").await;
    let mut client = client_as(&server, "heidi").await;
    client.handshake().await;
    let reply = client.request(subscribe("sub:short")).await;
    let result = reply
        .subscribe
        .clone()
        .unwrap_or_else(|| panic!("{reply:?}"));
    assert!(!result.expires, "sub_refresh is server-side: {result:?}");
    let push = client
        .expect_push("unsubscribe sub:short", Duration::from_secs(8), |p| {
            p.channel == "sub:short" && p.unsubscribe.is_some()
        })
        .await;
    assert_eq!(push.unsubscribe.map(|u| u.code), Some(2501));
    let calls = backend.calls("/sub_refresh");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].body["channel"], "sub:short");
    assert_eq!(calls[0].body["user"], "heidi");
}

#[tokio::test]
async fn check_names_hooks_that_point_nowhere() {
    let yaml = r#"
hub:
  client:
    proxy:
      connect:
        enabled: true
      refresh:
        endpoint: "ftp://example.com/refresh"
  channel:
    namespaces:
      - name: chat
        publish_proxy_enabled: true
  rpc:
    without_namespace:
      proxy_enabled: true
"#;
    let error = Server::try_start(yaml).await.err().unwrap_or_default();
    for field in [
        "hub.client.proxy.connect.endpoint: required by hub.client.proxy.connect.enabled",
        "hub.client.proxy.refresh.endpoint: must be an http:// or https:// URL",
        "hub.channel.proxy.publish.endpoint: required by hub.channel.namespaces[0].publish_proxy_enabled",
        "hub.rpc.proxy.endpoint: required",
    ] {
        assert!(error.contains(field), "{field} missing in {error}");
    }
}

// === a raw HTTP-streaming session with its own Cookie ===

struct StreamSession {
    body: Incoming,
    buffer: Vec<u8>,
    inbox: Vec<Value>,
    session: String,
    node: String,
    _driver: JoinHandle<()>,
}

impl StreamSession {
    async fn connect(addr: SocketAddr, cookie: &str) -> StreamSession {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .expect("handshake");
        let driver = tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = hyper::Request::builder()
            .method("POST")
            .uri("/connection/http_stream")
            .header("host", addr.to_string())
            .header("content-type", "application/json")
            .header("cookie", cookie)
            .body(Full::new(Bytes::from_static(br#"{"id":1,"connect":{}}"#)))
            .expect("request");
        let response = tokio::time::timeout(WAIT, sender.send_request(request))
            .await
            .expect("response in time")
            .expect("response");
        assert_eq!(response.status(), 200);
        let mut stream = StreamSession {
            body: response.into_body(),
            buffer: Vec::new(),
            inbox: Vec::new(),
            session: String::new(),
            node: String::new(),
            _driver: driver,
        };
        let reply = stream.expect(|m| m["id"] == 1).await;
        stream.session = reply["connect"]["session"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        stream.node = reply["connect"]["node"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(!stream.session.is_empty(), "{reply}");
        stream
    }

    async fn expect(&mut self, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(index) = self.inbox.iter().position(&matches) {
                return self.inbox.remove(index);
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .unwrap_or_else(|_| panic!("nothing matching; got {:?}", self.inbox))
                .expect("stream open")
                .expect("frame");
            if let Ok(data) = frame.into_data() {
                self.buffer.extend_from_slice(&data);
                while let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = self.buffer.drain(..=end).collect();
                    if let Ok(value) = serde_json::from_slice(&line[..line.len() - 1]) {
                        self.inbox.push(value);
                    }
                }
            }
        }
    }

    async fn emulate(&self, addr: SocketAddr, cookie: &str, command: &Value) {
        let body = json!({"node": self.node, "session": self.session, "data": command.to_string()});
        let (status, text) = http(
            addr,
            "POST",
            "/emulation",
            &[("cookie", cookie)],
            Some(&body.to_string()),
        )
        .await;
        assert_eq!(status, 204, "{text}");
    }
}

/// The hooks with the Redis engine, two replicas on one Redis: what a hook grants on one
/// replica (a connect's server-side channel, a subscription, a rewritten publication) works
/// with what the other replica's clients and API do, and a hook-granted subscriber is in
/// presence on the other replica as soon as its reply arrives.
#[tokio::test]
async fn hooks_work_across_replicas_on_the_redis_engine() {
    let backend = HookBackend::start(Arc::new(backend_logic)).await;
    let redis = RedisServer::start();
    let prefix = format!("h{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let engine = format!(
        "engine:\n  type: redis\n  redis:\n    address: \"{}\"\n    prefix: \"{prefix}\"\n",
        redis.url()
    );
    let yaml = format!("{engine}{}", hooks_yaml(&backend, ""));
    let r1 = Server::start(&yaml).await;
    let r2 = Server::start(&yaml).await;
    r1.wait_ready(Duration::from_secs(10)).await;
    r2.wait_ready(Duration::from_secs(10)).await;

    // Connect hook on replica 1: its server-side channel gets what replica 2's API publishes.
    let mut alice = client_as(&r1, "alice").await;
    alice.handshake().await;
    api_publish(r2.admin_addr, "news:alice", &json!({"n": 1})).await;
    let publication = publication_on(&mut alice, "news:alice").await;
    assert_eq!(json_of(&publication.data), json!({"n": 1}));

    // Subscribe hook on replica 2: presence on replica 1 lists the subscriber at once, and
    // replica 1's API publication reaches it.
    let mut bob = client_as(&r2, "bob").await;
    let bob_id = bob.handshake().await;
    let reply = bob.request(subscribe("sub:open-x")).await;
    assert!(reply.subscribe.is_some(), "{reply:?}");
    let presence = api_ok(
        r1.admin_addr,
        "presence",
        &json!({"channel": "sub:open-x"}),
        None,
    )
    .await;
    assert!(
        presence["presence"].get(&bob_id).is_some(),
        "presence on replica 1 lacks bob: {presence}"
    );
    api_publish(r1.admin_addr, "sub:open-x", &json!({"n": 2})).await;
    let publication = publication_on(&mut bob, "sub:open-x").await;
    assert_eq!(json_of(&publication.data), json!({"n": 2}));

    // Publish hook on replica 1: the rewritten publication reaches replica 2's subscriber.
    assert!(bob.request(subscribe("pub:ok")).await.error.is_none());
    assert!(alice.request(subscribe("pub:ok")).await.error.is_none());
    let reply = alice
        .request(publish("pub:ok", &json!({"text": "hi"})))
        .await;
    assert!(reply.publish.is_some(), "{reply:?}");
    let publication = publication_on(&mut bob, "pub:ok").await;
    assert_eq!(
        json_of(&publication.data),
        json!({"rewritten": {"text": "hi"}})
    );
    assert_eq!(publication.info.map(|i| i.user), Some("alice".to_owned()));
}
