"""The deployment files, checked against the hub itself (Docker cannot build or
run them here; these read them):

- every Kubernetes manifest and the compose file parse; kustomization.yaml lists
  every manifest but the Secret template;
- each config the files ship (the ConfigMap's hub.toml, the compose hubs' and the
  image's) loads with the hub's own config loader, given the environment the
  files give it;
- ports, probe paths, the image name, the environment variable names and the
  graceful-stop budget agree with what the hub serves and reads;
- the compose file starts and initialises a three-member replica set and puts
  Caddy in front of both hubs; the image is multi-stage, non-root, with a
  HEALTHCHECK on /healthz, STOPSIGNAL, labels and a /data volume.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

import channels  # noqa: F401  (the channel registry, as `hub serve` has it)
from hub.app import build_app
from hub.config import Settings, load_settings
from hub.server import stop_budget

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
IMAGE = "omnichannel-hub"


def _stop_budget(settings: Settings) -> float:
    """The most a graceful stop takes (hub.server cuts it off there)."""
    return stop_budget(settings.server)


def _env_read_by_the_hub() -> set[str]:
    """The environment variables the hub's own code reads by name."""
    names: set[str] = set()
    pattern = re.compile(r"""environ(?:\.get\(|\[)\s*["']([A-Z0-9_]+)["']""")
    for path in (ROOT / "hub").rglob("*.py"):
        names.update(pattern.findall(path.read_text()))
    return names


def _toml_vars(text: str) -> set[str]:
    """The ${VAR}s a config reads, outside comments."""
    lines = (line.split("#", 1)[0] for line in text.splitlines())
    return set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", "\n".join(lines)))


def _load(text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str]):
    for name in _toml_vars(text):
        monkeypatch.setenv(name, env.get(name, f"value-of-{name.lower()}"))
    path = tmp_path / "hub.toml"
    path.write_text(text)
    return load_settings(path)


def _manifests() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc, f"{path.name}: an empty document"
            if path.name == "kustomization.yaml":
                found["Kustomization"] = doc
                continue
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), path.name
            found[doc["kind"]] = doc | {"_file": path.name}
    return found


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    return _manifests()


def test_every_manifest_parses_and_kustomize_lists_all_but_the_secret_template(k8s) -> None:
    kinds = {"ConfigMap", "Secret", "Deployment", "Service", "Ingress", "PodDisruptionBudget"}
    assert kinds <= k8s.keys()
    resources = set(k8s["Kustomization"]["resources"])
    files = {doc["_file"] for kind, doc in k8s.items() if kind != "Kustomization"}
    assert resources == files - {"secret.example.yaml"}
    assert all((K8S / name).is_file() for name in resources)
    assert [i["name"] for i in k8s["Kustomization"]["images"]] == [IMAGE]


