//! deploy/kubernetes: every manifest parses into the Kubernetes API types with no field left
//! over (a typo'd or unknown field would be dropped by the types: the round trip tells); the
//! DaemonSet agrees with the daemon's defaults (policy path, socket, pin directory, cgroup
//! root, capabilities of the systemd unit, metrics port); the Helm chart renders exactly these
//! manifests; the Containerfile builds the binary the DaemonSet runs.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{ConfigMap, Container, Namespace, Service, Volume},
};
use resilience_daemon::config;
use serde::de::DeserializeOwned;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every YAML document of `text`, as JSON values.
fn documents(text: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(text)
        .map(|d| serde_yaml::Value::deserialize(d).expect("YAML"))
        .filter(|v| !v.is_null())
        .map(|v| serde_json::to_value(v).expect("YAML as JSON"))
        .collect()
}

fn manifests() -> BTreeMap<(String, String), Value> {
    let dir = repo().join("deploy/kubernetes");
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(&dir).expect("deploy/kubernetes") {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "yaml") {
            for d in documents(&std::fs::read_to_string(&p).unwrap()) {
                out.insert(key(&d), d);
            }
        }
    }
    out
}

fn key(d: &Value) -> (String, String) {
    (
        d["kind"].as_str().expect("kind").to_string(),
        d["metadata"]["name"]
            .as_str()
            .expect("metadata.name")
            .to_string(),
    )
}

/// `v` as `T`, and back: equal, or the types dropped (or changed) something.
fn typed<T: DeserializeOwned + serde::Serialize>(v: &Value) -> T {
    let t: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| {
        panic!(
            "{:?}: not a valid {}: {e}",
            key(v),
            std::any::type_name::<T>()
        )
    });
    let back = serde_json::to_value(&t).unwrap();
    let mut diffs = Vec::new();
    diff("", v, &back, &mut diffs);
    assert!(
        diffs.is_empty(),
        "{:?}: fields the Kubernetes API does not know (or mistyped): {diffs:?}",
        key(v)
    );
    t
}

fn diff(at: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                match y.get(k) {
                    Some(w) => diff(&format!("{at}.{k}"), v, w, out),
                    None => out.push(format!("{at}.{k}")),
                }
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                diff(&format!("{at}[{i}]"), v, w, out);
            }
        }
        _ if a == b => {}
        _ => out.push(format!("{at}: {a} != {b}")),
    }
}

fn daemonset() -> DaemonSet {
    typed(&manifests()[&("DaemonSet".into(), "resilience".into())])
}

fn main_container(ds: &DaemonSet) -> Container {
    let spec = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    spec.containers
        .iter()
        .find(|c| c.name == "resilience")
        .expect("a container named resilience")
        .clone()
}

fn arg(c: &Container, flag: &str) -> String {
    let args = c.args.as_ref().expect("args");
    let i = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{flag} in {args:?}"));
    args[i + 1].clone()
}

/// The volume mounted at `path` in `c` (or at the closest directory above it).
fn volume_at<'a>(ds: &'a DaemonSet, c: &Container, path: &str) -> (&'a Volume, String) {
    let mounts = c.volume_mounts.as_ref().expect("volumeMounts");
    let m = mounts
        .iter()
        .filter(|m| Path::new(path).starts_with(&m.mount_path))
        .max_by_key(|m| m.mount_path.len())
        .unwrap_or_else(|| panic!("nothing is mounted at or above {path}"));
    assert!(
        m.sub_path.is_none(),
        "{path}: a subPath mount never sees the kubelet's updates"
    );
    let spec = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let v = spec
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == m.name)
        .unwrap_or_else(|| panic!("no volume {}", m.name));
    (v, m.mount_propagation.clone().unwrap_or_default())
}

