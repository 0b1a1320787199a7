//! The container image and the Kubernetes manifests, checked where this
//! machine can check them (no Docker engine or cluster runs here): the
//! kustomize base and its example overlay are rendered with `kubectl
//! kustomize`, validated offline against the Kubernetes schemas
//! (`kubernetes-validate`, which bundles them), and every port, probe path,
//! environment variable and config file they use is checked against the
//! gateway itself: the rendered routes.toml is loaded and served, and the
//! probes are asked of its admin listener.
//!
//! The ConfigMap hot reload itself (a `..data` symlink swap) is exercised
//! end to end by `reload::configmap_data_symlink_swap_is_followed`; this
//! file makes sure the Deployment mounts the ConfigMap so that the swap
//! reaches the pod at all.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use gateway_tests::running::RunningGateway;
use gateway_tests::{http_client, repo_root, temp_dir, toml_path};
use serde_json::Value;

/// The Kubernetes version the manifests are validated against: the oldest
/// release still supported upstream when they were written.
const KUBERNETES_VERSION: &str = "1.30.0";

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `kubectl kustomize <dir>`: the objects as YAML text.
fn render(dir: &str) -> String {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(repo_root().join(dir))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "kubectl is missing ({e}): apt-get install kubernetes-client (.ci/run installs it)"
            )
        });
    assert!(
        out.status.success(),
        "kubectl kustomize {dir} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 manifests")
}

/// YAML documents to JSON values, by PyYAML (which kubernetes-validate
/// depends on): the test crate needs no YAML parser of its own.
fn parse(yaml: &str) -> Vec<Value> {
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "PyYAML could not read the manifests (python3 -m pip install kubernetes-validate pulls it in):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// `kubernetes-validate --strict` of the rendered objects: unknown fields,
/// wrong types and missing required fields fail.
fn validate(name: &str, yaml: &str) {
    let dir = temp_dir("k8s");
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet", "-k", KUBERNETES_VERSION])
        .arg(&file)
        .output()
        .unwrap_or_else(|e| {
            panic!("kubernetes-validate is missing ({e}): python3 -m pip install kubernetes-validate (.ci/run installs it)")
        });
    assert!(
        out.status.success(),
        "{name} does not validate against Kubernetes {KUBERNETES_VERSION}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The rendered objects of one kustomization.
struct Rendered {
    objects: Vec<Value>,
}

impl Rendered {
    fn of(dir: &str) -> Rendered {
        let yaml = render(dir);
        validate(&dir.replace('/', "-"), &yaml);
        Rendered {
            objects: parse(&yaml),
        }
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name} in the rendered manifests"))
    }

    fn kinds(&self) -> BTreeSet<String> {
        self.objects
            .iter()
            .map(|o| o["kind"].as_str().unwrap_or("").to_owned())
            .collect()
    }

    fn deployment(&self) -> &Value {
        self.get("Deployment", "gateway")
    }

    fn container(&self) -> &Value {
        &self.deployment()["spec"]["template"]["spec"]["containers"][0]
    }

    /// Container port numbers by name.
    fn ports(&self) -> BTreeMap<String, u64> {
        self.container()["ports"]
            .as_array()
            .expect("container ports")
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().expect("named port").to_owned(),
                    p["containerPort"].as_u64().expect("port number"),
                )
            })
            .collect()
    }

    /// `(mountPath, volume)` of each volume mount; panics on a `subPath`.
    fn mounts(&self) -> Vec<(String, Value)> {
        let volumes = self.deployment()["spec"]["template"]["spec"]["volumes"]
            .as_array()
            .expect("volumes");
        self.container()["volumeMounts"]
            .as_array()
            .expect("volume mounts")
            .iter()
            .map(|m| {
                let path = m["mountPath"].as_str().unwrap().to_owned();
                assert!(
                    m.get("subPath").is_none(),
                    "{path} is mounted with subPath: Kubernetes never updates such a mount"
                );
                let volume = volumes
                    .iter()
                    .find(|v| v["name"] == m["name"])
                    .unwrap_or_else(|| panic!("no volume {} for {path}", m["name"]))
                    .clone();
                (path, volume)
            })
            .collect()
    }

    /// The ConfigMap mounted at `path`'s folder, and the file's key in it.
    fn config_file(&self, path: &str) -> String {
        let path = Path::new(path);
        let folder = path.parent().unwrap().to_str().unwrap();
        let key = path.file_name().unwrap().to_str().unwrap();
        let (_, volume) = self
            .mounts()
            .into_iter()
            .find(|(p, _)| p == folder)
            .unwrap_or_else(|| {
                panic!("{} is not directly inside a mounted folder", path.display())
            });
        let name = volume["configMap"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{folder} is not a ConfigMap volume"));
        self.get("ConfigMap", name)["data"][key]
            .as_str()
            .unwrap_or_else(|| panic!("ConfigMap {name} has no key {key}"))
            .to_owned()
    }

    /// The files of the ConfigMap `name` (`data` and base64 `binaryData`)
    /// written into `folder`, one per key; panics when the manifests do
    /// not render that ConfigMap (`kubectl apply` would leave the pod
    /// waiting for its volume).
    fn write_config_map(&self, name: &str, folder: &Path) {
        use base64::Engine as _;
        let map = self.get("ConfigMap", name);
        std::fs::create_dir_all(folder).unwrap();
        let mut files = 0;
        if let Some(data) = map["data"].as_object() {
            for (key, text) in data {
                std::fs::write(folder.join(key), text.as_str().unwrap()).unwrap();
                files += 1;
            }
        }
        if let Some(data) = map["binaryData"].as_object() {
            for (key, b64) in data {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64.as_str().unwrap())
                    .unwrap_or_else(|e| panic!("ConfigMap {name} binaryData.{key}: {e}"));
                std::fs::write(folder.join(key), bytes).unwrap();
                files += 1;
            }
        }
        assert!(files > 0, "ConfigMap {name} is empty");
    }

    /// The file behind `--config`.
    fn routes_toml(&self) -> (String, String) {
        let args: Vec<&str> = self.container()["args"]
            .as_array()
            .expect("args")
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let at = args
            .iter()
            .position(|a| *a == "--config")
            .expect("the container's --config argument");
        let path = args[at + 1].to_owned();
        (self.config_file(&path), path)
    }
}

