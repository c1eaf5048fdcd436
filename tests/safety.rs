//! Regression tests for the public-internet safety work: one client must never hurt another.
//! Each module guards one area; each test is named after what it guards.

mod support;

/// The scripted, misbehaving Link upstream shared with tests/link_contract.rs.
#[path = "support/scripted_upstream.rs"]
mod scripted_upstream;

/// Raw HTTP helpers shared with the operations suite (fetch, metrics, backends).
#[allow(dead_code)]
#[path = "operations/common.rs"]
mod common;
/// HTTP-streaming / SSE client shared with the streaming suite.
#[allow(dead_code)]
#[path = "streaming/client.rs"]
mod stream_client;

#[path = "safety/api.rs"]
mod api;
#[path = "safety/edge.rs"]
mod edge;
#[path = "safety/hub.rs"]
mod hub;
#[path = "safety/link.rs"]
mod link;
#[path = "safety/passthrough.rs"]
mod passthrough;