#[test]
fn every_manifest_is_a_valid_kubernetes_object_with_no_unknown_field() {
    let all = manifests();
    assert!(all.len() >= 5, "{:?}", all.keys());
    for (k, v) in &all {
        match k.0.as_str() {
            "Namespace" => drop(typed::<Namespace>(v)),
            "ConfigMap" => drop(typed::<ConfigMap>(v)),
            "DaemonSet" => drop(typed::<DaemonSet>(v)),
            "Service" => drop(typed::<Service>(v)),
            // A CRD of the Prometheus Operator: checked by hand below.
            "PodMonitor" => assert_eq!(v["apiVersion"], "monitoring.coreos.com/v1"),
            other => panic!("{other}: add its type to this test"),
        }
    }
}

#[test]
fn the_checker_catches_an_unknown_or_mistyped_field() {
    let mut v = manifests()[&("DaemonSet".into(), "resilience".into())].clone();
    v["spec"]["template"]["spec"]["hostPid"] = Value::Bool(true);
    let r = std::panic::catch_unwind(|| typed::<DaemonSet>(&v));
    assert!(r.is_err(), "hostPid (for hostPID) must be caught");
}

#[test]
fn the_daemonset_agrees_with_the_daemons_defaults() {
    let ds = daemonset();
    let c = main_container(&ds);
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(c.args.as_ref().unwrap()[0], "run");

    // The policy: the systemd unit's path, in a ConfigMap directory mount, and valid.
    let unit = std::fs::read_to_string(repo().join("config/resilience.service")).unwrap();
    let policy_path = arg(&c, "--config");
    assert!(
        unit.contains(&format!("--config {policy_path}")),
        "the unit and the DaemonSet read the policy from the same path ({policy_path})"
    );
    let (v, _) = volume_at(&ds, &c, &policy_path);
    let cm_name = &v
        .config_map
        .as_ref()
        .expect("the policy is a ConfigMap")
        .name;
    let cm: ConfigMap = typed(&manifests()[&("ConfigMap".into(), cm_name.clone())]);
    let file = Path::new(&policy_path)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    let text = &cm.data.as_ref().unwrap()[file];
    let policy = config::parse_str(text, Path::new(&policy_path))
        .unwrap_or_else(|e| panic!("the ConfigMap's policy: {e}"));

    // Socket and pins: the daemon's defaults, on the right kinds of volume.
    assert_eq!(policy.daemon.socket, Path::new(config::DEFAULT_SOCKET));
    assert_eq!(policy.daemon.pin_dir, Path::new(config::DEFAULT_PIN_DIR));
    let (run, _) = volume_at(&ds, &c, config::DEFAULT_SOCKET);
    assert!(run.empty_dir.is_some(), "the socket's directory: {run:?}");
    let (bpf, propagation) = volume_at(&ds, &c, config::DEFAULT_PIN_DIR);
    assert_eq!(
        bpf.host_path.as_ref().map(|h| h.path.as_str()),
        Some("/sys/fs/bpf"),
        "pins outlive the pod only on the host's bpffs"
    );
    assert_eq!(
        propagation, "HostToContainer",
        "sees a bpffs mounted after start"
    );
    let init = pod
        .init_containers
        .as_ref()
        .expect("an init container mounts bpffs");
    assert!(init.iter().any(|i| i
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.name == bpf.name && m.mount_propagation.as_deref() == Some("Bidirectional"))));

    // The cgroup root: the host's tree, mounted where --cgroup points.
    let cgroup = arg(&c, "--cgroup");
    let (cg, _) = volume_at(&ds, &c, &cgroup);
    assert_eq!(
        cg.host_path.as_ref().map(|h| h.path.clone()),
        Some(cgroup.clone())
    );
    let (btf, _) = volume_at(&ds, &c, "/sys/kernel/btf/vmlinux");
    assert_eq!(
        btf.host_path.as_ref().map(|h| h.path.as_str()),
        Some("/sys/kernel/btf")
    );

    // Capabilities: exactly the systemd unit's bounding set; not privileged.
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, Some(false));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    let mut added: Vec<String> = caps.add.clone().unwrap();
    added.sort();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .unwrap();
    let mut wanted: Vec<String> = line
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_string())
        .collect();
    wanted.sort();
    assert_eq!(added, wanted);

    // Metrics: the port --metrics opens is the named port the probes use.
    let metrics: std::net::SocketAddr = arg(&c, "--metrics").parse().unwrap();
    let port = c
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("metrics"))
        .expect("a port named metrics");
    assert_eq!(port.container_port, i32::from(metrics.port()));
    for probe in [&c.liveness_probe, &c.readiness_probe] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some("/metrics"));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("metrics".into())
        );
    }

    // Scheduling: every node, first.
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert!(pod
        .tolerations
        .iter()
        .flatten()
        .any(|t| t.operator.as_deref() == Some("Exists") && t.key.is_none()));
    // Rollouts: the old pod leaves before the new one takes the pins over.
    let ru = ds.spec.as_ref().unwrap().update_strategy.as_ref().unwrap();
    assert_eq!(ru.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(
        ru.rolling_update.as_ref().unwrap().max_surge,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(0))
    );

    // Prometheus: the Service and the PodMonitor select these pods, on the metrics port.
    let labels = ds
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone();
    let svc: Service = typed(&manifests()[&("Service".into(), "resilience-metrics".into())]);
    let s = svc.spec.unwrap();
    assert_eq!(s.selector, labels);
    assert_eq!(
        s.ports.unwrap()[0].target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("metrics".into()))
    );
    let pm = &manifests()[&("PodMonitor".into(), "resilience".into())];
    assert_eq!(
        serde_json::to_value(&labels).unwrap(),
        pm["spec"]["selector"]["matchLabels"]
    );
    assert_eq!(pm["spec"]["podMetricsEndpoints"][0]["port"], "metrics");
}

