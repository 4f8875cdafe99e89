//! Fuzz target: see resilience_daemon::fuzzing::records.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    resilience_daemon::fuzzing::records(data);
});
