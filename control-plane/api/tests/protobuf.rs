//! Kubernetes protobuf bodies → JSON: real kubectl 1.32 bodies (tests/fixtures/protobuf,
//! captured from `kubectl create …` / `auth can-i` / `auth whoami` against a logging
//! server), and messages built with k8s-pb's prost types.

use k8s_pb::api::apps::v1 as apps;
use k8s_pb::api::core::v1 as core;
use k8s_pb::apimachinery::pkg::api::resource::Quantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1 as meta;
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use kelp_api::protobuf::{decode_object, decode_to_json, message_for, ProtobufError, MAGIC};
use prost::Message;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
    let unknown = k8s_pb::apimachinery::pkg::runtime::Unknown {
        type_meta: Some(k8s_pb::apimachinery::pkg::runtime::TypeMeta {
            api_version: Some(api_version.into()),
            kind: Some(kind.into()),
        }),
        raw: Some(raw),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut out = MAGIC.to_vec();
    out.extend(unknown.encode_to_vec());
    out
}

fn decode<M: Message>(api_version: &str, kind: &str, m: &M) -> Value {
    decode_to_json(&envelope(api_version, kind, m.encode_to_vec())).expect("decodes")
}

/// The JSON deserializes into the k8s-openapi type and serializes back to the same JSON.
fn round_trips<T: DeserializeOwned + Serialize>(v: &Value) {
    let typed: T = serde_json::from_value(v.clone()).expect("k8s-openapi accepts the JSON");
    let mut want = v.clone();
    // k8s-openapi always writes the (required) metadata of a resource.
    if let Some(m) = want.as_object_mut() {
        m.entry("metadata").or_insert_with(|| json!({}));
    }
    assert_eq!(serde_json::to_value(&typed).expect("serializes"), want);
}

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/protobuf/kubectl-1.32-{name}.pb",
        env!("CARGO_MANIFEST_DIR")
    );
    let body = std::fs::read(&path).expect("fixture");
    decode_to_json(&body).expect("fixture decodes")
}

fn object_meta(name: &str) -> Option<meta::ObjectMeta> {
    Some(meta::ObjectMeta {
        name: Some(name.into()),
        namespace: Some("default".into()),
        labels: [("app".to_string(), "web".to_string())].into(),
        creation_timestamp: Some(meta::Time {
            seconds: Some(1_704_164_705),
            nanos: Some(0),
        }),
        ..Default::default()
    })
}

// ---------------------------------------------------------------------------------------
// Real kubectl 1.32 bodies: the JSON is what `kubectl create … --dry-run=client -o json`
// prints for the same command (Go writes every non-pointer field; omitempty drops them).
// ---------------------------------------------------------------------------------------

#[test]
fn kubectl_create_configmap() {
    let v = fixture("configmap");
    assert_eq!(
        v,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "cm1", "creationTimestamp": null},
               "data": {"a": "b", "c": "d"}})
    );
    let _: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(v).unwrap();
}

#[test]
fn kubectl_create_secret_generic() {
    let v = fixture("secret");
    assert_eq!(
        v,
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "s1", "creationTimestamp": null},
               "data": {"pw": "czNjcjN0"}})
    );
    let s: k8s_openapi::api::core::v1::Secret = serde_json::from_value(v).unwrap();
    assert_eq!(s.data.unwrap()["pw"].0, b"s3cr3t");
}

#[test]
fn kubectl_create_namespace() {
    assert_eq!(
        fixture("namespace"),
        json!({"apiVersion": "v1", "kind": "Namespace",
               "metadata": {"name": "ns1", "creationTimestamp": null},
               "spec": {}, "status": {}})
    );
}

#[test]
fn kubectl_create_deployment() {
    let v = fixture("deployment");
    assert_eq!(
        v,
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "creationTimestamp": null, "labels": {"app": "web"}},
               "spec": {"replicas": 2,
                        "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"creationTimestamp": null, "labels": {"app": "web"}},
                                     "spec": {"containers": [{"name": "nginx", "image": "nginx:1.25",
                                                              "ports": [{"containerPort": 80}],
                                                              "resources": {}}]}},
                        "strategy": {}},
               "status": {}})
    );
    let d: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(v).unwrap();
    assert_eq!(d.spec.unwrap().replicas, Some(2));
}

