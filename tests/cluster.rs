//! Three sidewire replicas on one real Redis (`engine.type: redis`), embedded hubs, behind a
//! round-robin balancer with no affinity (`tests/support/balancer.mjs`: every request goes to
//! the next replica). HTTP-stream (JSON, Protobuf) and SSE sessions opened through the
//! balancer have their `/emulation` POSTs land on other replicas, which route them through
//! Redis to the replica holding the stream; POST order is kept; unknown nodes get 404; a
//! replica killed with -9 leaves its clients to reconnect through the balancer; with Redis
//! down readiness is false and routed POSTs fail fast, and routing comes back with Redis.
//!
//! Every wait is bounded; the only polling is of scraped state (readiness, metrics, answers
//! of probe POSTs).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use sidewire::protocol::Encoding;
use tokio::time::Instant;

use support::*;

/// Replicas in every test.
const REPLICAS: usize = 3;
/// Time allowed for the replicas to see each other's announcements.
const DISCOVERY: Duration = Duration::from_secs(10);
/// Emulation outcomes counted by `/metrics`.
const EMULATION_REQUESTS: &str = "sidewire_emulation_requests_total";

/// The Redis the replicas share: one server, or a three-node Redis Cluster.
enum Redis {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl Redis {
    /// The `engine.redis` line naming it.
    fn address_line(&self) -> String {
        match self {
            Redis::Single(server) => format!("address: \"{}\"", server.url()),
            Redis::Cluster(cluster) => format!("cluster_address: {}", cluster.addresses_yaml()),
        }
    }

    fn single(&mut self) -> &mut RedisServer {
        match self {
            Redis::Single(server) => server,
            Redis::Cluster(_) => panic!("a single Redis server was expected"),
        }
    }
}

fn replica_yaml(redis: &Redis, prefix: &str, extra: &str) -> String {
    format!(
        "http_stream: true\nsse: true\nallowed_origins: [\"{ALLOWED_ORIGIN}\"]\n\
         engine:\n  type: redis\n  redis:\n    {}\n    prefix: \"{prefix}\"\n{extra}",
        redis.address_line()
    )
}

/// Redis, three ready replicas that know each other, and the balancer in front.
struct Cluster {
    redis: Redis,
    replicas: Vec<Server>,
    /// Node id of each replica (from a connect reply).
    nodes: Vec<String>,
    balancer: Balancer,
}

impl Cluster {
    async fn start() -> Cluster {
        Cluster::start_with("").await
    }

    /// Like `start`, with `extra` YAML in every replica's config.
    async fn start_with(extra: &str) -> Cluster {
        Cluster::start_on(Redis::Single(RedisServer::start()), extra).await
    }

    /// Replicas on `redis`, with `extra` YAML in every replica's config.
    async fn start_on(redis: Redis, extra: &str) -> Cluster {
        let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
        let mut replicas = Vec::new();
        for _ in 0..REPLICAS {
            let server = Server::start(&replica_yaml(&redis, &prefix, extra)).await;
            server.wait_ready(Duration::from_secs(10)).await;
            replicas.push(server);
        }
        let mut nodes = Vec::new();
        for server in &replicas {
            let stream = StreamClient::http_stream(server.client_addr, Encoding::Json, None).await;
            nodes.push(stream.node.clone());
        }
        let addrs: Vec<SocketAddr> = replicas.iter().map(|s| s.client_addr).collect();
        let balancer = Balancer::start(&addrs).await;
        let cluster = Cluster {
            redis,
            replicas,
            nodes,
            balancer,
        };
        for from in 0..REPLICAS {
            for to in 0..REPLICAS {
                if from != to {
                    cluster.await_route(from, to, 204, DISCOVERY).await;
                }
            }
        }
        cluster
    }

