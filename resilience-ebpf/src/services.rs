//! A service's cgroup created (again): its SERVICES entry goes in here, inside the mkdir, so
//! that a restarted unit's processes are guarded from their first connect. Runs on every
//! cgroup mkdir on the host, which is rare; looks up one path.

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes},
    programs::BtfTracePointContext,
};
use resilience_common::service::CGROUP_PATH_BYTES;

use crate::maps::{CGROUP_KN_OFFSET, KERNFS_ID_OFFSET, PATH_SCRATCH, SERVICES, WATCH};

pub fn on_mkdir(ctx: &BtfTracePointContext) {
    // SAFETY: reads of globals the loader sets once.
    let (kn_off, id_off) = unsafe {
        (
            core::ptr::read_volatile(&CGROUP_KN_OFFSET),
            core::ptr::read_volatile(&KERNFS_ID_OFFSET),
        )
    };
    if kn_off == 0 && id_off == 0 {
        return;
    }
    // cgroup_mkdir(struct cgroup *cgrp, const char *path)
    // The tracepoint's arguments, by its prototype.
    let (cgrp, path): (*const u8, *const u8) = (ctx.arg(0), ctx.arg(1));
    let Some(buf) = PATH_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a per-CPU array value, ours for this run. Zeroed word by word: the key is the
    // whole NUL-padded buffer.
    let words = buf.cast::<u64>();
    for i in 0..CGROUP_PATH_BYTES / 8 {
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
    let bytes = unsafe { &mut (*buf).bytes };
    // SAFETY: reading a kernel string into our buffer, bounded by its size.
    if unsafe { bpf_probe_read_kernel_str_bytes(path, bytes) }.is_err() {
        return;
    }
    // SAFETY: a read of a hash map value, copied at once.
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by value, the 256-byte key would be copied onto the BPF stack"
    )]
    let Some(&service) = (unsafe { WATCH.get(&*buf) }) else {
        return;
    };
    // SAFETY: kernel reads at offsets the daemon found in the running kernel's BTF.
    let Ok(kn) = (unsafe { bpf_probe_read_kernel(cgrp.add(kn_off as usize).cast::<*const u8>()) })
    else {
        return;
    };
    let Ok(id) = (unsafe { bpf_probe_read_kernel(kn.add(id_off as usize).cast::<u64>()) }) else {
        return;
    };
    let _ = SERVICES.insert(id, service, 0);
}