fn port_of(listen: &str) -> u64 {
    listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {listen:?}"))
}

fn seconds(text: &str) -> u64 {
    let n: u64 = text
        .trim_end_matches(|c: char| c.is_alphabetic())
        .parse()
        .unwrap();
    match text.trim_start_matches(|c: char| c.is_ascii_digit()) {
        "s" => n,
        "m" => n * 60,
        other => panic!("unexpected duration unit {other:?} in {text}"),
    }
}

/// Every check of one rendered kustomization against the gateway.
async fn check_against_the_gateway(dir: &str) -> Rendered {
    let r = Rendered::of(dir);
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
    ] {
        assert!(r.kinds().contains(kind), "{dir} renders no {kind}");
    }
    let ports = r.ports();
    let (routes, routes_path) = r.routes_toml();
    let config: toml::Table = toml::from_str(&routes).expect("the ConfigMap's routes.toml");
    let server = config["server"].as_table().expect("[server]");

    // Listeners: what routes.toml binds is what the pod declares.
    let listen = server["listen"].as_str().unwrap();
    assert!(
        listen.starts_with("0.0.0.0:"),
        "{routes_path}: server.listen {listen} is unreachable from outside the pod"
    );
    let rest_port = port_of(listen);
    let tls = server.get("tls").and_then(|t| t.as_table());
    let rest_name = if tls.is_some() { "https" } else { "http" };
    assert_eq!(
        ports.get(rest_name),
        Some(&rest_port),
        "{dir}: container port {rest_name} is not server.listen's {rest_port}"
    );
    if let Some(redirect) = tls.and_then(|t| t.get("redirect_http")) {
        assert_eq!(
            ports.get("http"),
            Some(&port_of(redirect.as_str().unwrap())),
            "{dir}: container port http is not server.tls.redirect_http's"
        );
    }
    let admin = config["admin"]["listen"].as_str().expect("[admin] listen");
    assert!(
        admin.starts_with("0.0.0.0:"),
        "{routes_path}: admin.listen {admin} is unreachable by the kubelet"
    );
    assert_eq!(
        ports.get("admin"),
        Some(&port_of(admin)),
        "{dir}: container port admin"
    );
    let annotations = &r.deployment()["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        annotations["prometheus.io/port"]
            .as_str()
            .map(|p| p.parse::<u64>().unwrap()),
        Some(port_of(admin)),
        "{dir}: Prometheus would scrape another port than the admin listener's"
    );

    // Services and NetworkPolicies name ports the container has.
    let service = r.get("Service", "gateway");
    for p in service["spec"]["ports"].as_array().unwrap() {
        let target = p["targetPort"].as_str().expect("named targetPort");
        assert!(
            ports.contains_key(target),
            "{dir}: Service targets unknown port {target}"
        );
    }
    let policy = r.get("NetworkPolicy", "gateway");
    let mut opened = BTreeSet::new();
    for rule in policy["spec"]["ingress"].as_array().unwrap() {
        for p in rule["ports"].as_array().unwrap() {
            let name = p["port"].as_str().expect("named port");
            assert!(
                ports.contains_key(name),
                "{dir}: NetworkPolicy opens unknown port {name}"
            );
            if name == "admin" {
                assert!(
                    rule.get("from").is_some(),
                    "{dir}: the admin port is open to everyone"
                );
            }
            opened.insert(name.to_owned());
        }
    }
    assert!(
        opened.contains(rest_name),
        "{dir}: the NetworkPolicy keeps clients out"
    );

    // Restricted pod security.
    let pod = &r.deployment()["spec"]["template"]["spec"];
    let sc = &r.container()["securityContext"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    let uid = pod["securityContext"]["runAsUser"]
        .as_u64()
        .expect("runAsUser");
    let dockerfile = read("Dockerfile");
    assert!(
        dockerfile.contains(&format!("\nUSER {uid}:")),
        "the image's USER is not the pod's runAsUser {uid}"
    );
    // The kernel pages out only a file the process owns (the code paged
    // out after each load), and the read-only root filesystem above keeps
    // the owner from changing it.
    assert!(
        dockerfile.lines().any(|l| l.starts_with("COPY ")
            && l.contains(&format!("--chown={uid}:"))
            && l.contains("--chmod=0555")
            && l.ends_with("/usr/local/bin/gateway")),
        "the image's binary does not belong, read-only, to the pod's runAsUser {uid}"
    );

    // Shutdown: the grace period covers the gateway's own delay and drain.
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace period");
    let delay = seconds(
        server["shutdown_delay"]
            .as_str()
            .expect("server.shutdown_delay"),
    );
    let drain = seconds(
        server["drain_timeout"]
            .as_str()
            .expect("server.drain_timeout"),
    );
    assert!(
        grace > delay + drain,
        "{dir}: terminationGracePeriodSeconds {grace} does not cover shutdown_delay {delay}s + drain_timeout {drain}s"
    );

    // Environment: every variable is one the gateway (or routes.toml) reads.
    let sources = gateway_sources();
    let env = r.container()["env"].as_array().expect("env");
    let values: Vec<&str> = env.iter().filter_map(|e| e["value"].as_str()).collect();
    for e in env {
        let name = e["name"].as_str().unwrap();
        let used = sources.contains(&format!("\"{name}\""))
            || routes.contains(&format!("\"{name}\""))
            || values.iter().any(|v| v.contains(&format!("$({name})")));
        assert!(
            used,
            "{dir}: env {name} is read by neither the gateway nor routes.toml"
        );
    }

    // The config loads and serves, with the pod's paths mapped to files
    // here; the probes answer 200 on the admin listener.
    let tmp = temp_dir("k8s-config");
    let mut local = routes.clone();
    let routes_folder = Path::new(&routes_path).parent().unwrap().to_owned();
    for (mount, volume) in r.mounts() {
        if let Some(name) = volume["configMap"]["name"].as_str() {
            if Path::new(&mount) == routes_folder {
                continue;
            }
            // Another ConfigMap (the descriptors): its files as the kubelet
            // would write them, so the gateway serves what the manifests
            // ship and a ConfigMap they mount but do not render fails here.
            let folder = tmp.join(name);
            r.write_config_map(name, &folder);
            let to = format!("\"{}", toml_path(&folder));
            local = local
                .replace(&format!("\"{mount}\""), &format!("{to}\""))
                .replace(&format!("\"{mount}/"), &format!("{to}/"));
        } else if let Some(secret) = volume["secret"]["secretName"].as_str() {
            // A kubernetes.io/tls Secret: tls.crt and tls.key.
            let cert = rcgen::generate_simple_self_signed(vec!["gateway.example.com".to_owned()])
                .expect("certificate");
            let folder = tmp.join(secret);
            std::fs::create_dir_all(&folder).unwrap();
            std::fs::write(folder.join("tls.crt"), cert.cert.pem()).unwrap();
            std::fs::write(folder.join("tls.key"), cert.signing_key.serialize_pem()).unwrap();
            local = local.replace(&format!("\"{mount}/"), &format!("\"{}/", folder.display()));
        }
    }
    // The Redis of shared rate limits comes from a Secret: here, a port
    // nobody listens on (the gateway starts and falls back to local limits).
    let local = local.replace("url_env = \"REDIS_URL\"", "url = \"redis://127.0.0.1:1/0\"");
    assert!(
        !local.contains("\"/etc/gateway/"),
        "{dir}: routes.toml names a file under /etc/gateway that no volume provides:\n{local}"
    );
    let file = tmp.join("routes.toml");
    std::fs::write(&file, local).unwrap();
    // Consul is not running here: discovery fails, which keeps nothing
    // from answering the probes (a registry outage must not fail them).
    let gw = RunningGateway::start(&file).await;
    let client = http_client();
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &r.container()[probe]["httpGet"];
        assert_eq!(
            get["port"], "admin",
            "{dir}: the {probe} is not on the admin port"
        );
        let path = get["path"].as_str().expect("probe path");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let status = client
                .get(gw.admin_url(path))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0);
            if status == 200 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{dir}: the {probe} {path} answers {status}, not 200"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    r
}

