"""The Helm chart, rendered with Helm's own Go SDK (helm-python-sdk, no helm
binary, no cluster) for every values file under helm/seed-serve/ci/: it lints,
every core manifest validates against the Kubernetes schemas
(kubernetes-validate), custom resources have the shapes their operators need,
and the properties an operator relies on hold."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from serving.config import load_config

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "seed-serve"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
KUBERNETES_VERSION = "1.31"
CUSTOM_GROUPS = ("ray.io/", "monitoring.coreos.com/")

Manifest = dict[str, Any]


def render(values: dict[str, Any], name: str = "code", namespace: str = "ai") -> list[Manifest]:
    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values, name=name, namespace=namespace)
    manifests: list[Manifest] = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        manifests.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return manifests


def notes(values: dict[str, Any]) -> str:
    with helm.Chart.load(str(CHART)) as chart:
        rendered = chart.render(values, name="code", namespace="ai")
    return str(rendered["seed-serve/templates/NOTES.txt"])


def values_of(path: Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()) or {})


@pytest.fixture(scope="module", params=CI_VALUES, ids=[p.stem for p in CI_VALUES])
def case(request: pytest.FixtureRequest) -> tuple[dict[str, Any], list[Manifest]]:
    values = values_of(request.param)
    return values, render(values)


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def one(manifests: list[Manifest], kind: str, suffix: str = "") -> Manifest:
    found = [m for m in of_kind(manifests, kind) if m["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"{kind} *{suffix}: {[m['metadata']['name'] for m in found]}"
    return found[0]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels + matchExpressions) against labels."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def ray_pod_templates(ray_cluster: Manifest) -> list[dict[str, Any]]:
    spec = ray_cluster["spec"]
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]


def validate_pod_template(template: dict[str, Any]) -> None:
    """An embedded pod template checked as a Pod against the core schema."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check", **template.get(
        "metadata", {})}, "spec": template["spec"]}  # fmt: skip
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


# --------------------------------------------------------------------------- validity


def test_chart_lints_clean() -> None:
    result = helm.lint(str(CHART))
    assert result["errors"] == [], result
    assert not [m for m in result["messages"] if m["severity"] >= 2], result


def test_there_are_values_files_for_the_documented_scenarios() -> None:
    assert {p.stem for p in CI_VALUES} >= {
        "defaults-values", "gpu-multi-worker-values", "existing-secrets-values",
        "monitoring-values", "redis-values", "sso-values",
    }  # fmt: skip


def test_core_manifests_validate_against_kubernetes_schemas(
    case: tuple[dict[str, Any], list[Manifest]],
) -> None:
    _, manifests = case
    core = [m for m in manifests if not m["apiVersion"].startswith(CUSTOM_GROUPS)]
    assert {"Deployment", "Service", "ConfigMap"} <= {m["kind"] for m in core}
    for manifest in core:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_custom_resources_have_the_shapes_their_operators_need(
    case: tuple[dict[str, Any], list[Manifest]],
) -> None:
    _, manifests = case
    for ray_cluster in of_kind(manifests, "RayCluster"):
        assert ray_cluster["apiVersion"] == "ray.io/v1"
        spec = ray_cluster["spec"]
        assert spec["rayVersion"] == values_of(CHART / "values.yaml")["ray"]["rayVersion"]
        assert isinstance(spec["enableInTreeAutoscaling"], bool)
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        for group in groups:
            # KubeRay wants every rayStartParams value as a string.
            assert all(isinstance(v, str) for v in group["rayStartParams"].values()), group
        for worker in spec["workerGroupSpecs"]:
            assert worker["groupName"]
            assert worker["minReplicas"] <= worker["replicas"] <= worker["maxReplicas"]
        for template in ray_pod_templates(ray_cluster):
            validate_pod_template(template)
    for monitor in of_kind(manifests, "ServiceMonitor"):
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["spec"]["selector"]["matchLabels"]
        for endpoint in monitor["spec"]["endpoints"]:
            assert set(endpoint) <= {"port", "path", "interval", "scheme", "honorLabels"}
            assert endpoint["path"].startswith("/") and endpoint["interval"].endswith("s")
    for rule in of_kind(manifests, "PrometheusRule"):
        assert rule["apiVersion"] == "monitoring.coreos.com/v1"
        for group in rule["spec"]["groups"]:
            assert group["name"] and group["rules"]
            for alert in group["rules"]:
                assert {"alert", "expr", "labels", "annotations"} <= set(alert)


# --------------------------------------------------------------------------- properties