    /// Waits until an emulation POST sent straight to replica `from`, naming replica `to`'s
    /// node and a session nobody holds, is answered `status` (204 once `from` knows `to`).
    async fn await_route(&self, from: usize, to: usize, status: u16, timeout: Duration) {
        let addr = self.replicas[from].client_addr;
        let node = self.nodes[to].clone();
        eventually(
            timeout,
            &format!("replica {from} answers {status} for replica {to}'s node"),
            || {
                let node = node.clone();
                async move { probe(addr, &node).await == status }
            },
        )
        .await;
    }
}

/// Status of an emulation POST to `addr` naming `node` and an unknown session.
async fn probe(addr: SocketAddr, node: &str) -> u16 {
    fetch(
        addr,
        emulation_request(addr, Encoding::Json, node, "no-such-session", b"{}", None),
    )
    .await
    .status
}

/// Sum of the emulation outcome `outcome` over every live replica.
async fn outcome_total(replicas: &[Server], outcome: &str) -> f64 {
    let mut total = 0.0;
    for server in replicas {
        total += scrape(server.admin_addr)
            .await
            .value(EMULATION_REQUESTS, &[("outcome", outcome)]);
    }
    total
}

/// Opens a session of `flavor` through `addr`.
async fn open(addr: SocketAddr, flavor: Flavor) -> StreamClient {
    match flavor {
        Flavor::HttpStream(encoding) => StreamClient::http_stream(addr, encoding, None).await,
        Flavor::Sse => StreamClient::sse(addr, None).await,
    }
}

/// A session opened through the balancer subscribes, publishes (its own publication comes
/// back on the stream) and calls rpc; every command goes in its own POST, so with three
/// replicas most land on replicas that do not hold the stream and are routed.
async fn session_works_through_the_balancer(flavor: Flavor) {
    let cluster = Cluster::start().await;
    let addr = cluster.balancer.addr;
    let routed_before = outcome_total(&cluster.replicas, "routed").await;
    let channel = unique_channel("cluster");
    let mut stream = open(addr, flavor).await;
    let holder = header_text(&stream.headers, "x-balancer-replica");

    let reply = stream.request(subscribe(&channel), 2).await;
    assert!(reply.subscribe.is_some(), "{flavor:?} subscribe: {reply:?}");
    let reply = stream.request(publish(&channel, &json!({"n": 1})), 3).await;
    assert!(reply.publish.is_some(), "{flavor:?} publish: {reply:?}");
    let data = stream.expect_publication(&channel).await;
    assert_eq!(data, json!({"n": 1}));
    let reply = stream.request(rpc("echo", &json!({"x": 1})), 4).await;
    assert!(
        reply.rpc.is_some() || reply.error.is_some(),
        "{flavor:?} rpc got no reply: {reply:?}"
    );
    // With round-robin and one new connection per POST, at least two of the three POSTs
    // went to replicas other than the holder.
    let mut elsewhere = 0;
    for id in 5..8 {
        let fetched = stream
            .emulate_commands(&[with_id(support::presence_stats(&channel), id)])
            .await;
        assert_eq!(fetched.status, 204, "{}", fetched.text());
        if fetched.header("x-balancer-replica") != holder {
            elsewhere += 1;
        }
        let reply = stream.expect_reply(id).await;
        assert!(reply.error.is_none(), "{reply:?}");
    }
    assert!(elsewhere >= 2, "POSTs did not spread: {elsewhere}");
    let routed = outcome_total(&cluster.replicas, "routed").await;
    assert!(
        routed >= routed_before + 2.0,
        "routed POSTs {routed_before} -> {routed}"
    );
}

#[tokio::test]
async fn http_stream_json_session_works_through_the_balancer() {
    session_works_through_the_balancer(Flavor::HttpStream(Encoding::Json)).await;
}

#[tokio::test]
async fn http_stream_protobuf_session_works_through_the_balancer() {
    session_works_through_the_balancer(Flavor::HttpStream(Encoding::Protobuf)).await;
}

#[tokio::test]
async fn sse_session_works_through_the_balancer() {
    session_works_through_the_balancer(Flavor::Sse).await;
}

/// 30 publishes, one POST each through the balancer (each 204 awaited before the next): the
/// replies and publications come back in command order although the POSTs hit every replica.
#[tokio::test]
async fn post_order_is_kept_across_replicas() {
    let cluster = Cluster::start().await;
    let addr = cluster.balancer.addr;
    let channel = unique_channel("order");
    let mut stream = StreamClient::http_stream(addr, Encoding::Json, None).await;
    let reply = stream.request(subscribe(&channel), 2).await;
    assert!(reply.subscribe.is_some(), "{reply:?}");
    let ids: Vec<u32> = (3..33).collect();
    let mut replicas_hit = std::collections::BTreeSet::new();
    for &id in &ids {
        let fetched = stream
            .emulate_commands(&[with_id(publish(&channel, &json!({ "n": id })), id)])
            .await;
        assert_eq!(fetched.status, 204, "POST of id {id}: {}", fetched.text());
        replicas_hit.insert(fetched.header("x-balancer-replica"));
    }
    assert_eq!(replicas_hit.len(), REPLICAS, "{replicas_hit:?}");
    let mut replies = Vec::new();
    let mut publications = Vec::new();
    while replies.len() < ids.len() || publications.len() < ids.len() {
        let message = stream.next_message("replies and publications").await;
        if message.id != 0 {
            assert!(message.error.is_none(), "{message:?}");
            replies.push(message.id);
        } else if let Some(publication) = message
            .push
            .as_ref()
            .filter(|p| p.channel == channel)
            .and_then(|p| p.r#pub.as_ref())
        {
            publications.push(json_of(&publication.data)["n"].as_u64().unwrap() as u32);
        } else {
            panic!("unexpected message {message:?}");
        }
    }
    assert_eq!(replies, ids, "reply order");
    assert_eq!(publications, ids, "publication order");
}

/// A node nobody announced gets 404 on every replica, and a well-formed POST for another
/// replica's node with an unknown session is 204 (Centrifugo's answers).
#[tokio::test]
async fn unknown_node_is_404_and_unknown_session_204() {
    let cluster = Cluster::start().await;
    for server in &cluster.replicas {
        assert_eq!(probe(server.client_addr, "no-such-node").await, 404);
        assert_eq!(probe(server.client_addr, &"n".repeat(300)).await, 404);
    }
    assert_eq!(
        probe(cluster.replicas[0].client_addr, &cluster.nodes[1]).await,
        204
    );
    let unknown = outcome_total(&cluster.replicas, "routed_unknown_session").await;
    assert!(unknown >= 1.0, "{unknown}");
}

/// Opens an HTTP-stream session through the balancer, retrying while the balancer answers
/// 502 (a dead replica it has not skipped yet).
async fn reconnect(addr: SocketAddr, deadline: Instant) -> StreamClient {
    loop {
        let request = http_stream_request(addr, Encoding::Json, &[connect_command()], None);
        let mut client =
            StreamClient::open(addr, Flavor::HttpStream(Encoding::Json), request, None).await;
        if client.status == 200 {
            client.expect_connected().await;
            return client;
        }
        assert!(
            Instant::now() < deadline,
            "no session through the balancer in time (last status {})",
            client.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A replica killed with -9: its streams end, its clients reconnect through the balancer
/// (landing on the survivors) and work; POSTs naming the dead node get 404, never a hang.
#[tokio::test]
async fn clients_of_a_killed_replica_reconnect_through_the_balancer() {
    let mut cluster = Cluster::start().await;
    let addr = cluster.balancer.addr;
    // Open sessions until one sits on replica 0.
    let mut victim_streams = Vec::new();
    for _ in 0..REPLICAS {
        let stream = StreamClient::http_stream(addr, Encoding::Json, None).await;
        if stream.node == cluster.nodes[0] {
            victim_streams.push(stream);
        }
    }
    assert!(!victim_streams.is_empty(), "round robin skipped replica 0");
    let dead_node = cluster.nodes[0].clone();
    cluster.replicas[0].kill();

    for stream in victim_streams {
        // The stream broke (the balancer cuts the client's response when the replica's
        // connection dies); the client reconnects through the balancer.
        drop(stream);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut stream = reconnect(addr, deadline).await;
        assert_ne!(stream.node, dead_node);
        let channel = unique_channel("survivor");
        let reply = stream.request(subscribe(&channel), 2).await;
        assert!(reply.subscribe.is_some(), "{reply:?}");
        let reply = stream
            .request(publish(&channel, &json!({"ok": true})), 3)
            .await;
        assert!(reply.publish.is_some(), "{reply:?}");
        assert_eq!(
            stream.expect_publication(&channel).await,
            json!({"ok": true})
        );
    }
    // The dead node is forgotten: 404 (at once on a single Redis, at worst after the node
    // TTL), answered within the bounded wait of each POST.
    for survivor in [1, 2] {
        cluster
            .await_route(survivor, 0, 404, Duration::from_secs(10))
            .await;
    }
}

/// Redis goes away: readiness turns false and a routed POST is answered at once with 500 (or
/// 404 once the other node is forgotten), never a hang; Redis comes back on the same port:
/// readiness and routing come back without a restart.
#[tokio::test]
async fn redis_outage_fails_fast_and_recovers() {
    let mut cluster = Cluster::start().await;
    let admin = cluster.replicas[0].admin_addr;
    cluster.redis.single().kill();
    eventually(
        Duration::from_secs(10),
        "readiness false without Redis",
        || async move {
            let (status, body) = http_get(admin, "/readyz").await;
            status == 503 && body.contains(r#""engine_up":false"#)
        },
    )
    .await;
    let started = Instant::now();
    let status = probe(cluster.replicas[0].client_addr, &cluster.nodes[1]).await;
    assert!(
        matches!(status, 500 | 404),
        "routed POST without Redis: {status}"
    );
    // Bounded: well under the route timeout, so it was not waited out.
    assert!(
        started.elapsed() < sidewire::CLUSTER_ROUTE_TIMEOUT,
        "answered after {:?}",
        started.elapsed()
    );

    cluster.redis.single().start_again();
    for server in &cluster.replicas {
        server.wait_ready(Duration::from_secs(15)).await;
    }
    for from in 0..REPLICAS {
        for to in 0..REPLICAS {
            if from != to {
                cluster.await_route(from, to, 204, DISCOVERY).await;
            }
        }
    }
    // A session through the balancer works again end to end.
    let mut stream = StreamClient::http_stream(cluster.balancer.addr, Encoding::Json, None).await;
    let channel = unique_channel("after-outage");
    for id in 2..5 {
        let reply = stream
            .request(subscribe(&format!("{channel}-{id}")), id)
            .await;
        assert!(reply.subscribe.is_some(), "{reply:?}");
    }
}

/// Routing is the sidecar's job: three sidecars relaying to one external `sidewire hub` over
/// the Link route their POSTs through Redis the same way.
#[tokio::test]
async fn routing_works_with_an_external_upstream() {
    let hub = support::Hub::start("").await;
    let cluster =
        Cluster::start_with(&format!("upstream:\n  endpoint: \"{}\"\n", hub.endpoint())).await;
    let addr = cluster.balancer.addr;
    let routed_before = outcome_total(&cluster.replicas, "routed").await;
    let channel = unique_channel("external");
    let mut stream = StreamClient::sse(addr, None).await;
    let reply = stream.request(subscribe(&channel), 2).await;
    assert!(reply.subscribe.is_some(), "{reply:?}");
    let reply = stream
        .request(publish(&channel, &json!({"via": "link"})), 3)
        .await;
    assert!(reply.publish.is_some(), "{reply:?}");
    assert_eq!(
        stream.expect_publication(&channel).await,
        json!({"via": "link"})
    );
    support::api_publish(hub.api_addr, &channel, &json!({"via": "api"})).await;
    assert_eq!(
        stream.expect_publication(&channel).await,
        json!({"via": "api"})
    );
    let routed = outcome_total(&cluster.replicas, "routed").await;
    assert!(routed > routed_before, "no POST was routed: {routed}");
}

/// A replica started while Redis is down is not ready, keeps trying, and joins (ready,
/// routable both ways) when Redis appears: no restart.
#[tokio::test]
async fn a_replica_started_before_redis_joins_when_it_appears() {
    let mut redis = Redis::Single(RedisServer::start());
    redis.single().kill();
    let prefix = format!("t{}", uuid::Uuid::new_v4().simple());
    let early = Server::start(&replica_yaml(&redis, &prefix, "")).await;
    let admin = early.admin_addr;
    eventually(
        Duration::from_secs(5),
        "readiness reports the engine down",
        || async move {
            let (status, body) = http_get(admin, "/readyz").await;
            status == 503 && body.contains(r#""engine_up":false"#)
        },
    )
    .await;
    redis.single().start_again();
    early.wait_ready(Duration::from_secs(15)).await;
    let late = Server::start(&replica_yaml(&redis, &prefix, "")).await;
    late.wait_ready(Duration::from_secs(10)).await;
    let early_node = StreamClient::http_stream(early.client_addr, Encoding::Json, None)
        .await
        .node;
    let mut stream = StreamClient::http_stream(late.client_addr, Encoding::Json, None).await;
    eventually(
        DISCOVERY,
        "the early replica routes to the late one",
        || {
            let (addr, node) = (early.client_addr, stream.node.clone());
            async move { probe(addr, &node).await == 204 }
        },
    )
    .await;
    eventually(
        DISCOVERY,
        "the late replica routes to the early one",
        || {
            let (addr, node) = (late.client_addr, early_node.clone());
            async move { probe(addr, &node).await == 204 }
        },
    )
    .await;
    // A command for the late replica's session, POSTed to the early replica.
    let channel = unique_channel("late");
    let data = frame_commands(Encoding::Json, &[with_id(subscribe(&channel), 2)]);
    let fetched = fetch(
        early.client_addr,
        emulation_request(
            early.client_addr,
            Encoding::Json,
            &stream.node,
            &stream.session,
            &data,
            None,
        ),
    )
    .await;
    assert_eq!(fetched.status, 204, "{}", fetched.text());
    let reply = stream.expect_reply(2).await;
    assert!(reply.subscribe.is_some(), "{reply:?}");
}

/// The same routing on a three-node Redis Cluster (the control channels are plain pub/sub,
/// which a Redis Cluster forwards to every node).
#[tokio::test]
async fn routing_works_on_a_redis_cluster() {
    let cluster = Cluster::start_on(Redis::Cluster(RedisCluster::start()), "").await;
    let addr = cluster.balancer.addr;
    let channel = unique_channel("redis-cluster");
    let mut stream = StreamClient::http_stream(addr, Encoding::Protobuf, None).await;
    let reply = stream.request(subscribe(&channel), 2).await;
    assert!(reply.subscribe.is_some(), "{reply:?}");
    for id in 3..9 {
        let reply = stream
            .request(publish(&channel, &json!({ "n": id })), id)
            .await;
        assert!(reply.publish.is_some(), "{reply:?}");
        assert_eq!(
            stream.expect_publication(&channel).await,
            json!({ "n": id })
        );
    }
    let routed = outcome_total(&cluster.replicas, "routed").await;
    assert!(routed >= 4.0, "routed POSTs: {routed}");
}

/// The balancer itself: requests on one keep-alive client connection still go round robin
/// (no affinity by connection), so the tests above really cross replicas.
#[tokio::test]
async fn the_balancer_spreads_requests_of_one_keep_alive_connection() {
    let cluster = Cluster::start().await;
    let addr = cluster.balancer.addr;
    let mut conn = Conn::open(addr).await;
    let mut seen = Vec::new();
    for _ in 0..2 * REPLICAS {
        let fetched = conn
            .fetch(request(addr, "GET", "/emulation", &[], Payload::Empty))
            .await;
        assert_eq!(fetched.status, 405, "{}", fetched.text());
        seen.push(
            fetched
                .header("x-balancer-replica")
                .expect("the balancer names the replica"),
        );
    }
    let distinct: std::collections::BTreeSet<_> = seen.iter().collect();
    assert_eq!(distinct.len(), REPLICAS, "{seen:?}");
    assert_eq!(
        seen[..REPLICAS],
        seen[REPLICAS..],
        "not round robin: {seen:?}"
    );
}