/// Every Rust source of the gateway, concatenated: where environment
/// variable names are looked up.
fn gateway_sources() -> String {
    fn walk(dir: &Path, out: &mut String) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push_str(&std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    let mut out = String::new();
    walk(&repo_root().join("gateway/src"), &mut out);
    out
}

#[tokio::test]
async fn the_kubernetes_base_validates_and_matches_the_gateway() {
    let r = check_against_the_gateway("k8s/base").await;
    let hpa = r.get("HorizontalPodAutoscaler", "gateway");
    assert!(
        r.deployment()["spec"].get("replicas").is_none(),
        "the Deployment sets replicas, which every apply would reset under the HPA"
    );
    assert!(
        hpa["spec"]["minReplicas"].as_u64().unwrap() >= 2,
        "one replica is no replica set"
    );
}

#[tokio::test]
async fn the_example_overlay_validates_and_serves_tls_from_a_secret() {
    let r = check_against_the_gateway("k8s/overlays/example").await;
    let secret_mounts: Vec<String> = r
        .mounts()
        .into_iter()
        .filter(|(_, v)| v["secret"]["secretName"] == "gateway-tls")
        .map(|(p, _)| p)
        .collect();
    assert_eq!(
        secret_mounts,
        ["/etc/gateway/tls"],
        "the certificate Secret is mounted once, as a folder"
    );
    let image = r.container()["image"].as_str().unwrap();
    assert!(
        image.starts_with("registry.example.com/gateway:"),
        "{image}"
    );
}

/// kustomize reads only files under the kustomization, so the base keeps
/// a copy of the demo's descriptor; it must not drift from the routes the
/// base's routes.toml binds, which are the demo's.
#[test]
fn the_base_carries_the_demo_descriptor_unchanged() {
    assert_eq!(
        read("k8s/base/descriptors/bookstore.proto"),
        read("descriptors/bookstore.proto"),
        "k8s/base/descriptors/bookstore.proto differs from descriptors/bookstore.proto: copy the demo's file over it"
    );
}

#[test]
fn a_probe_on_a_path_the_gateway_does_not_serve_would_fail() {
    // The check above asks the gateway; make sure it is not answering
    // every path with 200.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let tmp = temp_dir("k8s-probe");
        let file = tmp.join("routes.toml");
        std::fs::write(
            &file,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\ndescriptors = \"{}\"\nroutes_from_annotations = true\n\n[backends.bookstore]\nservices = [\"example.bookstore.v1.Bookstore\"]\nendpoints = [\"127.0.0.1:1\"]\n",
                toml_path(&repo_root().join("descriptors"))
            ),
        )
        .unwrap();
        let gw = RunningGateway::start(&file).await;
        let status = http_client()
            .get(gw.admin_url("/health"))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 404);
    });
}