#[test]
fn kubectl_create_service_clusterip() {
    let v = fixture("service");
    assert_eq!(
        v,
        json!({"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": "svc1", "creationTimestamp": null, "labels": {"app": "svc1"}},
               "spec": {"ports": [{"name": "80-8080", "protocol": "TCP", "port": 80, "targetPort": 8080}],
                        "selector": {"app": "svc1"}, "type": "ClusterIP"},
               "status": {"loadBalancer": {}}})
    );
    let _: k8s_openapi::api::core::v1::Service = serde_json::from_value(v).unwrap();
}

#[test]
fn kubectl_create_job() {
    let v = fixture("job");
    assert_eq!(
        v,
        json!({"apiVersion": "batch/v1", "kind": "Job",
               "metadata": {"name": "j1", "creationTimestamp": null},
               "spec": {"template": {"metadata": {"creationTimestamp": null},
                                     "spec": {"containers": [{"name": "j1", "image": "busybox",
                                                              "command": ["echo", "hi"], "resources": {}}],
                                              "restartPolicy": "Never"}}},
               "status": {}})
    );
    let _: k8s_openapi::api::batch::v1::Job = serde_json::from_value(v).unwrap();
}

#[test]
fn kubectl_auth_can_i() {
    let v = fixture("selfsubjectaccessreview");
    assert_eq!(
        v,
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
               "metadata": {"creationTimestamp": null},
               "spec": {"resourceAttributes": {"namespace": "default", "verb": "create",
                                               "group": "apps", "resource": "deployments"}},
               "status": {"allowed": false}})
    );
    let _: k8s_openapi::api::authorization::v1::SelfSubjectAccessReview =
        serde_json::from_value(v).unwrap();
}

#[test]
fn kubectl_auth_whoami() {
    let v = fixture("selfsubjectreview");
    assert_eq!(
        v,
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview",
               "metadata": {"creationTimestamp": null}, "status": {"userInfo": {}}})
    );
    let _: k8s_openapi::api::authentication::v1::SelfSubjectReview =
        serde_json::from_value(v).unwrap();
}

// ---------------------------------------------------------------------------------------
// Messages built with prost.
// ---------------------------------------------------------------------------------------

