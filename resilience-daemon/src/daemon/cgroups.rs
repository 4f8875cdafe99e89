//! Where each service's processes live: its cgroup directory, that directory's id (what the
//! connect hook sees) and its level. Looked at again every tick: systemd removes a unit's
//! cgroup when it stops and makes a new one, with a new id, when it starts, and the service's
//! routes must follow within a tick. Its slots, and so its breakers, stay: they belong to the
//! service's name, not to a cgroup id.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use resilience_common::{service::SERVICE_LEVELS, CgroupPath};

use crate::config::{Service, ServiceCgroup};

/// A unit not found is searched for again this often (a walk of the cgroup tree).
const SEARCH_EVERY: Duration = Duration::from_secs(1);

/// One service's cgroup as last seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    /// The directory (for a unit: where it was last found).
    pub path: Option<PathBuf>,
    /// Its level in the cgroup2 tree (the root is 0).
    pub level: Option<u32>,
    /// The directory's cgroup id, while it exists.
    pub id: Option<u64>,
}

/// What changed about one service's cgroup, for the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Not there (yet): its processes are observed, not guarded, until it is.
    Missing {
        service: String,
        what: String,
    },
    Appeared {
        service: String,
        path: PathBuf,
    },
    /// Removed and created again (a restarted unit): the routes follow the new id.
    Replaced {
        service: String,
        path: PathBuf,
    },
    Gone {
        service: String,
        path: PathBuf,
    },
    /// Outside the guarded cgroup: the programs never run for its processes.
    Unguarded {
        service: String,
        path: PathBuf,
    },
    /// Deeper than the hook looks.
    TooDeep {
        service: String,
        path: PathBuf,
    },
}

impl Change {
    pub fn service(&self) -> &str {
        match self {
            Change::Missing { service, .. }
            | Change::Appeared { service, .. }
            | Change::Replaced { service, .. }
            | Change::Gone { service, .. }
            | Change::Unguarded { service, .. }
            | Change::TooDeep { service, .. } => service,
        }
    }

    /// A warning (something is not guarded), or a note.
    pub fn is_warning(&self) -> bool {
        matches!(
            self,
            Change::Missing { .. }
                | Change::Gone { .. }
                | Change::Unguarded { .. }
                | Change::TooDeep { .. }
        )
    }

    pub fn message(&self) -> String {
        match self {
            Change::Missing { service, what } => format!(
                "service {service}: {what} does not exist yet: its processes are guarded once \
                 it does (looked for every tick)"
            ),
            Change::Appeared { service, path } => format!(
                "service {service}: cgroup {} exists: its processes are guarded",
                path.display()
            ),
            Change::Replaced { service, path } => format!(
                "service {service}: cgroup {} was created again (a restart): still guarded, \
                 breakers kept",
                path.display()
            ),
            Change::Gone { service, path } => format!(
                "service {service}: cgroup {} was removed: guarded again once it is back",
                path.display()
            ),
            Change::Unguarded { service, path } => format!(
                "service {service}: cgroup {} is not inside the guarded cgroup: its connects \
                 never reach the programs",
                path.display()
            ),
            Change::TooDeep { service, path } => format!(
                "service {service}: cgroup {} is deeper than level {}: not guarded",
                path.display(),
                SERVICE_LEVELS - 1
            ),
        }
    }
}

pub struct Cgroups {
    /// The cgroup2 mount.
    root: PathBuf,
    /// The cgroup the programs are attached to.
    guarded: PathBuf,
    found: HashMap<String, Found>,
    /// Services already warned about as outside the guarded cgroup or too deep.
    warned: HashMap<String, PathBuf>,
    searched: HashMap<String, Instant>,
}

impl Cgroups {
    pub fn new(root: PathBuf, guarded: PathBuf) -> Cgroups {
        Cgroups {
            root,
            guarded,
            found: HashMap::new(),
            warned: HashMap::new(),
            searched: HashMap::new(),
        }
    }

    pub fn found(&self, service: &str) -> Option<&Found> {
        self.found.get(service)
    }

    /// The cgroup id of `service` now, if its directory exists at a level the hook reads.
    pub fn id(&self, service: &str) -> Option<u64> {
        let f = self.found.get(service)?;
        f.level.filter(|&l| l < SERVICE_LEVELS)?;
        f.id
    }

