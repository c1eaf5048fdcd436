//! `engine`: where the hub keeps state shared across replicas. `memory` (the default) is the
//! hub's in-process state; `redis` shares publications, history, presence and control messages
//! between replicas through Redis.

pub mod redis;