#[test]
fn deployment_with_selector_template_ports_resources_env() {
    let d = apps::Deployment {
        metadata: object_meta("web"),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(3),
            selector: Some(meta::LabelSelector {
                match_labels: [("app".to_string(), "web".to_string())].into(),
                match_expressions: vec![meta::LabelSelectorRequirement {
                    key: Some("tier".into()),
                    operator: Some("In".into()),
                    values: vec!["a".into(), "b".into()],
                }],
            }),
            template: Some(core::PodTemplateSpec {
                metadata: Some(meta::ObjectMeta {
                    labels: [("app".to_string(), "web".to_string())].into(),
                    ..Default::default()
                }),
                spec: Some(core::PodSpec {
                    containers: vec![core::Container {
                        name: Some("web".into()),
                        image: Some("nginx:1.25".into()),
                        ports: vec![core::ContainerPort {
                            name: Some("http".into()),
                            container_port: Some(80),
                            protocol: Some("TCP".into()),
                            ..Default::default()
                        }],
                        env: vec![
                            core::EnvVar {
                                name: Some("MODE".into()),
                                value: Some("prod".into()),
                                value_from: None,
                            },
                            core::EnvVar {
                                name: Some("POD_IP".into()),
                                value: None,
                                value_from: Some(core::EnvVarSource {
                                    field_ref: Some(core::ObjectFieldSelector {
                                        api_version: Some("v1".into()),
                                        field_path: Some("status.podIP".into()),
                                    }),
                                    ..Default::default()
                                }),
                            },
                        ],
                        resources: Some(core::ResourceRequirements {
                            limits: [(
                                "memory".to_string(),
                                Quantity {
                                    string: Some("64Mi".into()),
                                },
                            )]
                            .into(),
                            requests: [(
                                "cpu".to_string(),
                                Quantity {
                                    string: Some("250m".into()),
                                },
                            )]
                            .into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }],
                    termination_grace_period_seconds: Some(30),
                    ..Default::default()
                }),
            }),
            strategy: Some(apps::DeploymentStrategy {
                r#type: Some("RollingUpdate".into()),
                rolling_update: Some(apps::RollingUpdateDeployment {
                    max_surge: Some(IntOrString {
                        r#type: Some(1),
                        int_val: None,
                        str_val: Some("25%".into()),
                    }),
                    max_unavailable: Some(IntOrString {
                        r#type: Some(0),
                        int_val: Some(1),
                        str_val: None,
                    }),
                }),
            }),
            ..Default::default()
        }),
        status: None,
    };
    let v = decode("apps/v1", "Deployment", &d);
    assert_eq!(
        v,
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web"},
                            "creationTimestamp": "2024-01-02T03:05:05Z"},
               "spec": {"replicas": 3,
                        "selector": {"matchLabels": {"app": "web"},
                                     "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]}]},
                        "template": {"metadata": {"labels": {"app": "web"}},
                                     "spec": {"containers": [{
                                         "name": "web", "image": "nginx:1.25",
                                         "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}],
                                         "env": [{"name": "MODE", "value": "prod"},
                                                 {"name": "POD_IP", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}}],
                                         "resources": {"limits": {"memory": "64Mi"}, "requests": {"cpu": "250m"}}}],
                                              "terminationGracePeriodSeconds": 30}},
                        "strategy": {"type": "RollingUpdate",
                                     "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 1}}}})
    );
    round_trips::<k8s_openapi::api::apps::v1::Deployment>(&v);
}

#[test]
fn go_omitempty_and_pointer_semantics() {
    // Zero values on the wire, as Go writes them: plain omitempty fields vanish, pointer
    // fields (replicas, paused is plain) and non-omitempty fields stay.
    let d = apps::Deployment {
        metadata: Some(meta::ObjectMeta {
            name: Some("z".into()),
            generate_name: Some(String::new()),
            generation: Some(0),
            ..Default::default()
        }),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(0),
            min_ready_seconds: Some(0),
            paused: Some(false),
            revision_history_limit: Some(0),
            ..Default::default()
        }),
        status: None,
    };
    let v = decode("apps/v1", "Deployment", &d);
    assert_eq!(v["metadata"], json!({"name": "z"}));
    assert_eq!(v["spec"], json!({"replicas": 0, "revisionHistoryLimit": 0}));

    // A *string set to "" is kept (PVC storageClassName "" means "no class").
    let pvc = core::PersistentVolumeClaim {
        metadata: object_meta("c"),
        spec: Some(core::PersistentVolumeClaimSpec {
            storage_class_name: Some(String::new()),
            access_modes: vec!["ReadWriteOnce".into()],
            ..Default::default()
        }),
        status: None,
    };
    let v = decode("v1", "PersistentVolumeClaim", &pvc);
    assert_eq!(
        v["spec"],
        json!({"storageClassName": "", "accessModes": ["ReadWriteOnce"]})
    );

    // containerPort is not omitempty: a zero stays.
    let p = core::ContainerPort {
        container_port: Some(0),
        host_port: Some(0),
        ..Default::default()
    };
    let c = core::Container {
        name: Some(String::new()),
        ports: vec![p],
        ..Default::default()
    };
    let pod = core::Pod {
        metadata: None,
        spec: Some(core::PodSpec {
            containers: vec![c],
            ..Default::default()
        }),
        status: None,
    };
    let v = decode("v1", "Pod", &pod);
    assert_eq!(
        v["spec"]["containers"],
        json!([{"name": "", "ports": [{"containerPort": 0}]}])
    );
}

