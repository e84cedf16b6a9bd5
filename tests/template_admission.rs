//! What the API server enforces on `spec.template`, with no operator running: a template
//! that could never become a pod is refused when the ResilientService is created, with a
//! message naming the field; each such template's pod, built as the operator builds it, is
//! refused by the API server's own pod validation too (a dry run), so that the rules refuse
//! nothing a pod may be; and unusual templates that are valid pods are accepted.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use perennial::api::ResilientService;
use serde_json::{json, Value};
use support::admission::*;
use support::*;

/// A container named `name`.
fn container(name: &str) -> Value {
    json!({"name": name, "image": "registry.example/app:1"})
}

/// The template's first container with `fields` merged in.
fn app(fields: Value) -> Value {
    json!({"template": {"spec": {"containers": [merged(&container("app"), &fields)]}}})
}

/// The template's pod spec with `fields` merged in.
fn pod_spec(fields: Value) -> Value {
    json!({"template": {"spec": fields}})
}

/// `n` containers `c0`, `c1`, ...
fn containers(n: usize) -> Value {
    Value::Array((0..n).map(|i| container(&format!("c{i}"))).collect())
}

/// Templates that could never become a pod: the ResilientService and the pod are refused.
fn refused_as_pods() -> Vec<Case> {
    let http = |port: Value| json!({"httpGet": {"port": port}});
    vec![
        case("template without a pod spec", json!({"template": {"spec": null}}),
            "spec.template.spec: Required value"),
        case("empty containers list", pod_spec(json!({"containers": []})),
            "spec.template.spec.containers in body should have at least 1 items"),
        case("container name with capitals", app(json!({"name": "App"})),
            "spec.template.spec.containers[0].name in body should match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'"),
        case("container name of 64 characters", app(json!({"name": "c".repeat(64)})),
            "spec.template.spec.containers[0].name: Too long: may not be more than 63 bytes"),
        case("two containers of one name",
            pod_spec(json!({"containers": [container("app"), container("app")]})),
            "spec.template.spec.containers[1]: Duplicate value"),
        case("an init container named like a container",
            pod_spec(json!({"containers": [container("app")], "initContainers": [container("app")]})),
            "spec.template.spec.initContainers: Invalid value: the name app is taken by a container"),
        case("container without an image", app(json!({"image": null})),
            "spec.template.spec.containers[0].image: Required value"),
        case("image with a trailing space", app(json!({"image": "registry.example/app:1 "})),
            "spec.template.spec.containers[0].image in body should match"),
        case("ephemeral containers", pod_spec(json!({"containers": [container("app")],
            "ephemeralContainers": [{"name": "debug", "image": "busybox"}]})),
            "spec.template.spec.ephemeralContainers: Forbidden: cannot be set on create"),
        case("imagePullPolicy Sometimes", app(json!({"imagePullPolicy": "Sometimes"})),
            "spec.template.spec.containers[0].imagePullPolicy: Unsupported value: \"Sometimes\""),
        case("containerPort 0", app(json!({"ports": [{"containerPort": 0}]})),
            "spec.template.spec.containers[0].ports[0].containerPort in body should be greater than or equal to 1"),
        case("containerPort 70000", app(json!({"ports": [{"containerPort": 70000}]})),
            "spec.template.spec.containers[0].ports[0].containerPort in body should be less than or equal to 65535"),
        case("hostPort -1", app(json!({"ports": [{"containerPort": 80, "hostPort": -1}]})),
            "spec.template.spec.containers[0].ports[0].hostPort in body should be greater than or equal to 0"),
        case("protocol HTTP", app(json!({"ports": [{"containerPort": 80, "protocol": "HTTP"}]})),
            "spec.template.spec.containers[0].ports[0].protocol: Unsupported value: \"HTTP\""),
        case("port name with an underscore", app(json!({"ports": [{"containerPort": 80, "name": "web_ui"}]})),
            "spec.template.spec.containers[0].ports[0].name in body should match"),
        case("port name of digits only", app(json!({"ports": [{"containerPort": 80, "name": "8080"}]})),
            "spec.template.spec.containers[0].ports[0].name in body should match"),
        case("port name of 16 characters", app(json!({"ports": [{"containerPort": 80, "name": "a".repeat(16)}]})),
            "spec.template.spec.containers[0].ports[0].name: Too long: may not be more than 15 bytes"),
        case("two ports of one name", app(json!({"ports": [{"containerPort": 80, "name": "http"}, {"containerPort": 81, "name": "http"}]})),
            "spec.template.spec.containers[0].ports: Invalid value: the port name http is used by more than one port"),
        case("probe without a handler", app(json!({"livenessProbe": {"periodSeconds": 5}})),
            "spec.template.spec.containers[0].livenessProbe: Required value: must specify a handler type"),
        case("probe with two handlers", app(json!({"readinessProbe": {"exec": {"command": ["true"]}, "tcpSocket": {"port": 80}}})),
            "spec.template.spec.containers[0].readinessProbe: Forbidden: may not specify more than 1 handler type"),
        case("probe with a negative period", app(json!({"livenessProbe": merged(&http(json!(80)), &json!({"periodSeconds": -1}))})),
            "spec.template.spec.containers[0].livenessProbe.periodSeconds in body should be greater than or equal to 0"),
        case("liveness probe successThreshold 2", app(json!({"livenessProbe": merged(&http(json!(80)), &json!({"successThreshold": 2}))})),
            "spec.template.spec.containers[0].livenessProbe.successThreshold in body should be less than or equal to 1"),
        case("readiness probe with terminationGracePeriodSeconds",
            app(json!({"readinessProbe": merged(&http(json!(80)), &json!({"terminationGracePeriodSeconds": 5}))})),
            "spec.template.spec.containers[0].readinessProbe.terminationGracePeriodSeconds: Invalid value: must not be set for readinessProbes"),
        case("probe port 0", app(json!({"startupProbe": {"tcpSocket": {"port": 0}}})),
            "spec.template.spec.containers[0].startupProbe.tcpSocket.port in body should be greater than or equal to 1"),
        case("probe port named with capitals", app(json!({"livenessProbe": http(json!("Http"))})),
            "spec.template.spec.containers[0].livenessProbe.httpGet.port in body should match"),
        case("probe exec without a command", app(json!({"livenessProbe": {"exec": {}}})),
            "spec.template.spec.containers[0].livenessProbe.exec.command: Required value"),
        case("httpGet scheme FTP", app(json!({"livenessProbe": {"httpGet": {"port": 80, "scheme": "FTP"}}})),
            "spec.template.spec.containers[0].livenessProbe.httpGet.scheme: Unsupported value: \"FTP\""),
        case("preStop hook without a handler", app(json!({"lifecycle": {"preStop": {}}})),
            "spec.template.spec.containers[0].lifecycle.preStop: Required value: must specify a handler type"),
        case("probe on a plain init container",
            pod_spec(json!({"containers": [container("app")],
                "initContainers": [merged(&container("setup"), &json!({"readinessProbe": http(json!(80))}))]})),
            "spec.template.spec.initContainers[0]: Forbidden: livenessProbe, readinessProbe, startupProbe and lifecycle may be set only on init containers with restartPolicy: Always"),
        case("env name with =", app(json!({"env": [{"name": "A=B", "value": "x"}]})),
            "spec.template.spec.containers[0].env[0].name in body should match"),
        case("request above its limit",
            app(json!({"resources": {"requests": {"memory": "2Gi"}, "limits": {"memory": "1Gi"}}})),
            "spec.template.spec.containers[0].resources.requests: Invalid value: the request for memory must be less than or equal to its limit"),
        case("limit that is not a quantity", app(json!({"resources": {"limits": {"cpu": "two"}}})),
            "spec.template.spec.containers[0].resources.limits: Invalid value: the value of cpu is not a quantity"),
        case("negative request", app(json!({"resources": {"requests": {"cpu": "-1"}}})),
            "spec.template.spec.containers[0].resources.requests: Invalid value: the value of cpu must be greater than or equal to 0"),
        case("volume name with capitals",
            pod_spec(json!({"containers": [container("app")], "volumes": [{"name": "Data", "emptyDir": {}}]})),
            "spec.template.spec.volumes[0].name in body should match"),
        case("two volumes of one name",
            pod_spec(json!({"containers": [container("app")], "volumes": [{"name": "v", "emptyDir": {}}, {"name": "v", "emptyDir": {}}]})),
            "spec.template.spec.volumes[1]: Duplicate value"),
        case("volume with two sources",
            pod_spec(json!({"containers": [container("app")], "volumes": [{"name": "v", "emptyDir": {}, "configMap": {"name": "c"}}]})),
            "spec.template.spec.volumes[0]: Forbidden: may not specify more than 1 volume type"),
        case("mount of a volume that does not exist", app(json!({"volumeMounts": [{"name": "data", "mountPath": "/data"}]})),
            "spec.template.spec.containers: Invalid value: the volume mount data names no volume of spec.template.spec.volumes and no claim template of spec.volumeClaimTemplates"),
        case("init container mount of a volume that does not exist",
            pod_spec(json!({"containers": [container("app")],
                "initContainers": [merged(&container("setup"), &json!({"volumeMounts": [{"name": "seed", "mountPath": "/seed"}]}))]})),
            "spec.template.spec.initContainers: Invalid value: the volume mount seed names no volume"),
        case("two mounts at one path",
            json!({"volumeClaimTemplates": [claim("data"), claim("logs")], "template": {"spec": {"containers": [merged(&container("app"),
                &json!({"volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "logs", "mountPath": "/data"}]}))]}}}),
            "spec.template.spec.containers[0].volumeMounts[1]: Duplicate value"),
        case("mount with an empty path",
            json!({"volumeClaimTemplates": [claim("data")], "template": {"spec": {"containers": [merged(&container("app"),
                &json!({"volumeMounts": [{"name": "data", "mountPath": ""}]}))]}}}),
            "spec.template.spec.containers[0].volumeMounts[0].mountPath in body should be at least 1 chars long"),
        case("mount with subPath and subPathExpr",
            json!({"volumeClaimTemplates": [claim("data")], "template": {"spec": {"containers": [merged(&container("app"),
                &json!({"volumeMounts": [{"name": "data", "mountPath": "/d", "subPath": "a", "subPathExpr": "$(POD)"}]}))]}}}),
            "subPathExpr and subPath are mutually exclusive"),
        case("Bidirectional propagation in an unprivileged container",
            json!({"volumeClaimTemplates": [claim("data")], "template": {"spec": {"containers": [merged(&container("app"),
                &json!({"volumeMounts": [{"name": "data", "mountPath": "/d", "mountPropagation": "Bidirectional"}]}))]}}}),
            "Bidirectional mount propagation is available only to privileged containers"),
        case("dnsPolicy Cluster", pod_spec(json!({"containers": [container("app")], "dnsPolicy": "Cluster"})),
            "spec.template.spec.dnsPolicy: Unsupported value: \"Cluster\""),
        case("dnsPolicy None without nameservers", pod_spec(json!({"containers": [container("app")], "dnsPolicy": "None"})),
            "spec.template.spec.dnsConfig: Required value: must provide at least one nameserver"),
        case("four nameservers", pod_spec(json!({"containers": [container("app")],
            "dnsConfig": {"nameservers": ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]}})),
            "spec.template.spec.dnsConfig.nameservers: Too many: 4: must have at most 3 items"),
        case("serviceAccountName with capitals", pod_spec(json!({"containers": [container("app")], "serviceAccountName": "Web"})),
            "spec.template.spec.serviceAccountName in body should match"),
        case("os.name darwin", pod_spec(json!({"containers": [container("app")], "os": {"name": "darwin"}})),
            "spec.template.spec.os.name: Unsupported value: \"darwin\""),
        case("nodeSelector value with a space", pod_spec(json!({"containers": [container("app")], "nodeSelector": {"disk": "fast ssd"}})),
            "spec.template.spec.nodeSelector.disk in body should match"),
        case("template label value with a slash", json!({"template": {"metadata": {"labels": {"app.kubernetes.io/name": "probe", "tier": "a/b"}}}}),
            "spec.template.metadata.labels.tier in body should match"),
        case("toleration effect NoRun", pod_spec(json!({"containers": [container("app")], "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoRun"}]})),
            "spec.template.spec.tolerations[0].effect: Unsupported value: \"NoRun\""),
        case("topology spread maxSkew 0", pod_spec(json!({"containers": [container("app")],
            "topologySpreadConstraints": [{"maxSkew": 0, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule"}]})),
            "spec.template.spec.topologySpreadConstraints[0].maxSkew in body should be greater than or equal to 1"),
        case("runAsUser -1", app(json!({"securityContext": {"runAsUser": -1}})),
            "spec.template.spec.containers[0].securityContext.runAsUser in body should be greater than or equal to 0"),
        case("privileged without privilege escalation",
            app(json!({"securityContext": {"privileged": true, "allowPrivilegeEscalation": false}})),
            "cannot set allowPrivilegeEscalation to false and privileged to true"),
        case("seccomp Localhost without a profile",
            pod_spec(json!({"containers": [container("app")], "securityContext": {"seccompProfile": {"type": "Localhost"}}})),
            "spec.template.spec.securityContext.seccompProfile.localhostProfile: Required value: must be set when seccomp type is Localhost"),
        case("fsGroupChangePolicy Sometimes",
            pod_spec(json!({"containers": [container("app")], "securityContext": {"fsGroupChangePolicy": "Sometimes"}})),
            "spec.template.spec.securityContext.fsGroupChangePolicy: Unsupported value: \"Sometimes\""),
    ]
}

/// Templates whose pod the API server would accept, refused all the same: the rules of a
/// workload controller's template, and the bounds the CEL rules need (`template::bounds`).
fn refused_for_the_workload() -> Vec<Case> {
    let b = perennial::api::template::bounds();
    vec![
        case(
            "restartPolicy Never",
            pod_spec(json!({"containers": [container("app")], "restartPolicy": "Never"})),
            "spec.template.spec.restartPolicy: Invalid value: must be Always",
        ),
        case(
            "restartPolicy OnFailure",
            pod_spec(json!({"containers": [container("app")], "restartPolicy": "OnFailure"})),
            "spec.template.spec.restartPolicy: Invalid value: must be Always",
        ),
        case(
            "activeDeadlineSeconds",
            pod_spec(json!({"containers": [container("app")], "activeDeadlineSeconds": 3600})),
            "spec.template.spec.activeDeadlineSeconds: Forbidden: is not supported",
        ),
        case(
            "one container beyond the bound",
            pod_spec(json!({"containers": containers(b.containers as usize + 1)})),
            "spec.template.spec.containers: Too many",
        ),
        case(
            "a quantity longer than the bound",
            app(
                json!({"resources": {"requests": {"cpu": format!("{}m", "1".repeat(b.quantity_length as usize))}}}),
            ),
            "Too long",
        ),
    ]
}

/// Unusual templates that are valid pods: accepted as ResilientServices and as pods.
fn valid_templates() -> Vec<(&'static str, Value)> {
    let b = perennial::api::template::bounds();
    let sidecar = merged(
        &container("proxy"),
        &json!({
            "restartPolicy": "Always",
            "readinessProbe": {"tcpSocket": {"port": 15001}},
            "lifecycle": {"preStop": {"sleep": {"seconds": 5}}}
        }),
    );
    vec![
        (
            "named ports, probes by port name, one port twice by protocol",
            app(json!({
                "ports": [
                    {"name": "http", "containerPort": 8080},
                    {"name": "1metrics", "containerPort": 9090, "protocol": ""},
                    {"containerPort": 53, "protocol": "TCP"},
                    {"containerPort": 53, "protocol": "UDP"}
                ],
                "livenessProbe": {"httpGet": {"port": "http", "scheme": ""}, "successThreshold": 0},
                "readinessProbe": {"grpc": {"port": 9090}, "successThreshold": 3},
                "startupProbe": {"exec": {"command": ["true"]}, "successThreshold": 1}
            })),
        ),
        (
            "several containers, a plain init container and a sidecar",
            pod_spec(json!({
                "containers": [container("app"), container("worker")],
                "initContainers": [container("setup"), sidecar]
            })),
        ),
        (
            "claim template mounts beside a template volume",
            json!({
                "volumeClaimTemplates": [claim("data")],
                "template": {"spec": {
                    "volumes": [{"name": "config", "configMap": {"name": "app"}}, {"name": "scratch"}],
                    "containers": [merged(&container("app"), &json!({"volumeMounts": [
                        {"name": "data", "mountPath": "/data"},
                        {"name": "data", "mountPath": "/logs", "subPath": "logs"},
                        {"name": "config", "mountPath": "/etc/app", "readOnly": true},
                        {"name": "scratch", "mountPath": "/tmp"}
                    ]}))],
                    "initContainers": [merged(&container("seed"), &json!({"volumeMounts": [{"name": "data", "mountPath": "/data"}]}))]
                }}
            }),
        ),
        (
            "env names the relaxed rule allows, and values from fields",
            app(json!({"env": [
                {"name": "APP.MODE", "value": "x"}, {"name": "my-var", "value": "y"},
                {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
            ]})),
        ),
        (
            "resources as integers, equal requests and limits, a zero",
            app(json!({"resources": {
                "requests": {"cpu": 1, "memory": "512Mi", "ephemeral-storage": "0"},
                "limits": {"cpu": "1000m", "memory": "512Mi"}
            }})),
        ),
        (
            "defaults left empty, and a negative grace period (the server takes it as 1)",
            pod_spec(json!({
                "containers": [merged(&container("app"), &json!({"imagePullPolicy": "", "terminationMessagePolicy": ""}))],
                "restartPolicy": "", "dnsPolicy": "", "terminationGracePeriodSeconds": -1,
                "ephemeralContainers": []
            })),
        ),
        (
            "restartPolicy Always and DNS of its own",
            pod_spec(json!({
                "containers": [container("app")], "restartPolicy": "Always",
                "dnsPolicy": "None", "dnsConfig": {"nameservers": ["10.0.0.10"], "searches": ["svc.cluster.local"]}
            })),
        ),
        (
            "security contexts at their edges",
            pod_spec(json!({
                "containers": [merged(&container("app"), &json!({"securityContext": {
                    "privileged": true, "allowPrivilegeEscalation": true, "runAsUser": 0,
                    "seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/app.json"}
                }}))],
                "securityContext": {"runAsUser": 2147483647, "fsGroup": 0, "supplementalGroups": [0, 1000],
                    "seccompProfile": {"type": "RuntimeDefault"}}
            })),
        ),
        (
            "scheduling: a spread of its own, tolerations, selectors, empty label values",
            json!({"template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "probe", "track": "", "v": "1.2_3-beta"}},
                "spec": {
                    "containers": [container("app")],
                    "nodeSelector": {"kubernetes.io/os": "linux"},
                    "tolerations": [{"operator": "Exists"}, {"key": "k", "value": "v", "effect": ""}],
                    "topologySpreadConstraints": [{"maxSkew": 2, "topologyKey": "kubernetes.io/hostname",
                        "whenUnsatisfiable": "DoNotSchedule", "minDomains": 1, "nodeTaintsPolicy": "Honor"}]
                }
            }}),
        ),
        (
            "as many containers as the bound",
            pod_spec(json!({"containers": containers(b.containers as usize)})),
        ),
    ]
}

/// The pod the operator would make for slot 0 of a service `name` with `spec`.
fn pod_of(ns: &str, name: &str, spec: &Value) -> Pod {
    let svc: ResilientService = serde_json::from_value(json!({
        "apiVersion": "perennial.dev/v1alpha1",
        "kind": "ResilientService",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }))
    .unwrap_or_else(|e| panic!("{name}: the spec does not read as a ResilientService: {e}"));
    let revision = format!("{name}-0000000000");
    perennial::build::desired_pod(&svc, 0, &revision, &svc.spec.template)
}

/// Creates `pod` as a dry run; `Err` carries the server's message when it refuses it: as
/// invalid (422), as no pod at all (400, a value that does not decode, such as a
/// quantity), or in admission (403, a service account that cannot exist).
async fn dry_run(pods: &Api<Pod>, pod: &Pod) -> Result<(), String> {
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    match pods.create(&params, pod).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if [400, 403, 422].contains(&s.code) => Err(s.message),
        Err(other) => panic!("a dry run of a pod failed for another reason: {other}"),
    }
}

/// A namespace whose pods the API server admits: its default service account exists.
async fn namespace_for_pods(prefix: &str) -> (TestNamespace, Api<Pod>) {
    let ns = TestNamespace::new(prefix).await;
    let accounts: Api<ServiceAccount> = ns.api();
    wait_for(
        "the default service account",
        Duration::from_secs(30),
        || {
            let accounts = accounts.clone();
            async move {
                accounts
                    .get("default")
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        },
    )
    .await;
    let pods = ns.api();
    (ns, pods)
}

#[tokio::test]
async fn api_server_rejects_each_template_that_cannot_become_a_pod_with_a_message_naming_the_field()
{
    let ns = TestNamespace::new("adm-template").await;
    let api = ready(&ns).await;
    let base = minimal_spec();
    let mut cases = refused_as_pods();
    cases.extend(refused_for_the_workload());
    assert!(cases.len() >= 50, "only {} cases", cases.len());
    assert_rejections(&api, "template", &base, &cases).await;
}

#[tokio::test]
async fn every_template_refused_at_admission_is_refused_as_a_pod_too_but_the_workload_rules() {
    let (ns, pods) = namespace_for_pods("adm-pods").await;
    let base = minimal_spec();
    let mut failures = Vec::new();
    for (i, c) in refused_as_pods().iter().enumerate() {
        let pod = pod_of(&ns.name, &format!("refused-{i}"), &merged(&base, &c.patch));
        match dry_run(&pods, &pod).await {
            Ok(()) => failures.push(format!("{}: the pod is accepted", c.name)),
            Err(message) => println!("{:52}  {}", c.name, reason(&message)),
        }
    }
    for (i, c) in refused_for_the_workload().iter().enumerate() {
        let pod = pod_of(&ns.name, &format!("workload-{i}"), &merged(&base, &c.patch));
        if let Err(message) = dry_run(&pods, &pod).await {
            failures.push(format!(
                "{}: listed as a valid pod, but the pod is refused: {message}",
                c.name
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn unusual_templates_that_are_valid_pods_are_accepted_as_services_and_as_pods() {
    let (ns, pods) = namespace_for_pods("adm-valid").await;
    let api = ready(&ns).await;
    let base = minimal_spec();
    let mut failures = Vec::new();
    for (i, (what, patch)) in valid_templates().into_iter().enumerate() {
        let spec = merged(&base, &patch);
        let name = format!("valid-{i}");
        if let Err(message) = create(&api, &name, spec.clone()).await {
            failures.push(format!("{what}: refused: {}", reason(&message)));
        }
        if let Err(message) = dry_run(&pods, &pod_of(&ns.name, &name, &spec)).await {
            failures.push(format!("{what}: the pod itself is refused: {message}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
