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

#[test]
fn mapped_arrays_are_mmapable_with_the_entries_the_daemon_maps() {
    let obj = Object::parse(super::OBJECT).expect("parsing the embedded object");
    for &(name, entries) in maps::MMAPPED {
        let map = obj
            .maps
            .get(name)
            .unwrap_or_else(|| panic!("map {name} missing"));
        assert_ne!(
            map.map_flags() & maps::BPF_F_MMAPABLE,
            0,
            "{name} must be created with BPF_F_MMAPABLE"
        );
        assert_eq!(map.max_entries(), entries, "entries of {name}");
        assert_eq!(
            map.value_size() % 8,
            0,
            "{name}: mapped values are 8-byte multiples"
        );
    }
    // Connections are in a plain hash (never evicting), so that nothing can evict an entry that
    // holds a place; OBS_CONNS (an earlier build's observed connections) keeps its type, so
    // that the pins such a build left still load.
    assert_eq!(
        obj.maps[maps::CONNS].map_type(),
        1,
        "CONNS is BPF_MAP_TYPE_HASH"
    );
    assert_eq!(
        obj.maps[maps::OBS_CONNS].map_type(),
        9,
        "OBS_CONNS is BPF_MAP_TYPE_LRU_HASH"
    );
}