#[test]
fn secret_and_configmap_binary_data() {
    let s = core::Secret {
        metadata: object_meta("s"),
        data: [("k".to_string(), b"v\x00\xff".to_vec())].into(),
        string_data: [("plain".to_string(), "text".to_string())].into(),
        r#type: Some("Opaque".into()),
        immutable: Some(true),
    };
    let v = decode("v1", "Secret", &s);
    assert_eq!(v["data"], json!({"k": "dgD/"}));
    assert_eq!(v["stringData"], json!({"plain": "text"}));
    assert_eq!(v["type"], "Opaque");
    assert_eq!(v["immutable"], true);
    round_trips::<k8s_openapi::api::core::v1::Secret>(&v);

    let cm = core::ConfigMap {
        metadata: object_meta("cm"),
        data: [("a".to_string(), "b".to_string())].into(),
        binary_data: [("bin".to_string(), vec![0, 1, 2, 254])].into(),
        immutable: None,
    };
    let v = decode("v1", "ConfigMap", &cm);
    assert_eq!(v["data"], json!({"a": "b"}));
    assert_eq!(v["binaryData"], json!({"bin": "AAEC/g=="}));
    round_trips::<k8s_openapi::api::core::v1::ConfigMap>(&v);
}

#[test]
fn namespace_and_service_target_port() {
    let ns = core::Namespace {
        metadata: object_meta("team-a"),
        spec: Some(core::NamespaceSpec {
            finalizers: vec!["kubernetes".into()],
        }),
        status: None,
    };
    let v = decode("v1", "Namespace", &ns);
    assert_eq!(v["spec"], json!({"finalizers": ["kubernetes"]}));
    round_trips::<k8s_openapi::api::core::v1::Namespace>(&v);

    let port = |name: &str, target: IntOrString| core::ServicePort {
        name: Some(name.into()),
        protocol: Some("TCP".into()),
        port: Some(80),
        target_port: Some(target),
        ..Default::default()
    };
    let svc = core::Service {
        metadata: object_meta("svc"),
        spec: Some(core::ServiceSpec {
            ports: vec![
                port(
                    "http",
                    IntOrString {
                        r#type: Some(1),
                        int_val: None,
                        str_val: Some("web".into()),
                    },
                ),
                port(
                    "alt",
                    IntOrString {
                        r#type: Some(0),
                        int_val: Some(8080),
                        str_val: None,
                    },
                ),
            ],
            selector: [("app".to_string(), "web".to_string())].into(),
            r#type: Some("NodePort".into()),
            cluster_ips: vec!["10.96.0.10".into()],
            ..Default::default()
        }),
        status: None,
    };
    let v = decode("v1", "Service", &svc);
    assert_eq!(v["spec"]["ports"][0]["targetPort"], "web");
    assert_eq!(v["spec"]["ports"][1]["targetPort"], 8080);
    assert_eq!(v["spec"]["clusterIPs"], json!(["10.96.0.10"]));
    round_trips::<k8s_openapi::api::core::v1::Service>(&v);
}