def test_gpu_requests_equal_limits_and_engine_pods_are_gpu_ready(
    case: tuple[dict[str, Any], list[Manifest]],
) -> None:
    values, manifests = case
    ray_clusters = of_kind(manifests, "RayCluster")
    if not values.get("ray", {}).get("enabled", True):
        assert ray_clusters == []
        return
    (ray_cluster,) = ray_clusters
    workers = ray_cluster["spec"]["workerGroupSpecs"]
    defaults = values_of(CHART / "values.yaml")
    expected = list(values.get("ray", {}).get("workerGroups") or defaults["ray"]["workerGroups"])
    adapters = values.get("adapters", {})
    if adapters.get("enabled") and adapters.get("training", {}).get("enabled"):
        expected.append({**defaults["adapters"]["training"], **adapters["training"]})
    assert [w["groupName"] for w in workers] == [g["name"] for g in expected]
    for worker, wanted in zip(workers, expected, strict=True):
        spec = worker["template"]["spec"]
        (container,) = spec["containers"]
        resources = container["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
        assert resources["limits"]["nvidia.com/gpu"] == wanted["gpus"]
        assert worker["rayStartParams"]["num-gpus"] == str(wanted["gpus"])
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
            "tolerations"
        ]
        shm = next(v for v in spec["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"]["medium"] == "Memory"
        assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
        assert any(m["name"] == "model-cache" for m in container["volumeMounts"])
        assert spec["securityContext"]["runAsNonRoot"] is True
    head = ray_cluster["spec"]["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    head_resources = head["template"]["spec"]["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in head_resources.get("limits", {})


def test_gateway_probes_draining_and_hardening(
    case: tuple[dict[str, Any], list[Manifest]],
) -> None:
    _, manifests = case
    deployment = one(manifests, "Deployment", "-gateway")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    config = gateway_config(manifests)
    drain = config.gateway.drain_timeout_s
    # Kubernetes must not kill a gateway that is still draining.
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + 5
    assert pod["securityContext"]["runAsNonRoot"] is True
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", "/var/lib/seed-serve"} <= mounts  # writable, with a read-only root
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == config.gateway.port and ports["metrics"] == config.gateway.metrics_port
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pdb = one(manifests, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])


def gateway_config(manifests: list[Manifest], tmp: Path | None = None) -> Any:
    """The ConfigMap's config.yaml, loaded by the gateway's own config loader."""
    config_map = one(manifests, "ConfigMap", "-config")
    path = Path(tmp or Path("/tmp")) / f"chart-config-{id(config_map)}.yaml"
    path.write_text(config_map["data"]["config.yaml"])
    try:
        return load_config(path, env={})
    finally:
        path.unlink()


def test_rendered_config_is_one_the_gateway_accepts(
    case: tuple[dict[str, Any], list[Manifest]], tmp_path: Path
) -> None:
    values, manifests = case
    config = gateway_config(manifests, tmp_path)
    deployment = one(manifests, "Deployment", "-gateway")
    pod = deployment["spec"]["template"]["spec"]
    keys_volume = next(v for v in pod["volumes"] if v["name"] == "keys")
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    item = keys_volume["secret"]["items"][0]
    # Self-service keys: the console writes the file on a shared volume.
    store = (
        "keys-store" if values.get("apiKeys", {}).get("selfService", {}).get("enabled") else "keys"
    )
    assert config.auth.keys_file == f"{mounts[store]['mountPath']}/{item['path']}"
    console_volume = next(v for v in pod["volumes"] if v["name"] == "console")
    console_item = console_volume["secret"]["items"][0]["path"]
    assert config.console.session_secret_file == f"{mounts['console']['mountPath']}/{console_item}"
    assert config.gateway.host == "0.0.0.0"
    assert config.audit.file is None and config.audit.stdout  # pods: audit lines to stdout
    ray = values.get("ray", {})
    if ray.get("enabled", True):
        ray_cluster = one(manifests, "RayCluster")
        name = ray_cluster["metadata"]["name"]
        assert config.ray.address == f"ray://{name}-head-svc.ai.svc:10001"
    else:
        assert config.ray.address == ray["address"]
    redis = values.get("redis", {})
    if redis.get("deploy") or redis.get("url"):
        assert config.quotas.backend == "redis" and config.telemetry.backend == "redis"
        assert config.quotas.redis_url == config.telemetry.redis_url
        # Usage records: every gateway pod's, in one place (chargeback).
        assert config.usage.backend == "redis" and config.usage.redis_url == config.quotas.redis_url
        # A sign-out on one gateway pod is refused by all.
        assert config.console.sign_outs_redis_url == config.quotas.redis_url
        if redis.get("deploy"):
            service = one(manifests, "Service", "-redis")
            assert config.quotas.redis_url == (
                f"redis://{service['metadata']['name']}.ai.svc:6379/0"
            )
    # The config change rolls the gateway pods.
    assert deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]