#[test]
fn the_containerfile_builds_the_binary_the_daemonset_runs() {
    let cf = std::fs::read_to_string(repo().join("deploy/Containerfile")).unwrap();
    assert!(
        cf.contains("RUN cargo xtask build"),
        "built by the project's own set-up"
    );
    assert!(cf.contains("COPY --from=build /resilience /usr/local/bin/resilience"));
    assert!(cf.contains("ENTRYPOINT [\"/usr/local/bin/resilience\"]"));
    let ds = daemonset();
    let c = main_container(&ds);
    assert!(
        c.command.is_none(),
        "the image's entrypoint runs, with the DaemonSet's args"
    );
    let image = c.image.unwrap();
    assert!(
        image.ends_with(&format!(":{}", env!("CARGO_PKG_VERSION"))),
        "{image}: the tag is this version"
    );
}

/// The helm binary `cargo xtask test` installs, or one on PATH.
fn helm() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RESILIENCE_HELM") {
        return Some(PathBuf::from(p));
    }
    let cached = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/resilience/helm/helm"))
        .filter(|p| p.exists());
    cached.or_else(|| {
        std::process::Command::new("helm")
            .arg("version")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|_| PathBuf::from("helm"))
    })
}

#[test]
fn the_helm_chart_renders_the_manifests() {
    let Some(helm) = helm() else {
        if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
            panic!("helm is missing: `cargo xtask test` installs it");
        }
        eprintln!("SKIPPED: no helm (cargo xtask test installs it)");
        return;
    };
    let out = std::process::Command::new(&helm)
        .args(["template", "resilience"])
        .arg(repo().join("deploy/helm/resilience"))
        .args(["--namespace", "resilience"])
        .output()
        .expect("running helm");
    assert!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered: BTreeMap<(String, String), Value> =
        documents(&String::from_utf8_lossy(&out.stdout))
            .into_iter()
            .map(|d| (key(&d), d))
            .collect();
    let plain = manifests();
    assert_eq!(
        rendered.keys().collect::<Vec<_>>(),
        plain.keys().collect::<Vec<_>>()
    );
    for (k, v) in &plain {
        let mut diffs = Vec::new();
        diff("", v, &rendered[k], &mut diffs);
        diff("", &rendered[k], v, &mut diffs);
        assert!(
            diffs.is_empty(),
            "{k:?}: chart and manifest differ: {diffs:?}"
        );
    }
}
