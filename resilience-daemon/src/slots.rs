//! Which kernel slot each destination uses. Pure: the pinned POLICY map remembers each slot's
//! owner (a hash of its name), so a destination keeps its slot, and its counters, across daemon
//! restarts and policy reloads.

use std::collections::HashMap;

/// FNV-1a of the name; never 0, which marks a free slot.
pub fn name_id(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h.max(1)
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Slot of each destination, in the order given.
    pub slots: Vec<u32>,
    /// Slots newly given to a destination: their counters start from zero.
    pub fresh: Vec<u32>,
    /// Slots whose destination is gone: to be cleared.
    pub freed: Vec<u32>,
}

/// `taken`: (slot, name id) of every slot in use now; `available(slot)`: a free slot may be
/// given to a new owner now (a slot freed a moment ago is not: connections of its previous
/// owner may still be finishing).
pub fn plan(
    taken: &[(u32, u64)],
    names: &[&str],
    max_slots: u32,
    available: impl Fn(u32) -> bool,
) -> Result<Plan, String> {
    let by_id: HashMap<u64, u32> = taken.iter().map(|&(s, id)| (id, s)).collect();
    let wanted: Vec<u64> = names.iter().map(|n| name_id(n)).collect();
    let mut used: Vec<bool> = vec![false; max_slots as usize];
    let mut plan = Plan::default();
    let mut slots: Vec<Option<u32>> = wanted
        .iter()
        .map(|id| by_id.get(id).copied().filter(|&s| s < max_slots))
        .collect();
    // Slots being freed are not handed out again in the same plan: connections in flight may
    // still count into them.
    for &(s, _) in taken {
        if s < max_slots {
            used[s as usize] = true;
        }
    }
    for (s, u) in used.iter_mut().enumerate() {
        if !*u && !available(s as u32) {
            *u = true;
        }
    }
    let mut next_free = 0usize;
    for slot in slots.iter_mut().filter(|s| s.is_none()) {
        while next_free < used.len() && used[next_free] {
            next_free += 1;
        }
        if next_free >= used.len() {
            return Err(format!(
                "no free slot for a new destination ({max_slots} slots, some freed a moment ago)"
            ));
        }
        used[next_free] = true;
        *slot = Some(next_free as u32);
        plan.fresh.push(next_free as u32);
    }
    plan.slots = slots.into_iter().flatten().collect();
    plan.freed = taken
        .iter()
        .map(|&(s, _)| s)
        .filter(|s| !plan.slots.contains(s))
        .collect();
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_names_take_the_lowest_free_slots() {
        let p = plan(&[], &["a", "b"], 8, |_| true).unwrap();
        assert_eq!(p.slots, vec![0, 1]);
        assert_eq!(p.fresh, vec![0, 1]);
        assert!(p.freed.is_empty());
    }

    #[test]
    fn known_names_keep_their_slot_and_gone_ones_are_freed() {
        let taken = [(3, name_id("a")), (0, name_id("gone"))];
        let p = plan(&taken, &["new", "a"], 8, |_| true).unwrap();
        assert_eq!(p.slots, vec![1, 3]);
        assert_eq!(p.fresh, vec![1]);
        assert_eq!(p.freed, vec![0]);
    }

    #[test]
    fn too_many_destinations_is_an_error() {
        assert!(plan(&[], &["a", "b", "c"], 2, |_| true).is_err());
    }

    #[test]
    fn slots_freed_a_moment_ago_are_not_handed_out() {
        let p = plan(&[], &["x"], 4, |s| s >= 2).unwrap();
        assert_eq!(p.slots, vec![2]);
        assert!(plan(&[], &["x", "y", "z"], 4, |s| s >= 2).is_err());
    }

    #[test]
    fn name_ids_are_never_zero_and_differ() {
        assert_ne!(name_id(""), 0);
        assert_ne!(name_id("a"), name_id("b"));
    }
}
