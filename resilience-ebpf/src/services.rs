//! A service's cgroup created (again): its SERVICES entry goes in here, inside the mkdir, so
//! that a restarted unit's processes are guarded from their first connect. Runs on every
//! cgroup mkdir on the host, which is rare; looks up one path.

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes},
    programs::BtfTracePointContext,
};
use resilience_common::service::CGROUP_PATH_BYTES;

use crate::maps::{
    CGROUP_KN_OFFSET, CGROUP_ROOT_OFFSET, HIERARCHY_ID_OFFSET, KERNFS_ID_OFFSET, PATH_SCRATCH,
    SERVICES, WATCH,
};

pub fn on_mkdir(ctx: &BtfTracePointContext) {
    // SAFETY: reads of globals the loader sets once.
    let (kn_off, id_off, root_off, hier_off) = unsafe {
        (
            core::ptr::read_volatile(&CGROUP_KN_OFFSET),
            core::ptr::read_volatile(&KERNFS_ID_OFFSET),
            core::ptr::read_volatile(&CGROUP_ROOT_OFFSET),
            core::ptr::read_volatile(&HIERARCHY_ID_OFFSET),
        )
    };
    // `kn` is not the first member of struct cgroup: 0 means the daemon found no offsets.
    if kn_off == 0 || root_off == 0 {
        return;
    }
    // cgroup_mkdir(struct cgroup *cgrp, const char *path)
    // The tracepoint's arguments, by its prototype.
    let (cgrp, path): (*const u8, *const u8) = (ctx.arg(0), ctx.arg(1));
    // Only the v2 hierarchy: a v1 hierarchy (a hybrid host has several, with the same paths)
    // numbers its cgroups apart, and its ids may equal a v2 cgroup's.
    // SAFETY: kernel reads at offsets the daemon found in the running kernel's BTF.
    let Ok(root) =
        (unsafe { bpf_probe_read_kernel(cgrp.add(root_off as usize).cast::<*const u8>()) })
    else {
        return;
    };
    let Ok(hierarchy) =
        (unsafe { bpf_probe_read_kernel(root.add(hier_off as usize).cast::<i32>()) })
    else {
        return;
    };
    if hierarchy != 0 {
        return;
    }
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
