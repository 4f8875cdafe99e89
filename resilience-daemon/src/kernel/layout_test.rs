//! The built object agrees with the shared types: every map's key and value size, and the
//! programs and global the loader expects. Needs no root: the object is only parsed.

use aya_obj::Object;
use resilience_common::maps::{self, LAYOUT};

#[test]
fn map_sizes_match_the_shared_types() {
    let obj = Object::parse(super::OBJECT).expect("parsing the embedded object");
    for &(name, key, value) in LAYOUT {
        let map = obj
            .maps
            .get(name)
            .unwrap_or_else(|| panic!("map {name} missing from the object"));
        assert_eq!(map.key_size() as usize, key, "key size of {name}");
        assert_eq!(map.value_size() as usize, value, "value size of {name}");
    }
    let ring = obj.maps.get(maps::EVENTS).expect("map EVENTS");
    assert_eq!(ring.max_entries(), maps::EVENTS_BYTES);
    // Every map in the object is accounted for.
    for name in obj.maps.keys() {
        let known = LAYOUT.iter().any(|(n, _, _)| n == name)
            || name == maps::EVENTS
            || name.starts_with('.');
        assert!(
            known,
            "map {name} is not in resilience_common::maps::LAYOUT"
        );
    }
}

#[test]
fn programs_the_loader_attaches_are_there() {
    let obj = Object::parse(super::OBJECT).expect("parsing the embedded object");
    for p in ["connect4", "connect6", "sock_ops", "sock_release"] {
        assert!(obj.programs.contains_key(p), "program {p} missing");
    }
}
