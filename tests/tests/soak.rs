//! Privileged: a 20 s soak under faults (`cargo xtask soak` runs the long one). See
//! tests/src/soak.rs for what runs and what is checked.

use resilience_tests::privileged;

#[test]
fn twenty_seconds_of_load_reloads_kills_and_a_stop_reconcile_exactly() {
    if !privileged("soak") {
        return;
    }
    let report = resilience_tests::soak::run(20);
    eprintln!("{}", report.markdown());
    assert!(report.connects > 0);
}
