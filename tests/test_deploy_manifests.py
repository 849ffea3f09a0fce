"""deploy/'s Kustomize manifests read as files (no cluster, no kubectl: CI has neither):
every file a kustomization names exists, and the invariants docs/kubernetes.md promises hold —
the node DaemonSet is privileged, on the host network, system-node-critical, with its state on
host paths; the API probes /healthz; credentials come from the Secret only; only API pods may
reach the node API; the local overlay never pulls. scripts/k8s-smoke applies them for real."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from hutch.cli._main import build_parser

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
SRC = Path(__file__).resolve().parents[1] / "src" / "hutch"
WORKLOADS = {"Deployment", "DaemonSet", "StatefulSet"}
# Every kustomization and what it pulls in: (kustomization dir, listed entry).
KUSTOMIZATION_LISTS = (
    "resources",
    "bases",
    "components",
    "patchesStrategicMerge",
)


def load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomizations() -> list[Path]:
    return sorted(DEPLOY.rglob("kustomization.yaml"))


def referenced(kdir: Path) -> list[Path]:
    """The files and directories a kustomization names, resolved."""
    k = yaml.safe_load((kdir / "kustomization.yaml").read_text())
    out = [kdir / entry for key in KUSTOMIZATION_LISTS for entry in k.get(key) or []]
    out += [kdir / p["path"] for p in k.get("patchesJson6902") or []]
    return out


def resources(kdir: Path) -> list[dict[str, Any]]:
    """The objects of a kustomization's resources and bases, recursively (patches not applied)."""
    k = yaml.safe_load((kdir / "kustomization.yaml").read_text())
    docs: list[dict[str, Any]] = []
    for entry in (k.get("resources") or []) + (k.get("bases") or []):
        target = kdir / entry
        docs += resources(target) if target.is_dir() else load_all(target)
    return docs


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


@pytest.fixture(scope="module")
def full() -> list[dict[str, Any]]:
    """What `kubectl apply -k deploy/` creates."""
    return resources(DEPLOY)


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env") or []}


def test_every_kustomization_names_files_that_exist() -> None:
    ks = kustomizations()
    assert {k.parent.relative_to(DEPLOY).as_posix() for k in ks} >= {
        ".",
        "base",
        "postgres",
        "gvisor",
        "overlays/local",
        "overlays/external-db",
    }
    for k in ks:
        for ref in referenced(k.parent):
            assert ref.exists(), f"{k.relative_to(DEPLOY)} names {ref}, which does not exist"
            if ref.is_dir():
                assert (ref / "kustomization.yaml").is_file(), f"{ref} is no kustomization"


def test_kustomize_v2_compatible() -> None:
    # The smoke test renders with kubectl 1.20's built-in kustomize (v2.0): directories only
    # under `bases:`, patches only as files.
    for k in kustomizations():
        spec = yaml.safe_load(k.read_text())
        for entry in spec.get("resources") or []:
            assert (k.parent / entry).is_file(), f"{k}: directory {entry} under resources:"
        assert "patches" not in spec, f"{k}: inline `patches:` needs kustomize >= 3"


