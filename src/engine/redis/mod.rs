//! The Redis engine: connections ([`connect`]).

pub mod connect;

pub use connect::{ConnectError, RedisClients, Topology};