#[test]
fn the_image_build_context_leaves_out_build_output_and_history() {
    let ignore = read(".dockerignore");
    let lines: Vec<&str> = ignore.lines().map(str::trim).collect();
    for needed in ["target/", ".git/"] {
        assert!(lines.contains(&needed), ".dockerignore lacks {needed}");
    }
    // What tools generate in the tree: installed JavaScript packages,
    // fuzzing output, the bench's results.
    for generated in [
        "tests/js/node_modules/",
        "fuzz/target/",
        "fuzz/corpus/",
        "fuzz/artifacts/",
        "bench-results.json",
    ] {
        assert!(
            lines.contains(&generated),
            ".dockerignore lacks {generated}, which is generated"
        );
    }
    // Beside every package.json, npm installs a node_modules folder.
    for package in files_named(&repo_root(), "package.json") {
        let folder = package.parent().unwrap().strip_prefix(repo_root()).unwrap();
        let pattern = format!("{}/node_modules/", folder.display());
        assert!(
            lines.contains(&pattern.trim_start_matches('/')),
            ".dockerignore lacks {pattern} (npm installs there for {})",
            package.display()
        );
    }
}

/// The files called `name` under `root`, outside `target/`, `.git/` and
/// `node_modules/`.
fn files_named(root: &Path, name: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let file = e.file_name();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                if file != "target" && file != ".git" && file != "node_modules" {
                    todo.push(p);
                }
            } else if file == name {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn the_image_is_stripped_and_trusts_the_system_certificate_roots() {
    let dockerfile = read("Dockerfile");
    let runtime = dockerfile
        .rsplit("\nFROM ")
        .next()
        .expect("a runtime stage");
    // https JWKS, Consul and OTLP endpoints are verified against the
    // system roots (reqwest with rustls' platform verifier).
    assert!(
        runtime.contains("ca-certificates"),
        "the runtime stage installs no CA certificates:\n{runtime}"
    );
    assert!(
        dockerfile.contains("CARGO_PROFILE_RELEASE_STRIP=symbols")
            && dockerfile.contains("CARGO_PROFILE_RELEASE_DEBUG=0"),
        "the image's binary keeps debug info or symbols"
    );
    // The build stage's toolchain must build the workspace.
    let msrv = read("Cargo.toml")
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .map(|v| v.trim_end_matches('"').to_owned())
        .expect("workspace rust-version");
    assert!(
        dockerfile.contains(&format!("FROM rust:{msrv}")),
        "the build stage's Rust is not the workspace's rust-version {msrv}"
    );
}
