//! deploy/kube-vxdp.yml, deploy/Containerfile and deploy/install-conf: every object of the
//! manifest validated against the Kubernetes API's schemas (`kubernetes-validate --strict`,
//! PyPI's kubernetes-validate, which ships the OpenAPI-derived JSON schemas of each Kubernetes
//! release), then what vxdp needs from it checked against vxdp itself: the flags parse, the
//! network config parses, the probes hit the health port, RBAC is flannel's, the capabilities
//! are those the comments explain. No root needed.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const VXDP: &str = env!("CARGO_BIN_EXE_vxdp");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The manifest's objects, as JSON (PyYAML, which kubernetes-validate depends on, reads it).
fn objects() -> Vec<Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)",
        ])
        .arg(repo("deploy/kube-vxdp.yml"))
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "reading the manifest with PyYAML failed (pip install kubernetes-validate brings it): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Vec<Value>>(&out.stdout)
        .expect("JSON from PyYAML")
        .into_iter()
        .filter(|o| !o.is_null())
        .collect()
}

fn object<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = objects.iter().filter(|o| o["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "exactly one {kind} in the manifest");
    found[0]
}

#[test]
fn every_object_validates_against_the_kubernetes_schemas() {
    // The oldest Kubernetes release still supported upstream when this was written, and the
    // newest the tool knows.
    for version in ["1.33.0", "1.37.0"] {
        let out = Command::new("kubernetes-validate")
            .args(["--strict", "-k", version])
            .arg(repo("deploy/kube-vxdp.yml"))
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run kubernetes-validate ({e}): install it with `pip install \
                     kubernetes-validate` (PyPI); this test must not be skipped"
                )
            });
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "Kubernetes {version}: {text}");
        for kind in [
            "namespace",
            "clusterrole",
            "clusterrolebinding",
            "serviceaccount",
            "configmap",
            "daemonset",
        ] {
            assert!(
                text.contains(&format!("passed for resource {kind}/")),
                "Kubernetes {version}: {kind} not validated: {text}"
            );
        }
        assert!(!text.contains("ERROR"), "{text}");
    }
}

#[test]
fn rbac_is_exactly_what_the_kubernetes_subnet_manager_uses() {
    let objs = objects();
    let role = object(&objs, "ClusterRole");
    let mut rules: Vec<(String, Vec<String>)> = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["apiGroups"], serde_json::json!([""]), "{r}");
            let resources = r["resources"].as_array().unwrap();
            assert_eq!(resources.len(), 1, "{r}");
            let verbs = r["verbs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            (resources[0].as_str().unwrap().to_string(), verbs)
        })
        .collect();
    rules.sort();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        rules,
        vec![
            ("nodes".to_string(), s(&["get", "list", "watch"])),
            ("nodes/status".to_string(), s(&["patch"])),
            ("pods".to_string(), s(&["get"])),
        ]
    );
    let binding = object(&objs, "ClusterRoleBinding");
    let sa = object(&objs, "ServiceAccount");
    let ns = object(&objs, "Namespace");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["name"], sa["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["namespace"], ns["metadata"]["name"]);
    assert_eq!(sa["metadata"]["namespace"], ns["metadata"]["name"]);
    let ds = object(&objs, "DaemonSet");
    assert_eq!(
        ds["spec"]["template"]["spec"]["serviceAccountName"],
        sa["metadata"]["name"]
    );
}

#[test]
fn the_config_map_holds_a_network_config_vxdp_accepts_and_flannels_cni_config() {
    let objs = objects();
    let cm = object(&objs, "ConfigMap");
    let net_conf = cm["data"]["net-conf.json"].as_str().unwrap();
    let config = control::config::parse(net_conf).expect("net-conf.json parses");
    assert_eq!(
        config.ipv4.map(|v4| v4.network.to_string()).as_deref(),
        Some("10.244.0.0/16")
    );
    assert_eq!(config.vxlan_port(), 8472);
    let cni: Value = serde_json::from_str(cm["data"]["cni-conf.json"].as_str().unwrap())
        .expect("cni-conf.json is JSON");
    assert_eq!(cni["plugins"][0]["type"], "flannel");
    assert_eq!(cni["plugins"][1]["type"], "portmap");
}

