//! Regression tests for the public-internet safety work: one client must never hurt another.
//! Each module guards one area; each test is named after what it guards.

mod support;

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