def test_the_configmaps_hub_toml_loads_and_the_deployment_agrees_with_it(
    k8s, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_map = k8s["ConfigMap"]["data"]
    settings = _load(config_map["hub.toml"], tmp_path, monkeypatch, config_map)
    pod = k8s["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].split(":")[0] == IMAGE
    (port,) = container["ports"]
    assert port["containerPort"] == settings.server.port
    assert settings.server.host == "0.0.0.0"  # noqa: S104 (in a pod: reached by the Service)
    assert settings.public_url == config_map["HUB_PUBLIC_URL"]

    # The probes ask for routes the hub serves, on its port.
    app = build_app(settings)
    served = {r.resource.canonical for r in app.router.routes() if r.method == "GET"}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] in served
        assert get["port"] in (port["name"], port["containerPort"])

    # HUB_CONFIG names the mounted ConfigMap key.
    env = {e["name"]: e for e in container["env"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    (config_volume,) = [v for v in pod["volumes"] if "configMap" in v]
    assert config_volume["configMap"]["name"] == k8s["ConfigMap"]["metadata"]["name"]
    (item,) = config_volume["configMap"]["items"]
    assert env["HUB_CONFIG"]["value"] == f"{mounts[config_volume['name']]}/{item['path']}"
    assert item["key"] == "hub.toml"

    # Every variable the config reads is given, and every one given is read.
    secret_keys = set(k8s["Secret"]["stringData"])
    assert container["envFrom"] == [{"secretRef": {"name": k8s["Secret"]["metadata"]["name"]}}]
    given = set(env) | secret_keys
    reads = _env_read_by_the_hub()
    assert {"HUB_CONFIG", "MONGODB_URI", "HUB_ADMIN_EMAIL", "HUB_ADMIN_PASSWORD"} <= reads
    assert _toml_vars(config_map["hub.toml"]) <= given
    assert given <= reads | _toml_vars(config_map["hub.toml"]), given - reads
    assert "MONGODB_URI" in secret_keys

    # The graceful stop fits in the grace period, after the preStop pause.
    pause = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pause[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] >= int(pause[1]) + _stop_budget(settings)


def test_the_deployment_is_spread_limited_and_unprivileged(k8s) -> None:
    deployment = k8s["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]["spec"]
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    (container,) = pod["containers"]
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == _dockerfile_user()
    pdb = k8s["PodDisruptionBudget"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] == 1


def test_service_and_ingress_reach_the_hubs_port_with_websockets_and_body_limits(k8s) -> None:
    container = k8s["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    labels = k8s["Deployment"]["spec"]["template"]["metadata"]["labels"]
    service = k8s["Service"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    (target,) = container["ports"]
    assert port["targetPort"] in (target["name"], target["containerPort"])
    ingress = k8s["Ingress"]
    (rule,) = ingress["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    backend = path["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"] in ({"name": port["name"]}, {"number": port["port"]})
    assert path["path"] == "/"  # /api/ws, webhooks, API and inbox alike
    notes = ingress["metadata"]["annotations"]
    # An agent's WebSocket stays open longer than the proxy's default 60 s.
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(notes["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    assert notes["nginx.ingress.kubernetes.io/proxy-body-size"] == "16m"
    assert rule["host"] in ingress["spec"]["tls"][0]["hosts"]
    public = k8s["ConfigMap"]["data"]["HUB_PUBLIC_URL"]
    assert public == f"https://{rule['host']}"


# -- compose --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _env_file() -> dict[str, str]:
    values = {}
    for line in (DEPLOY / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def test_compose_starts_and_initialises_a_three_member_replica_set(compose) -> None:
    services = compose["services"]
    mongos = sorted(name for name, s in services.items() if "--replSet" in s.get("command", []))
    assert mongos == ["mongo1", "mongo2", "mongo3"]
    for name in mongos:
        command = services[name]["command"]
        assert command[command.index("--replSet") + 1] == "rs0"
        assert services[name]["image"].startswith("mongo:7")
        assert services[name]["volumes"][0].endswith(":/data/db")
    init = services["mongo-init"]
    script = init["command"][-1]
    assert 'rs.initiate({_id: "rs0"' in script
    assert sorted(re.findall(r'host: "(mongo\d):27017"', script)) == mongos
    assert set(init["depends_on"]) == set(mongos)
    assert all(c["condition"] == "service_healthy" for c in init["depends_on"].values())


def test_compose_hubs_load_their_config_and_reach_the_replica_set(
    compose, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    services = compose["services"]
    hubs = sorted(name for name, s in services.items() if s.get("image", "").startswith(IMAGE))
    assert hubs == ["hub1", "hub2"]
    reads = _env_read_by_the_hub()
    for name in hubs:
        hub = services[name]
        assert hub["build"]["dockerfile"] == "deploy/Dockerfile"
        assert hub["depends_on"]["mongo-init"]["condition"] == "service_completed_successfully"
        assert "ports" not in hub, "the hubs are reached through the proxy only"
        env = hub["environment"]
        uri = env["MONGODB_URI"]
        assert "replicaSet=rs0" in uri
        assert sorted(re.findall(r"(mongo\d):27017", uri)) == ["mongo1", "mongo2", "mongo3"]
        (mount,) = hub["volumes"]
        source, target, _ = mount.split(":")
        assert target == env["HUB_CONFIG"]
        text = (DEPLOY / source).read_text()
        given = set(env) | set(_env_file())
        assert _toml_vars(text) <= given
        assert set(env) <= reads | _toml_vars(text)
        settings = _load(text, tmp_path, monkeypatch, _env_file())
        assert f"{settings.server.port}" in hub["expose"]
        assert int(hub["stop_grace_period"].rstrip("s")) >= _stop_budget(settings)
        assert hub["env_file"] == [".env"]
        # Caddy's fixed address is the one proxy the hubs believe.
        caddy_ip = services["caddy"]["networks"]["hub"]["ipv4_address"]
        assert settings.server.trusted_proxies == [caddy_ip]
    # Every variable compose needs from the env file is in the example.
    text = (DEPLOY / "compose.yaml").read_text()
    needed = {m for m in re.findall(r"\$\{([A-Z_]+)(?::\?[^}]*)?\}", text)}
    assert needed <= set(_env_file()), needed - set(_env_file())


def test_caddy_fronts_both_hubs_with_websockets_tls_and_a_body_limit(compose) -> None:
    caddy = compose["services"]["caddy"]
    assert caddy["image"].startswith("caddy:2")
    assert {"80:80", "443:443"} <= set(caddy["ports"])
    assert "./Caddyfile:/etc/caddy/Caddyfile:ro" in caddy["volumes"]
    caddyfile = (DEPLOY / "Caddyfile").read_text()
    # The site address is the domain: Caddy's automatic certificates.
    assert caddyfile.splitlines()[3].startswith("{$HUB_DOMAIN")
    assert "HUB_DOMAIN" in caddy["environment"]
    upstreams = re.findall(r"reverse_proxy (?:@\w+ )?(.+?) \{", caddyfile)
    assert upstreams == ["hub1:8080 hub2:8080", "hub1:8080 hub2:8080"]
    assert re.search(r"@websocket \{\s+path /api/ws\s+header Connection \*Upgrade\*", caddyfile)
    assert "health_uri /readyz" in caddyfile
    assert re.search(r"request_body \{\s+max_size 16MB", caddyfile)


# -- the image ------------------------------------------------------------------------


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of deploy/Dockerfile, continuation lines joined."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    steps = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            steps.append((word.upper(), rest.strip()))
    return steps


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for step in _dockerfile():
        if step[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(step)
    return stages


def _dockerfile_user() -> int:
    users = [rest for word, rest in _stages()[-1] if word == "USER"]
    return int(users[-1].split(":")[0])


def test_the_image_is_multi_stage_slim_non_root_and_stops_gracefully(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    build, runtime = _stages()
    assert "AS build" in build[0][1] and "slim" in build[0][1]
    assert any(w == "RUN" and "pip wheel" in r for w, r in build)
    assert "-slim" in runtime[0][1]
    runtime_text = " ".join(r for _, r in runtime)
    assert "from=build" in runtime_text and "--no-index" in runtime_text
    assert not re.search(r"build-essential|gcc|apt-get install", runtime_text)
    assert _dockerfile_user() != 0
    steps = dict(runtime)  # the last of each instruction
    assert steps["STOPSIGNAL"] == "SIGTERM"
    assert "/healthz" in steps["HEALTHCHECK"] and "127.0.0.1:8080" in steps["HEALTHCHECK"]
    assert shlex.split(steps["CMD"].strip("[]").replace(",", " ")) == ["hub", "serve"]
    labels = " ".join(r for w, r in runtime if w == "LABEL")
    for label in ("title", "version", "description", "licenses"):
        assert f"org.opencontainers.image.{label}=" in labels
    assert f'org.opencontainers.image.title="{IMAGE}"' in labels
    # The config baked in loads, serves on the exposed port, keeps the embedded
    # store in the declared volume, and fits its stop in compose's grace.
    assert "deploy/hub.example.toml /etc/hub/hub.toml" in steps["COPY"]
    assert "HUB_CONFIG=/etc/hub/hub.toml" in runtime_text
    text = (DEPLOY / "hub.example.toml").read_text()
    settings = _load(text, tmp_path, monkeypatch, {})
    assert steps["EXPOSE"] == str(settings.server.port)
    assert steps["VOLUME"] == f'["{settings.store.data_dir}"]'
    assert _stop_budget(settings) <= 30  # `docker stop -t 30` in docs/operations.md


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_the_base_with_its_labels_and_image() -> None:
    kubectl = shutil.which("kubectl")
    assert kubectl is not None
    rendered = subprocess.run(  # noqa: S603 (a fixed command on the repository's own files)
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    assert sorted(d["kind"] for d in docs) == sorted(
        ["ConfigMap", "Deployment", "Service", "Ingress", "PodDisruptionBudget"]
    )
    for doc in docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "omnichannel-hub"
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == f"{IMAGE}:latest"