#[test]
fn the_daemon_set_runs_vxdp_as_flannel_runs_flanneld() {
    let objs = objects();
    let ds = object(&objs, "DaemonSet");
    let ns = object(&objs, "Namespace");
    let cm = object(&objs, "ConfigMap");
    assert_eq!(ds["metadata"]["namespace"], ns["metadata"]["name"]);
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    assert_eq!(c["command"], serde_json::json!(["/opt/bin/flanneld"]));

    // The arguments are vxdp flags with valid values (clap parses them all before --version
    // answers).
    let args: Vec<String> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert!(args.contains(&"--kube-subnet-mgr".to_string()), "{args:?}");
    let out = Command::new(VXDP)
        .args(&args)
        .arg("--version")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "vxdp refuses the DaemonSet's arguments {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Probes on the health port vxdp serves.
    let port: u16 = args
        .iter()
        .find_map(|a| a.strip_prefix("--healthz-port="))
        .expect("--healthz-port=")
        .parse()
        .unwrap();
    let ports = c["ports"].as_array().unwrap();
    let healthz = ports.iter().find(|p| p["name"] == "healthz").unwrap();
    assert_eq!(healthz["containerPort"], port);
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["livenessProbe"]["httpGet"]["port"], "healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], "healthz");

    // Capabilities: NET_ADMIN and NET_RAW (flannel's, all the kernel backend needs), plus
    // BPF, PERFMON and IPC_LOCK for AF_XDP; never privileged.
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    let mut caps: Vec<&str> = sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    caps.sort_unstable();
    assert_eq!(caps, ["BPF", "IPC_LOCK", "NET_ADMIN", "NET_RAW", "PERFMON"]);

    // flanneld's environment: the node through the pod, the queue depth and cache setting as
    // vxdp reads them.
    let env = c["env"].as_array().unwrap();
    let var = |name: &str| {
        env.iter()
            .find(|e| e["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in the DaemonSet's env"))
    };
    assert_eq!(
        var("POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        var("POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    let depth = var("EVENT_QUEUE_DEPTH")["value"].as_str().unwrap();
    assert_eq!(
        control::store::kube::event_queue_depth(Some(depth)).unwrap(),
        5000
    );
    assert_eq!(var("CONT_WHEN_CACHE_NOT_READY")["value"], "false");

    // Mounts: subnet.env where flannel's CNI plugin reads it, the config where vxdp reads it
    // by default, the xtables lock, and /dev/net/tun for the TAP.
    let volumes = pod["volumes"].as_array().unwrap();
    let volume = |name: &str| {
        volumes
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    let mounts = c["volumeMounts"].as_array().unwrap();
    let mount = |path: &str| {
        let m = mounts
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("nothing mounted at {path}"));
        volume(m["name"].as_str().unwrap())
    };
    assert_eq!(mount("/run/flannel")["hostPath"]["path"], "/run/flannel");
    let cfg = mount("/etc/kube-flannel/");
    assert_eq!(cfg["configMap"]["name"], cm["metadata"]["name"]);
    assert!(
        Path::new(control::store::kube::DEFAULT_NET_CONF_PATH).starts_with("/etc/kube-flannel"),
        "the mount is where vxdp looks by default"
    );
    assert_eq!(
        mount("/run/xtables.lock")["hostPath"]["type"],
        "FileOrCreate"
    );
    assert_eq!(mount("/dev/net/tun")["hostPath"]["type"], "CharDevice");

    // flannel's init containers: its CNI plugin, and the CNI config installed by
    // /opt/bin/install-conf from the config map.
    let init = pod["initContainers"].as_array().unwrap();
    assert_eq!(init[0]["name"], "install-cni-plugin");
    assert_eq!(
        init[0]["args"],
        serde_json::json!(["-f", "/flannel", "/opt/cni/bin/flannel"])
    );
    assert_eq!(
        init[1]["command"],
        serde_json::json!(["/opt/bin/install-conf"])
    );
    assert_eq!(
        init[1]["args"],
        serde_json::json!([
            "/etc/kube-flannel/cni-conf.json",
            "/etc/cni/net.d/10-flannel.conflist"
        ])
    );
    assert_eq!(
        init[1]["image"], c["image"],
        "install-conf ships in vxdp's image"
    );
}

#[test]
fn the_image_answers_to_flannels_paths() {
    let file = std::fs::read_to_string(repo("deploy/Containerfile")).unwrap();
    let stages: Vec<&str> = file.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(
        stages.len(),
        2,
        "a build stage and a runtime stage: {stages:?}"
    );
    assert!(file.contains("ln -s /usr/local/bin/vxdp /opt/bin/flanneld"));
    assert!(file.contains("COPY deploy/install-conf /opt/bin/install-conf"));
    assert!(file.contains(r#"ENTRYPOINT ["/opt/bin/flanneld"]"#));
    // The tools vxdp runs (control/src/masq.rs) are in the runtime stage.
    let runtime = &file[file.rfind("FROM ").unwrap()..];
    for package in ["iptables", "nftables", "iproute2", "libelf1", "zlib1g"] {
        assert!(
            runtime.contains(package),
            "{package} missing from the runtime stage"
        );
    }
    let ignore = std::fs::read_to_string(repo(".dockerignore")).unwrap();
    assert!(
        ignore.lines().any(|l| l == "/target"),
        "build outputs stay out of the context"
    );
}

#[test]
fn install_conf_installs_atomically_as_flannels_does() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("cni-conf.json");
    std::fs::write(&src, r#"{"name":"cbr0"}"#).unwrap();
    let net_d = dir.path().join("net.d");
    std::fs::create_dir(&net_d).unwrap();
    let dest = net_d.join("10-flannel.conflist");
    std::fs::write(&dest, "old").unwrap();
    let script = repo("deploy/install-conf");
    let out = Command::new(&script).arg(&src).arg(&dest).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(&dest).unwrap(),
        r#"{"name":"cbr0"}"#
    );
    let left: Vec<_> = std::fs::read_dir(&net_d).unwrap().collect();
    assert_eq!(left.len(), 1, "no temporary file left behind");

    let out = Command::new(&script).arg(&src).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage:"));
    let out = Command::new(&script)
        .arg(dir.path().join("missing.json"))
        .arg(&dest)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("error installing"));
    assert_eq!(
        std::fs::read_to_string(&dest).unwrap(),
        r#"{"name":"cbr0"}"#
    );
}
