//! Opening Redis from `engine.redis`: one command client and one subscriber client for a single
//! server (`redis://` / `rediss://`, password and db in the URL), a Redis Cluster
//! (`cluster_address`) or a Sentinel-watched master (`sentinel_address` +
//! `sentinel_master_name`).
//!
//! Guarantees:
//! - the reconnect policy never gives up (exponential backoff capped at
//!   [`MAX_RECONNECT_DELAY_MS`]), and the subscriber client resubscribes every tracked channel
//!   (plain and sharded) after a reconnect;
//! - commands sent with [`RedisClients::options`] fail fast while the connection is down
//!   (`fail_fast`), are written once (`max_attempts: 1`, so a publish script is never replayed)
//!   and give up after `io_timeout`; fred's internal command buffer is bounded by
//!   [`MAX_COMMAND_BUFFER`] commands on top of that;
//! - pub/sub messages reach listeners through a bounded broadcast channel
//!   ([`PUBSUB_BROADCAST_CAPACITY`]); a listener that lags learns it (`RecvError::Lagged`).

use std::time::Duration;

use fred::clients::{Client, SubscriberClient};
use fred::interfaces::ClientLike;
use fred::types::Builder;
use fred::types::config::{
    Config, ConnectionConfig, Options, PerformanceConfig, ReconnectPolicy, ServerConfig,
    UnresponsiveConfig,
};

use crate::config::engine::RedisConfig;

/// First reconnect delay, in milliseconds.
pub const MIN_RECONNECT_DELAY_MS: u32 = 50;
/// Longest reconnect delay, in milliseconds: a Redis that comes back is found within it.
pub const MAX_RECONNECT_DELAY_MS: u32 = 1_000;
/// Commands fred may hold in its queue towards the router task before refusing more
/// (`Backpressure`).
pub const MAX_COMMAND_BUFFER: usize = 4_096;
/// Capacity of the broadcast channel that carries pub/sub messages to listeners (messages a
/// listener has read are freed at once; a listener further behind than this lags and every
/// local subscription recovers, so at most this many messages wait).
pub const PUBSUB_BROADCAST_CAPACITY: usize = 16_384;

/// Why Redis could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// An address could not be turned into a client configuration.
    #[error("{field}: {source}")]
    Config {
        /// The dotted config field at fault.
        field: String,
        /// fred's description.
        source: fred::error::Error,
    },
    /// The clients could not be built.
    #[error("redis: {0}")]
    Build(#[source] fred::error::Error),
    /// No connection within the allowed time.
    #[error("redis: not connected within {0:?}")]
    Timeout(Duration),
}

/// The topology `engine.redis` describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One server (possibly a replica set behind Sentinel).
    Single,
    /// Redis Cluster: keys are hash-tagged per channel and pub/sub is sharded.
    Cluster,
}

fn config_error(field: &str, source: fred::error::Error) -> ConnectError {
    ConnectError::Config {
        field: format!("engine.redis.{field}"),
        source,
    }
}

/// The fred client configuration for `engine.redis` (server, credentials, db, TLS).
pub fn client_config(redis: &RedisConfig) -> Result<(Config, Topology), ConnectError> {
    let mut config = if !redis.cluster_address.is_empty() {
        let mut config = None::<Config>;
        let mut hosts = Vec::new();
        for (index, address) in redis.cluster_address.iter().enumerate() {
            let field = format!("cluster_address[{index}]");
            let one = Config::from_url_clustered(address).map_err(|e| config_error(&field, e))?;
            hosts.extend(one.server.hosts());
            config.get_or_insert(one);
        }
        let mut config = config.unwrap_or_default();
        config.server = ServerConfig::Clustered {
            hosts,
            policy: Default::default(),
        };
        return Ok((finish(config), Topology::Cluster));
    } else if !redis.sentinel_address.is_empty() {
        let mut config = None::<Config>;
        let mut hosts = Vec::new();
        for (index, address) in redis.sentinel_address.iter().enumerate() {
            let field = format!("sentinel_address[{index}]");
            let one = Config::from_url_centralized(address).map_err(|e| config_error(&field, e))?;
            hosts.extend(one.server.hosts());
            config.get_or_insert(one);
        }
        let mut config = config.unwrap_or_default();
        config.server = ServerConfig::Sentinel {
            hosts,
            service_name: redis.sentinel_master_name.clone(),
        };
        config
    } else {
        Config::from_url_centralized(&redis.address).map_err(|e| config_error("address", e))?
    };
    config = finish(config);
    Ok((config, Topology::Single))
}

fn finish(mut config: Config) -> Config {
    // The initial connection follows the reconnect policy too: a replica started before
    // Redis comes up reports not-ready and connects when Redis appears.
    config.fail_fast = false;
    config
}

/// The reconnect policy: retry forever, 50 ms doubling up to 1 s.
pub fn reconnect_policy() -> ReconnectPolicy {
    ReconnectPolicy::new_exponential(0, MIN_RECONNECT_DELAY_MS, MAX_RECONNECT_DELAY_MS, 2)
}

/// Options to send every engine command with: fail fast while disconnected, one write, and
/// `io_timeout`.
pub fn command_options(redis: &RedisConfig) -> Options {
    Options {
        max_attempts: Some(1),
        timeout: Some(*redis.io_timeout),
        fail_fast: true,
        ..Default::default()
    }
}

