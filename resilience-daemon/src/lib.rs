//! resilience: host-wide circuit breakers for outbound TCP connects.
//!
//! The data path, in module order: `kernel` (load, attach, typed maps) -> `apply` and `slots`
//! (policy into maps) -> `engine` (pure breakers) -> `daemon` (the loop) -> `snapshot`
//! (immutable pictures) -> `control` (socket), `metrics` (Prometheus) and `tui` (dashboard).

pub mod apply;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod engine;
pub mod fixture;
pub mod kernel;
pub mod latency;
pub mod metrics;
pub mod slots;
pub mod snapshot;
pub mod tui;