def test_secrets_are_referenced_never_inlined(
    case: tuple[dict[str, Any], list[Manifest]],
) -> None:
    values, manifests = case
    keys = values.get("apiKeys", {})
    secrets = [s for s in of_kind(manifests, "Secret") if s["metadata"]["name"].endswith("-keys")]
    console = values.get("console", {})
    console_secrets = [
        s for s in of_kind(manifests, "Secret") if s["metadata"]["name"].endswith("-console")
    ]
    volumes = {
        v["name"]: v
        for v in one(manifests, "Deployment", "-gateway")["spec"]["template"]["spec"]["volumes"]
    }
    if console.get("existingSecret"):
        assert console_secrets == []
        assert volumes["console"]["secret"]["secretName"] == console["existingSecret"]
    else:  # made by the chart: random, 48 characters, referenced
        (made,) = console_secrets
        assert volumes["console"]["secret"]["secretName"] == made["metadata"]["name"]
        assert len(base64.b64decode(made["data"]["session-secret"])) == 48
    oidc = values.get("oidc", {})
    if oidc.get("existingSecret"):
        assert volumes["oidc"]["secret"]["secretName"] == oidc["existingSecret"]
    else:
        assert "oidc" not in volumes
    deployment = one(manifests, "Deployment", "-gateway")
    keys_volume = next(
        v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "keys"
    )
    if keys.get("existingSecret"):
        assert secrets == []
        assert keys_volume["secret"]["secretName"] == keys["existingSecret"]
        assert keys_volume["secret"]["items"][0]["key"] == keys.get("secretKey", "keys.yaml")
    else:
        (secret,) = secrets
        assert keys_volume["secret"]["secretName"] == secret["metadata"]["name"]
    hf = values.get("huggingFace", {})
    for ray_cluster in of_kind(manifests, "RayCluster"):
        for template in ray_pod_templates(ray_cluster):
            env = {e["name"]: e for e in template["spec"]["containers"][0].get("env", [])}
            if hf.get("existingSecret"):
                assert "value" not in env["HF_TOKEN"]
                assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {
                    "name": hf["existingSecret"],
                    "key": hf.get("secretKey", "token"),
                }
            else:
                assert "HF_TOKEN" not in env
    # Nothing rendered carries a key or a token in clear.
    assert "sk-seed-" not in json.dumps(manifests)


def test_network_policies_isolate_the_engines(
    case: tuple[dict[str, Any], list[Manifest]],
) -> None:
    values, manifests = case
    policies = {p["metadata"]["name"]: p for p in of_kind(manifests, "NetworkPolicy")}
    gateway_labels = one(manifests, "Deployment", "-gateway")["spec"]["template"]["metadata"][
        "labels"
    ]
    gateway_policy = next(p for n, p in policies.items() if n.endswith("-gateway"))
    assert selects(gateway_policy["spec"]["podSelector"], gateway_labels)
    metrics_rule = next(
        r for r in gateway_policy["spec"]["ingress"] if r["ports"][0]["port"] == "metrics"
    )
    assert [f["namespaceSelector"] for f in metrics_rule["from"]] == [
        values.get("networkPolicy", {}).get("monitoringNamespaceSelector")
        or values_of(CHART / "values.yaml")["networkPolicy"]["monitoringNamespaceSelector"]
    ]
    for ray_cluster in of_kind(manifests, "RayCluster"):
        policy = next(p for n, p in policies.items() if n.endswith("-ray"))
        templates = ray_pod_templates(ray_cluster)
        for template in templates:
            assert selects(policy["spec"]["podSelector"], template["metadata"]["labels"])
        assert not selects(policy["spec"]["podSelector"], gateway_labels)
        sources = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
        pod_peers = [p["podSelector"] for p in sources if "podSelector" in p]
        # Allowed: the gateway and the Ray pods themselves; nothing else by pod.
        assert any(selects(s, gateway_labels) for s in pod_peers)
        for template in templates:
            assert any(selects(s, template["metadata"]["labels"]) for s in pod_peers)
        unrelated = {"app.kubernetes.io/name": "other", "app.kubernetes.io/component": "gateway"}
        assert not any(selects(s, unrelated) for s in pod_peers)
        # Everything else only via the monitoring namespaces, and only Ray's metrics port.
        namespace_rules = [r for r in policy["spec"]["ingress"]
                           if any("namespaceSelector" in p for p in r["from"])]  # fmt: skip
        assert all(r["ports"] == [{"port": 8080, "protocol": "TCP"}] for r in namespace_rules)


