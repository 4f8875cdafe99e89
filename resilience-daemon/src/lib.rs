//! resilience: host-wide circuit breakers for outbound TCP connects.
//!
//! The data path, in module order: `kernel` (load, attach, typed maps) -> `apply` and `slots`
//! (policy into kernel values) -> `engine` (pure breakers) -> `daemon` (the loop and its
//! parts) -> `snapshot` (immutable pictures) -> `protocol` (typed requests and replies) ->
//! `control` (socket), `metrics` (Prometheus), `client`, `cli` and `tui` (dashboard).

pub mod apply;
pub mod cli;
pub mod client;
pub mod config;
pub mod control;
pub mod daemon;
pub mod engine;
pub mod fixture;
pub mod fuzzing;
pub mod kernel;
pub mod latency;
pub mod memory;
pub mod metrics;
pub mod protocol;
pub mod recording;
pub mod replay;
pub mod slots;
pub mod snapshot;
pub mod table;
pub mod tui;