    /// Levels (bit l = level l) where the services of `services` live or will live.
    pub fn levels<'a>(&self, services: impl IntoIterator<Item = &'a Service>) -> u32 {
        services
            .into_iter()
            .filter_map(|s| self.found.get(&s.name)?.level)
            .filter(|&l| l < SERVICE_LEVELS)
            .fold(0, |m, l| m | (1 << l))
    }

    /// What the kernel's maps should hold for `services`: SERVICES (cgroup id -> service) for
    /// the cgroups that exist, WATCH (path below the root -> service) for where each one is or
    /// will be created. A unit never found is watched where systemd puts system units.
    pub fn kernel_view(
        &self,
        services: &[Service],
    ) -> (HashMap<u64, u64>, HashMap<CgroupPath, u64>) {
        let mut ids = HashMap::new();
        let mut paths = HashMap::new();
        for s in services {
            let key = service_key(&s.name);
            if let Some(id) = self.id(&s.name) {
                ids.insert(id, key);
            }
            let path = match (
                self.found.get(&s.name).and_then(|f| f.path.clone()),
                &s.cgroup,
            ) {
                (Some(p), _) => p,
                (None, ServiceCgroup::Unit(u)) => self.root.join("system.slice").join(u),
                (None, ServiceCgroup::Path(p)) => self.resolve(p),
            };
            let Ok(rel) = path.strip_prefix(&self.root) else {
                continue;
            };
            let text = format!("/{}", rel.display());
            if let Some(p) = CgroupPath::new(text.as_bytes()) {
                paths.insert(p, key);
            }
        }
        (ids, paths)
    }

    /// Look at every service's cgroup again; what changed since the last look.
    pub fn refresh(&mut self, services: &[Service], now: Instant) -> Vec<Change> {
        self.found
            .retain(|name, _| services.iter().any(|s| &s.name == name));
        let mut changes = Vec::new();
        for s in services {
            let before = self.found.get(&s.name).cloned();
            let path = match &s.cgroup {
                ServiceCgroup::Path(p) => Some(self.resolve(p)),
                ServiceCgroup::Unit(unit) => self.unit_path(&s.name, unit, before.as_ref(), now),
            };
            let level = path.as_deref().and_then(|p| level(&self.root, p));
            let id = path.as_deref().and_then(dir_id);
            let now_found = Found {
                path: path.clone(),
                level,
                id,
            };
            let name = s.name.clone();
            if let (Some(p), Some(l)) = (&path, level) {
                let problem = if l >= SERVICE_LEVELS {
                    Some(Change::TooDeep {
                        service: name.clone(),
                        path: p.clone(),
                    })
                } else if !p.starts_with(&self.guarded) {
                    Some(Change::Unguarded {
                        service: name.clone(),
                        path: p.clone(),
                    })
                } else {
                    None
                };
                if let Some(c) = problem {
                    if self.warned.get(&name) != Some(p) {
                        self.warned.insert(name.clone(), p.clone());
                        changes.push(c);
                    }
                }
            }
            match (before.as_ref().and_then(|b| b.id), id) {
                (None, None) if before.is_none() => changes.push(Change::Missing {
                    service: name.clone(),
                    what: match &path {
                        Some(p) => format!("cgroup {}", p.display()),
                        None => s.cgroup.to_string(),
                    },
                }),
                (None, Some(_)) => changes.push(Change::Appeared {
                    service: name.clone(),
                    path: path.clone().unwrap_or_default(),
                }),
                (Some(a), Some(b)) if a != b => changes.push(Change::Replaced {
                    service: name.clone(),
                    path: path.clone().unwrap_or_default(),
                }),
                (Some(_), None) => changes.push(Change::Gone {
                    service: name.clone(),
                    path: before.and_then(|b| b.path).unwrap_or_default(),
                }),
                _ => {}
            }
            self.found.insert(name, now_found);
        }
        changes
    }

    /// A relative path is under the cgroup2 mount; so is an absolute one that is not already
    /// (systemd prints a unit's ControlGroup as "/system.slice/x.service").
    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() && p.starts_with(&self.root) {
            return p.to_path_buf();
        }
        self.root.join(p.strip_prefix("/").unwrap_or(p))
    }

    /// Where a unit's cgroup is: where it was last found while that still exists, else the
    /// shallowest directory named after the unit (searched at most every `SEARCH_EVERY`).
    fn unit_path(
        &mut self,
        service: &str,
        unit: &str,
        before: Option<&Found>,
        now: Instant,
    ) -> Option<PathBuf> {
        let last = before.and_then(|b| b.path.clone());
        if let Some(p) = &last {
            if p.is_dir() {
                return last;
            }
        }
        let due = self
            .searched
            .get(service)
            .is_none_or(|t| now.saturating_duration_since(*t) >= SEARCH_EVERY);
        if !due {
            return last;
        }
        self.searched.insert(service.to_string(), now);
        find_dir(&self.root, unit).or(last)
    }
}

