//! Kernel programs of resilience. The programs live in the `resilience` binary target (built
//! for bpfel-unknown-none by the daemon's build.rs); this library target exists only so that the
//! daemon can name this crate as a build-dependency and be rebuilt when it changes.
#![no_std]