def test_monitoring_is_wired_to_the_project_files(
    case: tuple[dict[str, Any], list[Manifest]],
) -> None:
    values, manifests = case
    monitoring = values.get("monitoring", {})
    if not monitoring.get("serviceMonitor", {}).get("enabled"):
        assert of_kind(manifests, "ServiceMonitor") == []
        return
    monitor = one(manifests, "ServiceMonitor")
    service = one(manifests, "Service", "-metrics")
    assert selects(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert {e["path"] for e in monitor["spec"]["endpoints"]} == {"/metrics", "/metrics/engines"}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {
        p["name"] for p in service["spec"]["ports"]
    }
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    rule = one(manifests, "PrometheusRule")
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "seed-serve-alerts.yaml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]
    dashboard = one(manifests, "ConfigMap", "-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    board = json.loads(dashboard["data"]["seed-serve-dashboard.json"])
    assert board == json.loads(
        (ROOT / "deploy" / "grafana" / "seed-serve-dashboard.json").read_text()
    )


def test_chart_files_are_copies_of_deploy() -> None:
    for chart_file, source in (
        ("seed-serve-dashboard.json", ROOT / "deploy" / "grafana" / "seed-serve-dashboard.json"),
        ("seed-serve-alerts.yaml", ROOT / "deploy" / "prometheus" / "seed-serve-alerts.yaml"),
    ):
        assert (CHART / "files" / chart_file).read_text() == source.read_text(), (
            f"copy {source.relative_to(ROOT)} to helm/seed-serve/files/"
        )


def test_notes_tell_how_to_get_a_key_and_call_the_endpoint() -> None:
    text = notes(values_of(CHART / "ci" / "defaults-values.yaml"))
    assert "seed-serve keys create" in text
    assert "kubectl -n ai port-forward svc/code-seed-serve 8000:80" in text
    assert "OPENAI_BASE_URL=http://127.0.0.1:8000/v1" in text
    assert "$OPENAI_BASE_URL/completions" in text and '"model": "seed-coder-8b-base"' in text


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, "apiKeys: set apiKeys.existingSecret"),
        (
            {"apiKeys": {"existingSecret": "k"}, "ray": {"enabled": False}},
            "ray.address is required",
        ),
        (
            {
                "apiKeys": {"existingSecret": "k"},
                "ray": {"workerGroups": [{"name": "g", "gpus": 1, "replicas": 1}]},
            },
            "config.replica_groups need 2 GPUs",
        ),
        (
            {
                "apiKeys": {"existingSecret": "k"},
                "redis": {"url": "redis://r:6379", "deploy": True},
            },
            "either redis.url or redis.deploy",
        ),
        ({"apiKeys": {"existingSecret": "k"}, "gateway": {"replcas": 3}}, "'replcas' not allowed"),
        # The provider's client secret without the provider: named at install time.
        (
            {"apiKeys": {"existingSecret": "k"}, "oidc": {"existingSecret": "o"}},
            "oidc.existingSecret needs config.auth.oidc",
        ),
        ({"apiKeys": {"existingSecret": "k"}, "gateway": {"port": "http"}}, "/gateway/port"),
        (
            {"apiKeys": {"existingSecret": "k"}, "gateway": {"ingress": {"enabled": True}}},
            "gateway.ingress.hosts",
        ),
    ],
)
def test_missing_or_wrong_values_fail_with_a_clear_message(
    values: dict[str, Any], message: str
) -> None:
    with pytest.raises(helm.HelmError) as failure:
        render(values)
    assert message in str(failure.value)


# --------------------------------------------------------------------------- docs in sync


def test_readme_schema_and_kuberay_manifest_are_generated_in_sync() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "helm_docs.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_every_value_is_documented_and_in_the_schema() -> None:
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        import helm_docs
    finally:
        sys.path.pop(0)
    text = (CHART / "values.yaml").read_text()
    descriptions = helm_docs.documented_keys(text)
    values = yaml.safe_load(text)
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(values)

    def check(node: dict[str, Any], prefix: str) -> None:
        for key, child in node.get("properties", {}).items():
            path = f"{prefix}{key}"
            assert child.get("description") or "properties" in child, f"{path} is undocumented"
            check(child, path + ".")

    check(schema, "")
    assert "ray.workerGroups" in descriptions and "config" in descriptions