/// A service as the kernel knows it (SERVICES values, ROUTES keys): a hash of its name, so
/// that it stays the same across reloads and restarts.
pub fn service_key(name: &str) -> u64 {
    crate::slots::name_id(name)
}

/// The cgroup id of a cgroup2 directory: its inode number.
fn dir_id(p: &Path) -> Option<u64> {
    crate::kernel::attach::dir_id(p).map(|(_, ino)| ino)
}

/// Components below the root: the level `bpf_get_current_ancestor_cgroup_id` takes.
fn level(root: &Path, p: &Path) -> Option<u32> {
    Some(p.strip_prefix(root).ok()?.components().count() as u32)
}

/// Breadth first, so that the shallowest match wins, and bounded in depth.
fn find_dir(root: &Path, name: &str) -> Option<PathBuf> {
    let mut level = vec![root.to_path_buf()];
    for _ in 0..SERVICE_LEVELS {
        let mut next = Vec::new();
        for dir in &level {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for e in entries.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                if e.file_name() == name {
                    return Some(e.path());
                }
                next.push(e.path());
            }
        }
        if next.is_empty() {
            return None;
        }
        level = next;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, cgroup: ServiceCgroup) -> Service {
        Service {
            name: name.into(),
            cgroup,
        }
    }

    #[test]
    fn follows_a_directory_removed_and_created_again() {
        let root = std::env::temp_dir().join(format!("resilience-cg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("guarded")).expect("mkdir");
        let services = [svc("a", ServiceCgroup::Path("guarded/a".into()))];
        let mut cg = Cgroups::new(root.clone(), root.join("guarded"));
        let t = Instant::now();
        let c = cg.refresh(&services, t);
        assert!(matches!(&c[..], [Change::Missing { .. }]), "{c:?}");
        assert_eq!(cg.id("a"), None);
        assert_eq!(cg.levels(&services), 1 << 2, "level known before it exists");
        assert!(cg.refresh(&services, t).is_empty(), "said once");

        std::fs::create_dir(root.join("guarded/a")).expect("mkdir");
        let c = cg.refresh(&services, t);
        assert!(matches!(&c[..], [Change::Appeared { .. }]), "{c:?}");
        let first = cg.id("a").expect("id");

        // Removed, then a new directory at the same path (cgroupfs gives it a new id; this
        // test's filesystem may not).
        std::fs::remove_dir(root.join("guarded/a")).expect("rmdir");
        let c = cg.refresh(&services, t);
        assert!(matches!(&c[..], [Change::Gone { .. }]), "{c:?}");
        std::fs::create_dir(root.join("guarded/a")).expect("mkdir");
        let c = cg.refresh(&services, t);
        assert!(matches!(&c[..], [Change::Appeared { .. }]), "{c:?}");
        assert!(cg.id("a").is_some());
        let _ = first;
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn units_are_found_by_name_and_paths_outside_are_warned_about() {
        let root = std::env::temp_dir().join(format!("resilience-cgu-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("system.slice/x.service")).expect("mkdir");
        std::fs::create_dir_all(root.join("other")).expect("mkdir");
        let services = [
            svc("x", ServiceCgroup::Unit("x.service".into())),
            svc("o", ServiceCgroup::Path("/other".into())),
        ];
        let mut cg = Cgroups::new(root.clone(), root.join("system.slice"));
        let c = cg.refresh(&services, Instant::now());
        assert!(
            c.iter()
                .any(|c| matches!(c, Change::Appeared { service, .. } if service == "x")),
            "{c:?}"
        );
        assert!(
            c.iter()
                .any(|c| matches!(c, Change::Unguarded { service, .. } if service == "o")),
            "{c:?}"
        );
        assert_eq!(
            cg.found("x").and_then(|f| f.path.clone()),
            Some(root.join("system.slice/x.service"))
        );
        assert_eq!(cg.levels(&services), (1 << 2) | (1 << 1));
        let _ = std::fs::remove_dir_all(&root);
    }
}
