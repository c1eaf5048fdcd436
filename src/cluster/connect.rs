//! Opens the Redis clients the control channel uses, from `engine.redis`: a single server,
//! Redis Cluster seeds or Sentinels; `rediss://` turns TLS on; credentials and db come from
//! the (first) URL.
//!
//! Guarantees: building never touches the network; clients reconnect forever with a capped
//! backoff (the process never has to restart after a Redis outage); every command is bounded
//! by `io_timeout`, and commands issued while Redis is unreachable fail instead of queueing.

use fred::clients::{Client, SubscriberClient};
use fred::prelude::{Builder, Config, ReconnectPolicy, ServerConfig};
use fred::types::config::Server;
use thiserror::Error;

use crate::config::engine::RedisConfig;

/// Shortest pause between reconnect attempts, in milliseconds.
const RECONNECT_MIN_DELAY_MS: u32 = 100;
/// Longest pause between reconnect attempts, in milliseconds.
const RECONNECT_MAX_DELAY_MS: u32 = 2_000;
/// Messages a subscriber may have buffered for its reader before the oldest are dropped.
pub const SUBSCRIBER_BUFFER_MESSAGES: usize = 1_024;

/// Why the Redis clients could not be built.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// An address the config validation let through was refused by the client.
    #[error("engine.redis.{field}: {source}")]
    Address {
        /// Dotted field below `engine.redis`.
        field: &'static str,
        /// Cause.
        source: fred::error::Error,
    },
    /// The client could not be built.
    #[error("engine.redis: {0}")]
    Build(#[from] fred::error::Error),
}

fn server_of(field: &'static str, url: &str) -> Result<(Config, Server), ConnectError> {
    let config = Config::from_url_centralized(url)
        .map_err(|source| ConnectError::Address { field, source })?;
    match &config.server {
        ServerConfig::Centralized { server } => {
            let server = server.clone();
            Ok((config, server))
        }
        _ => Err(ConnectError::Address {
            field,
            source: fred::error::Error::new(
                fred::error::ErrorKind::Config,
                "expected redis://host:port",
            ),
        }),
    }
}

/// The fred config for `engine.redis` (no network).
pub fn client_config(redis: &RedisConfig) -> Result<Config, ConnectError> {
    let mut config = if !redis.cluster_address.is_empty() {
        let mut first = None;
        let mut hosts = Vec::with_capacity(redis.cluster_address.len());
        for url in &redis.cluster_address {
            let (config, server) = server_of("cluster_address", url)?;
            first.get_or_insert(config);
            hosts.push((server.host.to_string(), server.port));
        }
        let mut config = first.unwrap_or_default();
        config.server = ServerConfig::new_clustered(hosts);
        config
    } else if !redis.sentinel_address.is_empty() {
        let mut first = None;
        let mut hosts = Vec::with_capacity(redis.sentinel_address.len());
        for url in &redis.sentinel_address {
            let (config, server) = server_of("sentinel_address", url)?;
            first.get_or_insert(config);
            hosts.push((server.host.to_string(), server.port));
        }
        let mut config = first.unwrap_or_default();
        config.server = ServerConfig::new_sentinel(hosts, redis.sentinel_master_name.clone());
        config
    } else {
        server_of("address", &redis.address)?.0
    };
    // Keep reconnecting in the background when Redis is down at start: readiness says so.
    config.fail_fast = false;
    Ok(config)
}

fn builder(redis: &RedisConfig) -> Result<Builder, ConnectError> {
    let mut builder = Builder::from_config(client_config(redis)?);
    let connect_timeout = redis.connect_timeout;
    let io_timeout = redis.io_timeout;
    builder
        .with_connection_config(|connection| {
            connection.connection_timeout = connect_timeout;
            connection.internal_command_timeout = io_timeout;
            connection.max_command_attempts = 1;
            connection.tcp = fred::types::config::TcpConfig {
                nodelay: Some(true),
                ..Default::default()
            };
        })
        .with_performance_config(|performance| {
            performance.default_command_timeout = io_timeout;
            performance.broadcast_channel_capacity = SUBSCRIBER_BUFFER_MESSAGES;
        })
        .set_policy(ReconnectPolicy::new_exponential(
            0,
            RECONNECT_MIN_DELAY_MS,
            RECONNECT_MAX_DELAY_MS,
            2,
        ));
    Ok(builder)
}

/// A command client for `engine.redis` (not connected yet).
pub fn command_client(redis: &RedisConfig) -> Result<Client, ConnectError> {
    Ok(builder(redis)?.build()?)
}

/// A pub/sub client for `engine.redis` (not connected yet).
pub fn subscriber_client(redis: &RedisConfig) -> Result<SubscriberClient, ConnectError> {
    Ok(builder(redis)?.build_subscriber_client()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_for_each_topology() {
        let single = RedisConfig {
            address: "redis://:secret@127.0.0.1:6390/2".into(),
            ..RedisConfig::default()
        };
        let config = client_config(&single).unwrap();
        assert_eq!(config.password.as_deref(), Some("secret"));
        assert_eq!(config.database, Some(2));
        assert!(!config.fail_fast);
        let cluster = RedisConfig {
            cluster_address: vec!["redis://a:7000".into(), "redis://b:7001".into()],
            ..RedisConfig::default()
        };
        match client_config(&cluster).unwrap().server {
            ServerConfig::Clustered { hosts, .. } => assert_eq!(hosts.len(), 2),
            other => panic!("{other:?}"),
        }
        let sentinel = RedisConfig {
            sentinel_address: vec!["redis://s:26379".into()],
            sentinel_master_name: "main".into(),
            ..RedisConfig::default()
        };
        assert!(matches!(
            client_config(&sentinel).unwrap().server,
            ServerConfig::Sentinel { .. }
        ));
        let bad = RedisConfig {
            address: "redis://".into(),
            ..RedisConfig::default()
        };
        let error = client_config(&bad).unwrap_err().to_string();
        assert!(error.starts_with("engine.redis.address"), "{error}");
    }
}