#[test]
fn job_with_backoff_and_ttl() {
    let job = k8s_pb::api::batch::v1::Job {
        metadata: object_meta("pi"),
        spec: Some(k8s_pb::api::batch::v1::JobSpec {
            backoff_limit: Some(4),
            ttl_seconds_after_finished: Some(0),
            completions: Some(1),
            template: Some(core::PodTemplateSpec {
                metadata: None,
                spec: Some(core::PodSpec {
                    restart_policy: Some("Never".into()),
                    containers: vec![core::Container {
                        name: Some("pi".into()),
                        image: Some("perl".into()),
                        command: vec!["perl".into(), "-e".into(), "print 1".into()],
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }),
        status: None,
    };
    let v = decode("batch/v1", "Job", &job);
    assert_eq!(v["spec"]["backoffLimit"], 4);
    assert_eq!(v["spec"]["ttlSecondsAfterFinished"], 0);
    assert_eq!(
        v["spec"]["template"]["spec"]["containers"][0]["command"],
        json!(["perl", "-e", "print 1"])
    );
    round_trips::<k8s_openapi::api::batch::v1::Job>(&v);
}

#[test]
fn self_subject_access_and_rules_reviews_token_request() {
    use k8s_pb::api::authorization::v1 as authz;
    let r = authz::SelfSubjectAccessReview {
        metadata: None,
        spec: Some(authz::SelfSubjectAccessReviewSpec {
            resource_attributes: Some(authz::ResourceAttributes {
                namespace: Some("kube-system".into()),
                verb: Some("get".into()),
                resource: Some("pods".into()),
                subresource: Some("log".into()),
                ..Default::default()
            }),
            non_resource_attributes: None,
        }),
        status: None,
    };
    let v = decode("authorization.k8s.io/v1", "SelfSubjectAccessReview", &r);
    assert_eq!(
        v,
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
               "spec": {"resourceAttributes": {"namespace": "kube-system", "verb": "get",
                                               "resource": "pods", "subresource": "log"}}})
    );
    round_trips::<k8s_openapi::api::authorization::v1::SelfSubjectAccessReview>(&v);

    let rr = authz::SelfSubjectRulesReview {
        metadata: None,
        spec: Some(authz::SelfSubjectRulesReviewSpec {
            namespace: Some("default".into()),
        }),
        status: None,
    };
    let v = decode("authorization.k8s.io/v1", "SelfSubjectRulesReview", &rr);
    assert_eq!(v["spec"], json!({"namespace": "default"}));

    let tr = k8s_pb::api::authentication::v1::TokenRequest {
        metadata: None,
        spec: Some(k8s_pb::api::authentication::v1::TokenRequestSpec {
            audiences: vec!["https://kubernetes.default.svc".into()],
            expiration_seconds: Some(3600),
            bound_object_ref: None,
        }),
        status: None,
    };
    let v = decode("authentication.k8s.io/v1", "TokenRequest", &tr);
    assert_eq!(
        v["spec"],
        json!({"audiences": ["https://kubernetes.default.svc"], "expirationSeconds": 3600})
    );
    round_trips::<k8s_openapi::api::authentication::v1::TokenRequest>(&v);
}

#[test]
fn user_extra_values_are_arrays() {
    use k8s_pb::api::authentication::v1 as authn;
    let r = authn::SelfSubjectReview {
        metadata: None,
        status: Some(authn::SelfSubjectReviewStatus {
            user_info: Some(authn::UserInfo {
                username: Some("alice".into()),
                uid: Some("u-1".into()),
                groups: vec!["system:authenticated".into()],
                extra: [(
                    "scopes".to_string(),
                    authn::ExtraValue {
                        items: vec!["a".into(), "b".into()],
                    },
                )]
                .into(),
            }),
        }),
    };
    let v = decode("authentication.k8s.io/v1", "SelfSubjectReview", &r);
    assert_eq!(
        v["status"]["userInfo"],
        json!({"username": "alice", "uid": "u-1", "groups": ["system:authenticated"],
               "extra": {"scopes": ["a", "b"]}})
    );
    round_trips::<k8s_openapi::api::authentication::v1::SelfSubjectReview>(&v);
}

#[test]
fn pod_status_names_and_timestamps() {
    let p = core::Pod {
        metadata: Some(meta::ObjectMeta {
            name: Some("p".into()),
            deletion_timestamp: Some(meta::Time {
                seconds: Some(1_704_164_705),
                nanos: Some(999),
            }),
            ..Default::default()
        }),
        spec: Some(core::PodSpec {
            host_network: Some(true),
            ..Default::default()
        }),
        status: Some(core::PodStatus {
            phase: Some("Running".into()),
            host_ip: Some("10.0.0.1".into()),
            host_ips: vec![core::HostIp {
                ip: Some("10.0.0.1".into()),
            }],
            pod_ip: Some("10.1.0.5".into()),
            pod_ips: vec![
                core::PodIp {
                    ip: Some("10.1.0.5".into()),
                },
                core::PodIp {
                    ip: Some("fd00::5".into()),
                },
            ],
            start_time: Some(meta::Time {
                seconds: Some(0),
                nanos: Some(0),
            }),
            qos_class: Some("BestEffort".into()),
            ..Default::default()
        }),
    };
    let v = decode("v1", "Pod", &p);
    assert_eq!(v["metadata"]["deletionTimestamp"], "2024-01-02T03:05:05Z");
    assert_eq!(v["spec"]["hostNetwork"], true);
    assert_eq!(
        v["status"],
        json!({"phase": "Running", "hostIP": "10.0.0.1", "hostIPs": [{"ip": "10.0.0.1"}],
               "podIP": "10.1.0.5", "podIPs": [{"ip": "10.1.0.5"}, {"ip": "fd00::5"}],
               "startTime": "1970-01-01T00:00:00Z", "qosClass": "BestEffort"})
    );
    let _: k8s_openapi::api::core::v1::Pod = serde_json::from_value(v).unwrap();
}

#[test]
fn micro_time_and_meta_options() {
    use k8s_pb::api::coordination::v1 as coord;
    let lease = coord::Lease {
        metadata: object_meta("node-1"),
        spec: Some(coord::LeaseSpec {
            holder_identity: Some("node-1".into()),
            lease_duration_seconds: Some(40),
            renew_time: Some(meta::MicroTime {
                seconds: Some(1_704_164_705),
                nanos: Some(123_456_789),
            }),
            ..Default::default()
        }),
    };
    let v = decode("coordination.k8s.io/v1", "Lease", &lease);
    assert_eq!(v["spec"]["renewTime"], "2024-01-02T03:05:05.123456Z");
    round_trips::<k8s_openapi::api::coordination::v1::Lease>(&v);

    let hpa = k8s_pb::api::flowcontrol::v1::FlowSchema {
        metadata: None,
        spec: None,
        status: None,
    };
    assert_eq!(
        decode("flowcontrol.apiserver.k8s.io/v1", "FlowSchema", &hpa),
        json!({"apiVersion": "flowcontrol.apiserver.k8s.io/v1", "kind": "FlowSchema"})
    );

    let opts = meta::DeleteOptions {
        grace_period_seconds: Some(0),
        propagation_policy: Some("Foreground".into()),
        ..Default::default()
    };
    let v = decode("v1", "DeleteOptions", &opts);
    assert_eq!(
        v,
        json!({"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0,
               "propagationPolicy": "Foreground"})
    );
}

#[test]
fn inline_fields_are_merged() {
    let pod = core::Pod {
        metadata: None,
        spec: Some(core::PodSpec {
            volumes: vec![core::Volume {
                name: Some("cfg".into()),
                volume_source: Some(core::VolumeSource {
                    config_map: Some(core::ConfigMapVolumeSource {
                        local_object_reference: Some(core::LocalObjectReference {
                            name: Some("cm".into()),
                        }),
                        default_mode: Some(0o644),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }],
            containers: vec![core::Container {
                name: Some("c".into()),
                readiness_probe: Some(core::Probe {
                    handler: Some(core::ProbeHandler {
                        http_get: Some(core::HttpGetAction {
                            path: Some("/healthz".into()),
                            port: Some(IntOrString {
                                r#type: Some(0),
                                int_val: Some(8080),
                                str_val: None,
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    period_seconds: Some(5),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: None,
    };
    let v = decode("v1", "Pod", &pod);
    assert_eq!(
        v["spec"]["volumes"],
        json!([{"name": "cfg", "configMap": {"name": "cm", "defaultMode": 420}}])
    );
    assert_eq!(
        v["spec"]["containers"][0]["readinessProbe"],
        json!({"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 5})
    );
    round_trips::<k8s_openapi::api::core::v1::Pod>(&v);
}

#[test]
fn raw_extension_embeds_json() {
    let cr = apps::ControllerRevision {
        metadata: object_meta("web-1"),
        data: Some(k8s_pb::apimachinery::pkg::runtime::RawExtension {
            raw: Some(br#"{"spec":{"template":{"x":1}}}"#.to_vec()),
        }),
        revision: Some(1),
    };
    let v = decode("apps/v1", "ControllerRevision", &cr);
    assert_eq!(v["data"], json!({"spec": {"template": {"x": 1}}}));
    assert_eq!(v["revision"], 1);
    round_trips::<k8s_openapi::api::apps::v1::ControllerRevision>(&v);

    // An embedded protobuf object is decoded in turn.
    let inner = envelope(
        "v1",
        "ConfigMap",
        core::ConfigMap::default().encode_to_vec(),
    );
    let cr = apps::ControllerRevision {
        metadata: None,
        data: Some(k8s_pb::apimachinery::pkg::runtime::RawExtension { raw: Some(inner) }),
        revision: None,
    };
    let v = decode("apps/v1", "ControllerRevision", &cr);
    assert_eq!(v["data"], json!({"apiVersion": "v1", "kind": "ConfigMap"}));

    let bad = apps::ControllerRevision {
        metadata: None,
        data: Some(k8s_pb::apimachinery::pkg::runtime::RawExtension {
            raw: Some(b"{not json".to_vec()),
        }),
        revision: None,
    };
    assert!(matches!(
        decode_to_json(&envelope(
            "apps/v1",
            "ControllerRevision",
            bad.encode_to_vec()
        )),
        Err(ProtobufError::InvalidValue { .. })
    ));
}

#[test]
fn kinds_resolve_case_insensitively_and_without_envelope() {
    assert_eq!(
        message_for("apps/v1", "Deployment"),
        Some("api.apps.v1.Deployment")
    );
    assert_eq!(
        message_for("networking.k8s.io/v1", "Ingress"),
        Some("api.networking.v1.Ingress")
    );
    assert_eq!(
        message_for("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
        Some("api.rbac.v1.ClusterRoleBinding")
    );
    assert_eq!(message_for("v1", "PodIP"), Some("api.core.v1.PodIp"));
    assert!(message_for("example.com/v1", "Widget").is_none());
    let cm = core::ConfigMap {
        metadata: object_meta("x"),
        ..Default::default()
    };
    let v = decode_object("v1", "ConfigMap", &cm.encode_to_vec()).unwrap();
    assert_eq!(v["metadata"]["name"], "x");
}

#[test]
fn errors() {
    assert_eq!(decode_to_json(b"{}"), Err(ProtobufError::BadMagic));
    assert!(matches!(
        decode_to_json(&envelope("example.com/v1", "Widget", vec![])),
        Err(ProtobufError::UnknownKind(_))
    ));
    // ConfigMap.data (tag 2) as a varint: wire type mismatch.
    assert!(matches!(
        decode_to_json(&envelope("v1", "ConfigMap", vec![0x10, 0x01])),
        Err(ProtobufError::WireType { .. })
    ));
    // A length running past the end.
    assert_eq!(
        decode_to_json(&envelope("v1", "ConfigMap", vec![0x0a, 0x05, 0x0a])),
        Err(ProtobufError::Truncated)
    );
    let mut body = envelope("v1", "ConfigMap", vec![]);
    body.truncate(body.len() - 1);
    assert!(decode_to_json(&body).is_err());
}

#[test]
fn hostile_input_never_panics() {
    let mut bodies: Vec<Vec<u8>> = [
        "configmap",
        "deployment",
        "service",
        "selfsubjectaccessreview",
    ]
    .iter()
    .map(|n| {
        std::fs::read(format!(
            "{}/tests/fixtures/protobuf/kubectl-1.32-{n}.pb",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    })
    .collect();
    bodies.push(envelope(
        "v1",
        "Pod",
        core::Pod {
            metadata: object_meta("p"),
            ..Default::default()
        }
        .encode_to_vec(),
    ));
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for good in &bodies {
        for cut in 0..good.len() {
            let _ = decode_to_json(&good[..cut]);
        }
        for _ in 0..3000 {
            let mut b = good.clone();
            for _ in 0..(1 + next() % 4) {
                let i = (next() as usize) % b.len();
                b[i] = next() as u8;
            }
            let _ = decode_to_json(&b);
        }
    }
    for _ in 0..3000 {
        let mut body = MAGIC.to_vec();
        for _ in 0..(next() % 96) {
            body.push(next() as u8);
        }
        let _ = decode_to_json(&body);
    }
    // Deep nesting is refused, not a stack overflow.
    let mut raw: Vec<u8> = Vec::new();
    for _ in 0..10_000 {
        let mut m = vec![0x1a];
        let mut len = raw.len();
        loop {
            let b = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                m.push(b);
                break;
            }
            m.push(b | 0x80);
        }
        m.extend(&raw);
        raw = m;
        if raw.len() > 200_000 {
            break;
        }
    }
    let _ = decode_to_json(&envelope("apiextensions.k8s.io/v1", "JSONSchemaProps", raw));
}
