"""infra/k8s builds with `kubectl kustomize` and every object validates, offline (no cluster)."""

from __future__ import annotations

import base64
import copy
import importlib
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from infra.core.settings import Settings, load_settings
from lb_adapters.keda.metric import TriggerConfig
from tests.unit.k8s_validate import validate

K8S = Path(__file__).resolve().parents[2] / "infra" / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
# Secrets the prod overlay expects to be created out of band (its kustomization.yaml says how).
EXTERNAL_SECRETS = {"prod": {"foresight-secrets", "foresight-tls"}}
POD_KINDS = {"Deployment", "DaemonSet", "StatefulSet"}


def build(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl not found: `./run setup` installs Debian's kubernetes-client")
    proc = subprocess.run([kubectl, "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, build(request.param)


def pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for obj in objects:
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] in POD_KINDS:
            out.append((name, obj["spec"]["template"]["spec"]))
        for key in ("rayClusterConfig", "rayClusterSpec"):
            cluster = obj.get("spec", {}).get(key)
            if cluster:
                out.append((f"{name} head", cluster["headGroupSpec"]["template"]["spec"]))
                out += [(f"{name} {g['groupName']}", g["template"]["spec"])
                        for g in cluster.get("workerGroupSpecs", [])]
    return out


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def test_every_object_validates(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    problems = [p for obj in objects for p in validate(obj)]
    assert problems == []
    kinds = {o["kind"] for o in objects}
    assert {"DaemonSet", "Deployment", "RayService", "RayJob", "ScaledObject", "ConfigMap", "Role", "RoleBinding",
            "ServiceAccount", "Service", "PersistentVolumeClaim", "StatefulSet"} <= kinds


def test_ingest_streams_controllers_and_scaler_are_all_there(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    commands = {tuple(c.get("args", [])[:2]) for _, spec in pod_specs(objects) for c in spec["containers"]}
    assert {("ingest", "tail"), ("ingest", "syslog"), ("ingest", "http"), ("stream",), ("adapt",),
            ("keda-scaler",)} <= commands
    [tail] = by_kind(objects, "DaemonSet").values()
    assert tail["spec"]["template"]["spec"]["containers"][0]["args"][:2] == ["ingest", "tail"]


def test_references_resolve_and_images_are_set(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, objects = rendered
    names = {kind: set(by_kind(objects, kind)) for kind in ("ConfigMap", "Secret", "PersistentVolumeClaim",
                                                              "ServiceAccount")}
    names["Secret"] |= EXTERNAL_SECRETS.get(overlay, set())
    missing = []
    for where, spec in pod_specs(objects):
        if "serviceAccountName" in spec and spec["serviceAccountName"] not in names["ServiceAccount"]:
            missing.append(f"{where}: service account {spec['serviceAccountName']}")
        for vol in spec.get("volumes", []):
            for kind, ref in (("ConfigMap", vol.get("configMap", {}).get("name")),
                              ("Secret", vol.get("secret", {}).get("secretName")),
                              ("PersistentVolumeClaim", vol.get("persistentVolumeClaim", {}).get("claimName"))):
                if ref is not None and ref not in names[kind]:
                    missing.append(f"{where}: {kind} {ref}")
        for container in spec["containers"]:
            assert ":" in container["image"], f"{where}: image {container['image']} not set by the overlay"
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref is None or ref["name"] in EXTERNAL_SECRETS.get(overlay, set()):
                    continue
                secret = by_kind(objects, "Secret").get(ref["name"])
                if secret is None or (ref["key"] not in secret.get("data", {}) and not ref.get("optional")):
                    missing.append(f"{where}: secret key {ref['name']}/{ref['key']}")
    assert missing == []


def secret_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    """The FORESIGHT_* variables the pods take from Secrets, with stand-in values."""
    return {env["name"]: f"from-secret-{env['valueFrom']['secretKeyRef']['key']}"
            for _, spec in pod_specs(objects) for c in spec["containers"] for env in c.get("env", [])
            if "secretKeyRef" in env.get("valueFrom", {})}


def test_config_map_is_valid_settings(rendered: tuple[str, list[dict[str, Any]]], tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _, objects = rendered
    [config] = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("foresight-config")]
    path = tmp_path / "foresight.toml"
    path.write_text(config["data"]["foresight.toml"])
    for name, value in secret_env(objects).items():
        monkeypatch.setenv(name, value)
    settings = load_settings(path)
    if settings.kafka.security_protocol.startswith("SASL_"):  # its password comes from the Secret
        assert settings.kafka.kafka_python_options()["sasl_plain_password"] == "from-secret-kafka-password"
    assert settings.keda.host == "0.0.0.0" and settings.ray.address
    for secret in by_kind(objects, "Secret").values():  # tokens never in the ConfigMap
        for value in secret.get("data", {}).values():
            token = base64.b64decode(value).decode()
            assert not token or token not in config["data"]["foresight.toml"]


def test_scaled_object_speaks_to_the_scaler(rendered: tuple[str, list[dict[str, Any]]], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _, objects = rendered
    [scaled] = by_kind(objects, "ScaledObject").values()
    service = by_kind(objects, "Service")["foresight-keda-scaler"]
    [config] = [o for o in objects if o["kind"] == "ConfigMap"]
    (tmp_path / "f.toml").write_text(config["data"]["foresight.toml"])
    for name, value in secret_env(objects).items():
        monkeypatch.setenv(name, value)
    keda_port = load_settings(tmp_path / "f.toml").keda.port
    auths = by_kind(objects, "TriggerAuthentication")
    secrets = set(by_kind(objects, "Secret")) | EXTERNAL_SECRETS.get(rendered[0], set())
    external = [t for t in scaled["spec"]["triggers"] if t["type"] in {"external", "external-push"}]
    assert external, "no trigger asks the Foresight scaler"
    for trigger in external:
        if "authenticationRef" in trigger:  # KEDA's TLS parameters for the external scaler, from a Secret
            refs = auths[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"]
            assert {r["parameter"] for r in refs} <= {"caCert", "tlsClientCert", "tlsClientKey"}
            assert {r["name"] for r in refs} <= secrets
        TriggerConfig.from_metadata(trigger["metadata"])  # the scaler accepts what KEDA will pass
        host, port = trigger["metadata"]["scalerAddress"].rsplit(":", 1)
        assert host == service["metadata"]["name"]
        assert int(port) in {p["port"] for p in service["spec"]["ports"]}
        assert {p["port"] for p in service["spec"]["ports"]} == {keda_port}


def test_ray_service_deploys_an_importable_builder(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    [ray_service] = by_kind(objects, "RayService").values()
    [app] = yaml.safe_load(ray_service["spec"]["serveConfigV2"])["applications"]
    module, attr = app["import_path"].split(":")
    assert callable(getattr(importlib.import_module(module), attr))
    [job] = by_kind(objects, "RayJob").values()
    assert job["spec"]["entrypoint"].startswith("foresight train")


def test_the_validator_catches_mistakes(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    deployment = copy.deepcopy(by_kind(objects, "Deployment")["foresight-streams"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["imagePullPolicyy"] = "Always"
    container["ports"][0]["containerPort"] = "19102"
    del container["name"]
    problems = "\n".join(validate(deployment))
    assert "containers[0].imagePullPolicyy: Extra inputs are not permitted" in problems
    assert "containers[0].ports[0].containerPort: Input should be a valid integer" in problems
    assert "containers[0].name: Field required" in problems

    ray_service = copy.deepcopy(next(iter(by_kind(objects, "RayService").values())))
    ray_service["spec"]["rayClusterConfig"]["headGroupSpec"]["templat"] = {}
    ray_service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["envv"] = []
    problems = "\n".join(validate(ray_service))
    assert "templat" in problems and "envv: Extra inputs are not permitted" in problems

    scaled = copy.deepcopy(next(iter(by_kind(objects, "ScaledObject").values())))
    scaled["spec"]["triggers"] = []
    assert validate(scaled)


def test_the_autoscaler_runs_under_its_scale_only_account(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendered
    autoscaler = by_kind(objects, "Deployment")["foresight-autoscaler"]
    spec = autoscaler["spec"]["template"]["spec"]
    assert spec["containers"][0]["args"] == ["autoscale"]
    account = spec["serviceAccountName"]
    bindings = [b for b in by_kind(objects, "RoleBinding").values()
                if any(s["kind"] == "ServiceAccount" and s["name"] == account for s in b["subjects"])]
    rules = [rule for b in bindings for rule in by_kind(objects, "Role")[b["roleRef"]["name"]]["rules"]]
    assert rules == [{"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["get", "patch"]}]


def test_controllers_reach_etcd_and_have_a_writable_spool(rendered: tuple[str, list[dict[str, Any]]],
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, objects = rendered
    [config] = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("foresight-config")]
    (tmp_path / "f.toml").write_text(config["data"]["foresight.toml"])
    for name, value in secret_env(objects).items():
        monkeypatch.setenv(name, value)
    s = load_settings(tmp_path / "f.toml")
    assert "127.0.0.1" not in s.registry_endpoint  # leadership of adapt and autoscale lives in the cluster's etcd
    for name in ("foresight-controllers", "foresight-autoscaler"):
        container = by_kind(objects, "Deployment")[name]["spec"]["template"]["spec"]["containers"][0]
        assert container["securityContext"]["readOnlyRootFilesystem"]
        mounts = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
        assert str(s.state) in mounts, f"{name}: the decision spool under {s.state} is not writable"


def test_every_file_the_settings_name_is_mounted_where_they_are_read(
        rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """kafka.ssl_cafile, clickhouse.ca_certs, keda.tls_*: each pod reading foresight.toml mounts them."""
    import re

    _, objects = rendered
    [config] = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("foresight-config")]
    files = set(re.findall(r'"(/etc/[^"]+)"', config["data"]["foresight.toml"]))
    missing = []
    for where, spec in pod_specs(objects):
        for container in spec["containers"]:
            if not any(e["name"] == "FORESIGHT_CONFIG" for e in container.get("env", [])):
                continue
            mounts = {m["mountPath"].rstrip("/") for m in container.get("volumeMounts", [])}
            missing += [f"{where} {container['name']}: {f}" for f in files
                        if not any(f.startswith(m + "/") for m in mounts)]
    assert missing == []


def settings_of(objects: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    [config] = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("foresight-config")]
    (tmp_path / "f.toml").write_text(config["data"]["foresight.toml"])
    for name, value in secret_env(objects).items():
        monkeypatch.setenv(name, value)
    return load_settings(tmp_path / "f.toml")


def test_the_registry_endpoint_is_the_etcd_the_manifests_run(rendered: tuple[str, list[dict[str, Any]]],
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, objects = rendered
    endpoint = urlsplit(settings_of(objects, tmp_path, monkeypatch).registry_endpoint)
    service = by_kind(objects, "Service").get(str(endpoint.hostname))
    assert service is not None, f"no Service {endpoint.hostname} for registry.endpoint {endpoint.geturl()}"
    [port] = [p for p in service["spec"]["ports"] if p["port"] == endpoint.port]
    [etcd] = [s for s in by_kind(objects, "StatefulSet").values()
              if service["spec"]["selector"].items() <= s["spec"]["template"]["metadata"]["labels"].items()]
    assert etcd["spec"]["replicas"] == 1  # one member: its --initial-cluster names only itself
    container = etcd["spec"]["template"]["spec"]["containers"][0]
    assert port["targetPort"] in {p["name"] for p in container["ports"]}
    assert f"--advertise-client-urls={endpoint.geturl()}" in container["args"]
    data = {m["mountPath"] for m in container["volumeMounts"]}
    assert any(a.startswith("--data-dir=") and a.split("=", 1)[1].startswith(tuple(data)) for a in container["args"])
    assert {c["metadata"]["name"] for c in etcd["spec"]["volumeClaimTemplates"]} == \
        {m["name"] for m in container["volumeMounts"]}


def test_adapt_reaches_haproxys_runtime_api_over_the_network(rendered: tuple[str, list[dict[str, Any]]],
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, objects = rendered
    s = settings_of(objects, tmp_path, monkeypatch)
    assert isinstance(s.haproxy_runtime, tuple), "adapt would look for a local HAProxy socket"
    host, _ = s.haproxy_runtime
    assert host not in {"127.0.0.1", "localhost", "::1"}
    adapt = by_kind(objects, "Deployment")["foresight-controllers"]["spec"]["template"]["spec"]["containers"][0]
    assert adapt["args"] == ["adapt"]
