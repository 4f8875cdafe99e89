//! Fuzz target: see resilience_daemon::fuzzing::policy.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    resilience_daemon::fuzzing::policy(data);
});
