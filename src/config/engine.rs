//! `engine`: where the hub keeps state shared across replicas (Centrifugo v6's `engine`
//! section). `memory` (the default) keeps everything in the process; `redis` shares pub/sub,
//! history with offsets and epochs, presence, and the per-node control channel that routes
//! emulation POSTs and server-side commands between replicas.

use std::time::Duration;

use serde::Deserialize;

use super::duration::ConfigDuration;

/// Default prefix of every Redis key and pub/sub channel sidewire uses.
pub const DEFAULT_REDIS_PREFIX: &str = "sidewire";
/// Default time allowed to open a Redis connection.
pub const DEFAULT_REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default time allowed for one Redis command; a command that takes longer fails (the client
/// gets Centrifugo's internal error 100) instead of hanging.
pub const DEFAULT_REDIS_IO_TIMEOUT: Duration = Duration::from_secs(4);
/// Default lifetime of a presence entry that is not refreshed (a dead replica's clients
/// disappear after it).
pub const DEFAULT_REDIS_PRESENCE_TTL: Duration = Duration::from_secs(60);

/// Which engine holds shared state.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// In-process state: one node (today's behaviour).
    #[default]
    Memory,
    /// Redis (a single server, Sentinel or Redis Cluster): state shared by every replica.
    Redis,
}

/// The `engine` section.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// `memory` or `redis`.
    #[serde(rename = "type")]
    pub kind: EngineKind,
    /// Settings used when `type` is `redis`.
    pub redis: RedisConfig,
}

/// `engine.redis`: how to reach Redis.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// A single server: `redis://[:password@]host:port[/db]` or `rediss://…` for TLS.
    pub address: String,
    /// Redis Cluster seed nodes (`redis://host:port` each); when non-empty it replaces
    /// `address`. Keys are hash-tagged per channel.
    pub cluster_address: Vec<String>,
    /// Sentinel addresses (`redis://host:port` each); needs `sentinel_master_name`.
    pub sentinel_address: Vec<String>,
    /// Name of the master the Sentinels watch.
    pub sentinel_master_name: String,
    /// Prefix of every key and pub/sub channel (lets several installations share a Redis).
    pub prefix: String,
    /// Time allowed to open a connection.
    pub connect_timeout: ConfigDuration,
    /// Time allowed for one command.
    pub io_timeout: ConfigDuration,
    /// Lifetime of a presence entry that its node stops refreshing.
    pub presence_ttl: ConfigDuration,
}

impl Default for RedisConfig {
    fn default() -> RedisConfig {
        RedisConfig {
            address: String::new(),
            cluster_address: Vec::new(),
            sentinel_address: Vec::new(),
            sentinel_master_name: String::new(),
            prefix: DEFAULT_REDIS_PREFIX.to_owned(),
            connect_timeout: DEFAULT_REDIS_CONNECT_TIMEOUT.into(),
            io_timeout: DEFAULT_REDIS_IO_TIMEOUT.into(),
            presence_ttl: DEFAULT_REDIS_PRESENCE_TTL.into(),
        }
    }
}

fn redis_url(text: &str) -> bool {
    text.strip_prefix("redis://")
        .or_else(|| text.strip_prefix("rediss://"))
        .is_some_and(|rest| !rest.is_empty())
}

impl EngineConfig {
    /// Every problem of the section, each as `engine.field: problem`.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.kind != EngineKind::Redis {
            return problems;
        }
        let redis = &self.redis;
        let topologies = [
            !redis.address.is_empty(),
            !redis.cluster_address.is_empty(),
            !redis.sentinel_address.is_empty(),
        ];
        match topologies.iter().filter(|set| **set).count() {
            0 => problems.push(
                "engine.redis.address: required when engine.type is redis (or set \
                 engine.redis.cluster_address or engine.redis.sentinel_address)"
                    .to_owned(),
            ),
            1 => {}
            _ => problems.push(
                "engine.redis.address: set only one of address, cluster_address and \
                 sentinel_address"
                    .to_owned(),
            ),
        }
        if !redis.address.is_empty() && !redis_url(&redis.address) {
            problems.push(format!(
                "engine.redis.address: must be redis://host:port or rediss://host:port, got {:?}",
                redis.address
            ));
        }
        for (field, list) in [
            ("cluster_address", &redis.cluster_address),
            ("sentinel_address", &redis.sentinel_address),
        ] {
            for (index, entry) in list.iter().enumerate() {
                if !redis_url(entry) {
                    problems.push(format!(
                        "engine.redis.{field}[{index}]: must be redis://host:port or \
                         rediss://host:port, got {entry:?}"
                    ));
                }
            }
        }
        if !redis.sentinel_address.is_empty() && redis.sentinel_master_name.is_empty() {
            problems.push(
                "engine.redis.sentinel_master_name: required with sentinel_address".to_owned(),
            );
        }
        if redis.prefix.is_empty() || redis.prefix.contains(['{', '}']) {
            problems.push(format!(
                "engine.redis.prefix: must be non-empty and without braces, got {:?}",
                redis.prefix
            ));
        }
        for (field, value) in [
            ("connect_timeout", redis.connect_timeout),
            ("io_timeout", redis.io_timeout),
            ("presence_ttl", redis.presence_ttl),
        ] {
            if value.is_zero() {
                problems.push(format!("engine.redis.{field}: must be greater than 0s"));
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> EngineConfig {
        serde_saphyr::from_str(yaml).expect("valid yaml")
    }

    #[test]
    fn memory_is_the_default_and_needs_nothing() {
        assert_eq!(EngineConfig::default().kind, EngineKind::Memory);
        assert!(EngineConfig::default().problems().is_empty());
    }

    #[test]
    fn redis_needs_exactly_one_valid_address() {
        let text = parse("type: redis").problems().join("\n");
        assert!(text.contains("engine.redis.address: required"), "{text}");
        let text = parse("type: redis\nredis: {address: 'localhost:6379'}")
            .problems()
            .join("\n");
        assert!(
            text.contains("engine.redis.address: must be redis://"),
            "{text}"
        );
        let text =
            parse("type: redis\nredis: {address: 'redis://a:1', cluster_address: ['redis://b:2']}")
                .problems()
                .join("\n");
        assert!(text.contains("set only one"), "{text}");
        let ok = parse("type: redis\nredis: {address: 'redis://:pw@127.0.0.1:6379/2'}");
        assert!(ok.problems().is_empty(), "{:?}", ok.problems());
    }

    #[test]
    fn sentinel_needs_a_master_name_and_prefix_no_braces() {
        let text =
            parse("type: redis\nredis: {sentinel_address: ['redis://s:26379'], prefix: 'a{b'}")
                .problems()
                .join("\n");
        assert!(text.contains("engine.redis.sentinel_master_name"), "{text}");
        assert!(text.contains("engine.redis.prefix"), "{text}");
    }
}
