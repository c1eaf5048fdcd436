//! The streaming transports against the real binary on ephemeral loopback ports: HTTP-stream
//! (JSON and Protobuf) and SSE with bidirectional emulation, their status codes and size
//! limits, Origin/CORS policy on every endpoint, clients that go away mid-response, the order
//! of emulated commands, and sessions of different transports sharing a channel. Each test
//! starts its own server (killed on drop) and bounds every wait; the only polling is of
//! scraped state (metrics, presence).

mod support;

#[path = "streaming/http_stream.rs"]
mod http_stream;
#[path = "streaming/lifecycle.rs"]
mod lifecycle;
#[path = "streaming/limits.rs"]
mod limits;
#[path = "streaming/origins.rs"]
mod origins;
#[path = "streaming/owned.rs"]
mod owned;
#[path = "streaming/sse.rs"]
mod sse;