/// A fred builder with sidewire's connection, performance and reconnect settings.
pub fn builder(redis: &RedisConfig) -> Result<(Builder, Topology), ConnectError> {
    let (config, topology) = client_config(redis)?;
    let mut builder = Builder::from_config(config);
    builder
        .set_policy(reconnect_policy())
        .set_connection_config(ConnectionConfig {
            connection_timeout: *redis.connect_timeout,
            internal_command_timeout: *redis.io_timeout,
            max_command_attempts: 1,
            max_command_buffer_len: MAX_COMMAND_BUFFER,
            unresponsive: UnresponsiveConfig {
                max_timeout: Some(*redis.io_timeout),
                interval: (*redis.io_timeout / 4).max(Duration::from_millis(50)),
            },
            ..Default::default()
        })
        .set_performance_config(PerformanceConfig {
            default_command_timeout: *redis.io_timeout,
            broadcast_channel_capacity: PUBSUB_BROADCAST_CAPACITY,
            ..Default::default()
        });
    Ok((builder, topology))
}

/// The clients the engine (and the cluster router) share.
#[derive(Clone)]
pub struct RedisClients {
    /// Commands (scripts, reads, PUBLISH/SPUBLISH).
    pub commands: Client,
    /// Pub/sub: SUBSCRIBE/SSUBSCRIBE; resubscribes tracked channels after a reconnect.
    pub subscriber: SubscriberClient,
    /// Single server or Cluster.
    pub topology: Topology,
    /// Per-command options (see [`command_options`]).
    pub options: Options,
}

impl std::fmt::Debug for RedisClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisClients")
            .field("topology", &self.topology)
            .field("connected", &self.connected())
            .finish()
    }
}

impl RedisClients {
    /// Builds both clients and starts connecting them in the background (never blocks; the
    /// reconnect policy covers a Redis that is not up yet). Must run inside a tokio runtime.
    pub fn open(redis: &RedisConfig) -> Result<RedisClients, ConnectError> {
        let (builder, topology) = builder(redis)?;
        let commands = builder.build().map_err(ConnectError::Build)?;
        let subscriber = builder
            .build_subscriber_client()
            .map_err(ConnectError::Build)?;
        // The handles are the connection tasks; they end when the client quits.
        drop(commands.connect());
        drop(subscriber.connect());
        drop(subscriber.manage_subscriptions());
        Ok(RedisClients {
            commands,
            subscriber,
            topology,
            options: command_options(redis),
        })
    }

    /// Opens the clients and waits until both are connected, at most `connect_timeout` (or
    /// `wait` when given).
    pub async fn connect(
        redis: &RedisConfig,
        wait: Option<Duration>,
    ) -> Result<RedisClients, ConnectError> {
        let clients = RedisClients::open(redis)?;
        clients
            .wait_connected(wait.unwrap_or(*redis.connect_timeout))
            .await?;
        Ok(clients)
    }

    /// Waits until both clients are connected, at most `limit`.
    pub async fn wait_connected(&self, limit: Duration) -> Result<(), ConnectError> {
        let both = async {
            self.commands.wait_for_connect().await?;
            self.subscriber.wait_for_connect().await
        };
        match tokio::time::timeout(limit, both).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(ConnectError::Build(error)),
            Err(_) => Err(ConnectError::Timeout(limit)),
        }
    }

    /// True while both the command and the subscriber connections are up.
    pub fn connected(&self) -> bool {
        self.commands.is_connected() && self.subscriber.is_connected()
    }

    /// Closes both clients (best effort, bounded by the command timeout).
    pub async fn quit(&self) {
        let _ = self.subscriber.quit().await;
        let _ = self.commands.quit().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redis(yaml: &str) -> RedisConfig {
        serde_saphyr::from_str(yaml).expect("valid yaml")
    }

    #[test]
    fn single_server_takes_password_and_db_from_the_url() {
        let (config, topology) =
            client_config(&redis("address: 'redis://:secret@127.0.0.1:6390/3'")).expect("ok");
        assert_eq!(topology, Topology::Single);
        assert_eq!(config.password.as_deref(), Some("secret"));
        assert_eq!(config.database, Some(3));
        assert!(!config.fail_fast);
        assert_eq!(config.server.hosts()[0].port, 6390);
    }

    #[test]
    fn cluster_collects_every_seed() {
        let (config, topology) = client_config(&redis(
            "cluster_address: ['redis://127.0.0.1:7001', 'redis://127.0.0.1:7002']",
        ))
        .expect("ok");
        assert_eq!(topology, Topology::Cluster);
        let ports: Vec<u16> = config.server.hosts().iter().map(|h| h.port).collect();
        assert_eq!(ports, vec![7001, 7002]);
    }

    #[test]
    fn sentinel_names_the_master() {
        let (config, _) = client_config(&redis(
            "sentinel_address: ['redis://127.0.0.1:26379']\nsentinel_master_name: mymaster",
        ))
        .expect("ok");
        match config.server {
            ServerConfig::Sentinel { service_name, .. } => assert_eq!(service_name, "mymaster"),
            other => panic!("not sentinel: {other:?}"),
        }
    }

    #[test]
    fn a_bad_address_names_its_field() {
        let error = client_config(&redis("cluster_address: ['redis://']")).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("engine.redis.cluster_address[0]"),
            "{error}"
        );
    }

    #[test]
    fn commands_fail_fast_and_are_written_once() {
        let options = command_options(&RedisConfig::default());
        assert!(options.fail_fast);
        assert_eq!(options.max_attempts, Some(1));
        assert_eq!(options.timeout, Some(*RedisConfig::default().io_timeout));
    }
}
