//! Types shared byte for byte between the kernel programs and the daemon.
//!
//! Every type here is `#[repr(C)]`, built from fixed-width integers and byte arrays, with any
//! padding spelled out, so that both sides agree on the layout. A test in the daemon checks each
//! map's key and value size in the built object against `size_of` of these types.
#![cfg_attr(not(test), no_std)]

pub mod conn;
pub mod control;
pub mod dest;
pub mod endpoint;
pub mod maps;
pub mod retry;
pub mod saved;
pub mod service;

pub use conn::{ConnTrack, OutcomeEvent};
pub use control::{Control, Stats};
pub use dest::{Bucket, DestCounters, DestPolicy, PendingAges, QuietCount, WindowCounts};
pub use endpoint::{CidrData, Endpoint};
pub use retry::RetryBudget;
pub use saved::SavedBreaker;
pub use service::{CgroupPath, ServiceRoute};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] with explicit padding and only integer fields.
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::CidrData {}
    unsafe impl aya::Pod for super::DestPolicy {}
    unsafe impl aya::Pod for super::DestCounters {}
    unsafe impl aya::Pod for super::Bucket {}
    unsafe impl aya::Pod for super::ConnTrack {}
    unsafe impl aya::Pod for super::OutcomeEvent {}
    unsafe impl aya::Pod for super::Control {}
    unsafe impl aya::Pod for super::Stats {}
    unsafe impl aya::Pod for super::SavedBreaker {}
    unsafe impl aya::Pod for super::WindowCounts {}
    unsafe impl aya::Pod for super::QuietCount {}
    unsafe impl aya::Pod for super::PendingAges {}
    unsafe impl aya::Pod for super::RetryBudget {}
    unsafe impl aya::Pod for super::ServiceRoute {}
    unsafe impl aya::Pod for super::CgroupPath {}
}
