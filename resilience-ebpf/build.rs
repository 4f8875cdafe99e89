//! BPF ISA v3 (atomics with fetch, Linux 5.12+): the exact token bucket, bulkhead and half-open
//! probe budget rely on atomic fetch-and-add. Only for the BPF build of the programs.
fn main() {
    println!("cargo:rerun-if-env-changed=CARGO_CFG_TARGET_ARCH");
    if std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("bpf") {
        println!("cargo:rustc-link-arg-bins=--cpu-features=+alu32");
    }
}