def test_plain_kuberay_manifest_is_a_valid_ray_cluster() -> None:
    text = (ROOT / "deploy" / "kuberay" / "raycluster.yaml").read_text()
    (manifest,) = [doc for doc in yaml.safe_load_all(text) if doc]
    assert manifest["kind"] == "RayCluster" and manifest["apiVersion"] == "ray.io/v1"
    for template in ray_pod_templates(manifest):
        validate_pod_template(template)
        assert "serviceAccountName" not in template["spec"]


# --------------------------------------------------------------------------- team adapters


def test_adapter_storage_and_training_workers() -> None:
    values = values_of(CHART / "ci" / "adapters-values.yaml")
    manifests = render(values)
    claim = one(manifests, "PersistentVolumeClaim", "-adapters")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["storageClassName"] == "efs-sc"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    mount = values.get("adapters", {}).get("mountPath", "/var/lib/seed-serve-adapters")
    gateway = one(manifests, "Deployment", "-gateway")["spec"]["template"]
    ray_cluster = one(manifests, "RayCluster")
    for template in [gateway, *ray_pod_templates(ray_cluster)]:
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        assert (
            volumes["adapters"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        )
        mounts = {
            m["name"]: m["mountPath"] for m in template["spec"]["containers"][0]["volumeMounts"]
        }
        assert mounts["adapters"] == mount
        validate_pod_template(template)
    # The gateway's config points registry, roots and data at the volume, and is valid.
    config = yaml.safe_load(one(manifests, "ConfigMap", "-config")["data"]["config.yaml"])
    assert config["adapters"] == {
        "registry_file": f"{mount}/registry.yaml",
        "roots": [f"{mount}/adapters"],
        "data_dir": f"{mount}/team-data",
    }
    from serving.config import ServingConfig

    assert ServingConfig.model_validate(config).replica_groups[0].lora.enabled
    # A training worker group, with GPUs, only for training jobs.
    groups = {g["groupName"]: g for g in ray_cluster["spec"]["workerGroupSpecs"]}
    train = groups["train"]
    assert train["maxReplicas"] == 2 and train["minReplicas"] == 0
    assert "seed_serve_training" in train["rayStartParams"]["resources"]
    limits = train["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1
    assert "seed_serve_training" not in str(groups["gpu"]["rayStartParams"])


def test_adapters_on_an_object_store_volume() -> None:
    csi = {"csi": {"driver": "s3.csi.aws.com", "volumeAttributes": {"bucketName": "acme"}}}
    base = {"apiKeys": {"keysFile": "keys: []\n"}}
    manifests = render({**base, "adapters": {"enabled": True,
                                             "storage": {"kind": "volume", "volume": csi}}})  # fmt: skip
    assert not of_kind(manifests, "PersistentVolumeClaim")
    gateway = one(manifests, "Deployment", "-gateway")["spec"]["template"]
    volumes = {v["name"]: v for v in gateway["spec"]["volumes"]}
    assert volumes["adapters"]["csi"] == csi["csi"]
    with pytest.raises(helm.HelmError) as failure:
        render({**base, "adapters": {"enabled": True, "storage": {"kind": "volume"}}})
    assert "adapters.storage.volume must give a volume source" in str(failure.value)
    with pytest.raises(helm.HelmError) as failure:
        render({**base, "adapters": {"enabled": True, "storage": {"kind": "s3"}}})
    assert "/adapters/storage/kind" in str(failure.value)


def test_self_service_keys_live_on_a_shared_volume_seeded_once_from_the_secret() -> None:
    values = values_of(CHART / "ci" / "sso-values.yaml")
    manifests = render(values)
    (claim,) = of_kind(manifests, "PersistentVolumeClaim")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["storageClassName"] == "nfs-client"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    pod = one(manifests, "Deployment", "-gateway")["spec"]["template"]["spec"]
    (seed,) = pod["initContainers"]
    command = seed["command"][-1]
    # Copies only when the volume has no keys file yet: keys made in the console survive restarts.
    assert command.startswith("[ -f /var/lib/seed-serve/keys/keys.yaml ] ||")
    assert "cp /etc/seed-serve/keys/keys.yaml /var/lib/seed-serve/keys/keys.yaml" in command
    assert seed["securityContext"] == pod["containers"][0]["securityContext"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["keys-store"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    config = yaml.safe_load(one(manifests, "ConfigMap", "-config")["data"]["config.yaml"])
    assert config["auth"]["oidc"]["client_secret_file"] == "/etc/seed-serve/oidc/client-secret"
    assert config["usage"]["backend"] == "redis"  # three gateway pods, one set of records