def test_node_daemonset_runs_on_the_host(full: list[dict[str, Any]]) -> None:
    ds = find(full, "DaemonSet", "hutch-node")
    spec = pod_spec(ds)
    assert spec["hostNetwork"] is True
    assert spec["hostPID"] is True  # sandboxes outlive a restart of the daemon's container
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    (node,) = spec["containers"]
    assert node["securityContext"]["privileged"] is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m for m in node["volumeMounts"]}
    for name in ("home", "images", "cgroup", "dev"):
        assert "hostPath" in volumes[name], f"{name} must be a host path"
    assert mounts["home"]["mountPath"] == "/var/lib/hutch-node"
    assert mounts["home"]["mountPropagation"] == "Bidirectional"
    assert mounts["images"]["mountPath"] == env_of(node)["HUTCH_IMAGES_DIR"]["value"]
    # a slow start (the image store's sweep, the storage pool) is not a liveness failure
    assert node["startupProbe"]["tcpSocket"]["port"] == 7171
    assert node["startupProbe"]["failureThreshold"] * node["startupProbe"]["periodSeconds"] >= 300
    # the node API listens at the host's address, named after the Kubernetes node
    assert env_of(node)["HUTCH_NODE_HOST"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
    assert env_of(node)["HUTCH_NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def test_api_probes_healthz_and_serves_the_service(full: list[dict[str, Any]]) -> None:
    api = find(full, "Deployment", "hutch-api")
    assert api["spec"]["replicas"] >= 2
    (c,) = pod_spec(api)["containers"]
    port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        get = c[probe]["httpGet"]
        assert get["path"] == "/healthz"
        assert get["port"] in port_names
    args = c["command"]
    assert str(port_names["http"]) == args[args.index("--port") + 1]
    # the API resolves image names in the host's image store before it places a sandbox
    images = {m["name"]: m for m in c["volumeMounts"]}["images"]
    assert images["mountPath"] == env_of(c)["HUTCH_IMAGES_DIR"]["value"]
    svc = find(full, "Service", "hutch-api")
    assert svc["spec"]["selector"] == api["spec"]["selector"]["matchLabels"]
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["http"]


def test_credentials_come_from_the_secret_only(full: list[dict[str, Any]]) -> None:
    assert not [d for d in full if d["kind"] == "Secret"], "no secret values in the repository"
    for kind, name in (("Deployment", "hutch-api"), ("DaemonSet", "hutch-node")):
        (c,) = pod_spec(find(full, kind, name))["containers"]
        env = env_of(c)
        wanted = ["HUTCH_DATABASE_URL", "HUTCH_NODE_TOKEN"] + (
            ["HUTCH_API_KEY"] if kind == "Deployment" else []
        )
        for var in wanted:
            ref = env[var]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "hutch-secrets", f"{name}: {var} not from hutch-secrets"
    config = find(full, "ConfigMap", "hutch-config")["data"]
    assert not [k for k in config if re.search("TOKEN|KEY|PASSWORD|DATABASE_URL", k)]
    # every replica opens the secrets the others sealed: one key file from the Secret
    api = pod_spec(find(full, "Deployment", "hutch-api"))
    key_volume = {v["name"]: v for v in api["volumes"]}["secrets-key"]
    assert key_volume["secret"]["secretName"] == "hutch-secrets"
    assert key_volume["secret"]["defaultMode"] & 0o077 == 0


def test_only_api_pods_reach_the_node_api(full: list[dict[str, Any]]) -> None:
    policies = [d for d in full if d["kind"] == "NetworkPolicy"]
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and "ingress" not in p["spec"]]
    assert deny, "a default-deny ingress policy for the namespace"
    node_labels = find(full, "DaemonSet", "hutch-node")["spec"]["selector"]["matchLabels"]
    api_labels = find(full, "Deployment", "hutch-api")["spec"]["selector"]["matchLabels"]
    (node_policy,) = [
        p for p in policies if p["spec"]["podSelector"].get("matchLabels") == node_labels
    ]
    rules = node_policy["spec"]["ingress"]
    assert {port["port"] for rule in rules for port in rule["ports"]} == {7171, 7172}
    for rule in rules:
        assert rule["from"] == [{"podSelector": {"matchLabels": api_labels}}]


def test_commands_parse_with_the_real_cli(full: list[dict[str, Any]]) -> None:
    # A flag the CLI does not know would crash-loop the pods: parse each with hutch's parser.
    parser = build_parser()
    for d in full:
        if d["kind"] not in WORKLOADS:
            continue
        for c in pod_spec(d)["containers"]:
            cmd = c["command"]
            if cmd[0] != "/opt/hutch/venv/bin/hutch":
                continue
            args = parser.parse_args(cmd[1:])
            assert args.command in ("api", "node"), shlex.join(cmd)


def test_every_hutch_setting_is_one_hutch_reads(full: list[dict[str, Any]]) -> None:
    # A misspelt HUTCH_ variable is silently ignored: each must occur in the source.
    source = "\n".join(p.read_text() for p in SRC.rglob("*.py"))
    names = set(find(full, "ConfigMap", "hutch-config")["data"])
    for d in full:
        if d["kind"] in WORKLOADS:
            for c in pod_spec(d)["containers"]:
                names |= {n for n in env_of(c) if n.startswith("HUTCH_")}
    assert names
    for name in sorted(names):
        assert f'"{name}"' in source, f"{name} is read nowhere in src/hutch"


def test_local_overlay_never_pulls_and_keeps_state_on_host_paths() -> None:
    local = DEPLOY / "overlays" / "local"
    spec = yaml.safe_load((local / "kustomization.yaml").read_text())
    assert spec["images"] == [{"name": "localhost/hutch", "newTag": "dev"}]
    patched = {(d["kind"], d["metadata"]["name"]): d for d in load_all(local / "pull-never.yaml")}
    workloads = [d for d in resources(local) if d["kind"] in WORKLOADS]
    assert len(workloads) == 3
    for w in workloads:
        patch = patched[(w["kind"], w["metadata"]["name"])]
        names = {c["name"]: c for c in pod_spec(patch)["containers"]}
        for c in pod_spec(w)["containers"]:
            assert c["image"].startswith("localhost/hutch")
            assert names[c["name"]]["imagePullPolicy"] == "Never", w["metadata"]["name"]
    ops = yaml.safe_load((local / "postgres-hostpath.yaml").read_text())
    assert {"op": "remove", "path": "/spec/volumeClaimTemplates"} in ops


def test_gvisor_runtime_class_uses_runsc() -> None:
    (rc,) = resources(DEPLOY / "gvisor")
    assert rc["kind"] == "RuntimeClass"
    assert (rc["metadata"]["name"], rc["handler"]) == ("gvisor", "runsc")
