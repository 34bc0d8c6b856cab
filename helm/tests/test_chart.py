"""Tests of the Helm chart helm/referral-attribution, with no helm binary and no cluster.

* helm-python-sdk embeds Helm v4's Go library: `lint --strict` and an offline render, the
  same template engine and values.schema.json validation `helm install` uses.
* kubernetes-validate checks every rendered manifest against the Kubernetes OpenAPI
  schemas (strict: unknown fields are errors).
* Then the fields that matter are asserted one by one.

Run by scripts/test-helm.sh (which installs the pinned packages into the test virtualenv).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

HELM_DIR = Path(__file__).resolve().parent.parent
CHART = HELM_DIR / "referral-attribution"
VALUES_DIR = HELM_DIR / "tests" / "values"
VALUES_FILES = sorted(path.name for path in VALUES_DIR.glob("*.yaml"))

RELEASE = "rel"
NAMESPACE = "referrals"
FULLNAME = f"{RELEASE}-referral-attribution"

# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion >=1.30) that the
# validator ships schemas for, and the newest it ships.
KUBE_VERSIONS = ["1.31.0", kubernetes_validate.utils.latest_version()]

# Kinds defined by CRDs, for which kubernetes-validate has no schema: ServiceMonitor and
# PrometheusRule (Prometheus Operator), HTTPRoute (Gateway API). Their fields are asserted
# by the tests below instead.
CRD_KINDS = {
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
    "HTTPRoute": "gateway.networking.k8s.io/v1",
}

CLICK_PATHS = {
    "/api/v1/referral-attributions",
    "/api/v1/referral-attributions/api/v1/referral-attributions",
}

# The tracking pixel (/p/{code}.gif) and the redirect link (/r/{code}), served by ingest.
LINK_PREFIXES = {"/p/", "/r/"}

COMPONENTS = ("ingest", "api", "aggregator", "deliverer")
# Components with a Service for /metrics only (no traffic, no Ingress peers).
METRICS_ONLY = ("aggregator", "deliverer")

# The deliverer's settings: value key under deliverer.webhooks -> its variable.
WEBHOOK_ENV = {
    "allowPrivate": "REFERRAL_WEBHOOK_ALLOW_PRIVATE",
    "timeout": "REFERRAL_WEBHOOK_TIMEOUT",
    "retryFor": "REFERRAL_WEBHOOK_RETRY_FOR",
    "disableAfter": "REFERRAL_WEBHOOK_DISABLE_AFTER",
    "retryBase": "REFERRAL_WEBHOOK_RETRY_BASE",
    "poll": "REFERRAL_WEBHOOK_POLL",
    "group": "REFERRAL_WEBHOOK_GROUP",
    "sessionTimeout": "REFERRAL_WEBHOOK_SESSION_TIMEOUT",
}

# The chart refuses to render an API without tokens (unless auth.allowAnonymous); tests of
# other things give it this one, as its digest, when their values say nothing about auth.
TEST_TOKEN_DIGEST = hashlib.sha256(b"chart-test-admin-token-0123456789").hexdigest()
TEST_TOKENS = f"sha256:{TEST_TOKEN_DIGEST}=admin"


# --------------------------------------------------------------------------- helpers


def load_values(name: str) -> dict[str, Any]:
    return yaml.safe_load((VALUES_DIR / name).read_text()) or {}


def with_auth(values: dict[str, Any]) -> dict[str, Any]:
    """`values` with TEST_TOKENS when they set neither auth nor existingSecret."""
    if "auth" in values or "existingSecret" in values:
        return values
    return {**values, "auth": {"apiTokens": TEST_TOKENS}}


def render_raw(values: dict[str, Any], *, add_auth: bool = True) -> dict[str, str]:
    if add_auth:
        values = with_auth(values)
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rendered object (NOTES.txt excluded), hooks included."""
    objects = []
    for path, text in sorted(render_raw(values).items()):
        if path.endswith("NOTES.txt"):
            continue
        for document in yaml.safe_load_all(text):
            if document:
                document.setdefault("metadata", {})
                document["metadata"].setdefault("annotations", {})
                document["_template"] = path
                objects.append(document)
    return objects


def merged(values: dict[str, Any]) -> dict[str, Any]:
    with helm.Chart.load(CHART) as chart:
        return chart.merge_values(with_auth(values))


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def deployment(objects: list[dict[str, Any]], component: str) -> dict[str, Any]:
    return one(objects, "Deployment", f"{FULLNAME}-{component}")


def pod_specs(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(name, pod spec) of every workload: the Deployments and the migration Job."""
    return [
        (f"{o['kind']}/{o['metadata']['name']}", o["spec"]["template"]["spec"])
        for o in objects
        if o["kind"] in ("Deployment", "Job")
    ]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def without_private(document: dict[str, Any]) -> dict[str, Any]:
    clean = copy.deepcopy(document)
    clean.pop("_template", None)
    if not clean["metadata"].get("annotations"):
        clean["metadata"].pop("annotations", None)
    return clean


@pytest.fixture(scope="module", params=VALUES_FILES)
def case(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    values = load_values(request.param)
    return request.param, merged(values), render(values)


# --------------------------------------------------------------------------- lint, schema


def test_values_files_exist() -> None:
    assert {"defaults.yaml", "production.yaml", "minimal.yaml"} <= set(VALUES_FILES)


@pytest.mark.parametrize("values_file", VALUES_FILES)
def test_lint_strict(values_file: str) -> None:
    report = helm.lint(
        CHART, with_auth(load_values(values_file)), strict=True, namespace=NAMESPACE, kube_version="v1.31.0"
    )
    # Severity 1 is INFO ("icon is recommended"); WARNING (2) and ERROR (3) fail --strict.
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], json.dumps(report, indent=2)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"unknown": 1}, "additional properties 'unknown' not allowed"),
        ({"kafka": {"partitions": "6"}}, "/kafka/partitions"),
        ({"kafka": {"partitions": 0}}, "/kafka/partitions"),
        ({"kafka": {"brokers": ""}}, "/kafka/brokers"),
        ({"ingest": {"autoscaling": {"targetCPU": 50}}}, "targetCPU"),
        ({"clickhouse": {"url": "clickhouse:8123"}}, "/clickhouse/url"),
        ({"clickhouse": {"cluster": "referrals", "insertQuorum": -1}}, "/clickhouse/insertQuorum"),
        ({"clickhouse": {"cluster": "referrals", "insertQuorum": "2"}}, "/clickhouse/insertQuorum"),
        ({"clickhouse": {"cluster": "referrals", "insertQuorum": 1.5}}, "/clickhouse/insertQuorum"),
        # The binaries take 1..64 of [A-Za-z0-9_] (an identifier needing no quoting).
        ({"clickhouse": {"cluster": "my-cluster"}}, "/clickhouse/cluster"),
        ({"clickhouse": {"cluster": "c" * 65}}, "/clickhouse/cluster"),
        ({"clickhouse": {"cluster": 1}}, "/clickhouse/cluster"),
        ({"config": {"batch": {"maxWait": 250}}}, "/config/batch/maxWait"),
        ({"deliverer": {"replicas": -1}}, "/deliverer/replicas"),
        ({"deliverer": {"webhooks": {"group": ""}}}, "/deliverer/webhooks/group"),
        ({"deliverer": {"webhooks": {"sessionTimeout": 10}}}, "/deliverer/webhooks/sessionTimeout"),
        ({"deliverer": {"webhooks": {"timeout": 10}}}, "/deliverer/webhooks/timeout"),
        ({"deliverer": {"webhooks": {"allowPrivate": "yes"}}}, "/deliverer/webhooks/allowPrivate"),
    ],
)
def test_schema_refuses_bad_values(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError) as refused:
        render_raw(values)
    assert message in str(refused.value)


# --------------------------------------------------------------------------- validity


def test_every_manifest_is_valid_kubernetes(case) -> None:
    values_file, _, objects = case
    assert objects
    for document in objects:
        kind = document["kind"]
        if kind in CRD_KINDS:
            # No schema for CRDs in kubernetes-validate: checked field by field below.
            assert document["apiVersion"] == CRD_KINDS[kind]
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(without_private(document), version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(
                    f"{values_file}: {kind}/{document['metadata']['name']} "
                    f"({document['_template']}) is invalid on Kubernetes {version}: "
                    f"{error.message} at {list(error.path)}"
                )


def test_names_are_dns_labels_and_namespaced(case) -> None:
    _, _, objects = case
    for document in objects:
        name = document["metadata"]["name"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", name), name
        assert document["metadata"]["namespace"] == NAMESPACE


def test_expected_objects(case) -> None:
    values_file, values, objects = case
    for component in COMPONENTS:
        deployment(objects, component)
        one(objects, "Service", f"{FULLNAME}-{component}")
    one(objects, "ConfigMap", FULLNAME)
    assert (len(of_kind(objects, "Job")) == 1) == values["migration"]["enabled"]
    assert bool(of_kind(objects, "Ingress")) == values["ingress"]["enabled"]
    assert bool(of_kind(objects, "HTTPRoute")) == values["httpRoute"]["enabled"]
    assert bool(of_kind(objects, "ServiceMonitor")) == values["serviceMonitor"]["enabled"]
    assert bool(of_kind(objects, "PrometheusRule")) == values["prometheusRule"]["enabled"]
    assert bool(of_kind(objects, "ServiceAccount")) == values["serviceAccount"]["create"]


# --------------------------------------------------------------------------- pods


def test_probes_on_every_container(case) -> None:
    _, _, objects = case
    for component in COMPONENTS:
        spec = deployment(objects, component)["spec"]["template"]["spec"]
        for container in spec["containers"]:
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert ports == {"http": 8080}, (component, ports)
            for probe, path in (
                ("livenessProbe", "/healthz"),
                ("readinessProbe", "/readyz"),
                ("startupProbe", "/healthz"),
            ):
                get = container[probe]["httpGet"]
                assert get["path"] == path, (component, probe)
                port = ports[get["port"]] if isinstance(get["port"], str) else get["port"]
                assert port == 8080, (component, probe)


def test_security_context_everywhere(case) -> None:
    _, _, objects = case
    workloads = pod_specs(objects)
    assert len(workloads) >= 3
    for name, spec in workloads:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["runAsUser"] == 10001, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec["automountServiceAccountToken"] is False, name
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert "emptyDir" in volumes["tmp"], name
        for container in spec["containers"]:
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True, name
            assert context["runAsUser"] == 10001, name
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"] == {"drop": ["ALL"]}, name
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, name
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts.get("/tmp") == "tmp", name


def test_resources_everywhere(case) -> None:
    _, _, objects = case
    for name, spec in pod_specs(objects):
        for container in spec["containers"]:
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), (name, bound)


def test_image_and_commands(case) -> None:
    _, values, objects = case
    tag = values["image"]["tag"] or yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    image = f"{values['image']['repository']}:{tag}"
    for name, spec in pod_specs(objects):
        for container in spec["containers"]:
            assert container["image"] == image, name
    command = lambda component: deployment(objects, component)["spec"]["template"]["spec"][
        "containers"
    ][0]["command"]
    assert command("ingest") == ["/usr/local/bin/referral-ingest"]
    assert command("api") == ["/usr/local/bin/referral-api"]
    expected = ["/usr/local/bin/referral-aggregator", "run"]
    if values["migration"]["enabled"]:
        expected.append("--no-migrate")
    assert command("aggregator") == expected
    # The deliverer never migrates (no --no-migrate to give: `deliver` has no migrations).
    assert command("deliverer") == ["/usr/local/bin/referral-aggregator", "deliver"]


def test_default_image_points_at_the_dockerfile_image() -> None:
    values = merged({})
    assert values["image"]["repository"] == "ghcr.io/example/referral-attribution"
    assert values["image"]["tag"] == ""
    dockerfile = (HELM_DIR.parent / "Dockerfile").read_text()
    for binary in ("referral-ingest", "referral-aggregator", "referral-api"):
        assert binary in dockerfile
    assert re.search(r"^USER 10001", dockerfile, re.M)
    assert re.search(r"^EXPOSE 8080", dockerfile, re.M)


# --------------------------------------------------------------------------- config, secrets


def test_configmap_and_checksums(case) -> None:
    _, values, objects = case
    data = one(objects, "ConfigMap", FULLNAME)["data"]
    assert data["REFERRAL_LISTEN"] == "0.0.0.0:8080"
    assert data["REFERRAL_KAFKA_BROKERS"] == values["kafka"]["brokers"]
    assert data["REFERRAL_KAFKA_TOPIC"] == values["kafka"]["topic"]
    assert data["REFERRAL_KAFKA_CODES_TOPIC"] == values["kafka"]["codesTopic"]
    assert data["REFERRAL_CLICKHOUSE_URL"] == values["clickhouse"]["url"]
    assert data["REFERRAL_CLICKHOUSE_DATABASE"] == values["clickhouse"]["database"]
    assert data["REFERRAL_CLICKHOUSE_USER"] == values["clickhouse"]["user"]
    # Set only when set: an empty REFERRAL_CLICKHOUSE_CLUSTER would count as a cluster.
    cluster = values["clickhouse"]["cluster"]
    assert data.get("REFERRAL_CLICKHOUSE_CLUSTER") == (cluster or None)
    quorum = values["clickhouse"]["insertQuorum"]
    assert data.get("REFERRAL_CLICKHOUSE_INSERT_QUORUM") == (str(quorum) if quorum else None)
    assert data["REFERRAL_ATTRIBUTION_WINDOW"] == values["config"]["attributionWindow"]
    assert data["REFERRAL_DEDUP_WINDOW"] == values["config"]["dedupWindow"]
    assert data["REFERRAL_TRUSTED_PROXIES"] == values["config"]["trustedProxies"]
    assert data.get("REFERRAL_FALLBACK_URL", "") == values["config"]["fallbackUrl"]
    assert data["REFERRAL_BATCH_MAX_ROWS"] == str(values["config"]["batch"]["maxRows"])
    assert data["REFERRAL_BATCH_MAX_WAIT"] == values["config"]["batch"]["maxWait"]
    for secret_name in ("REFERRAL_API_TOKENS", "REFERRAL_CLICKHOUSE_PASSWORD"):
        assert secret_name not in data
    assert all(isinstance(v, str) for v in data.values())
    for component in COMPONENTS:
        template = deployment(objects, component)["spec"]["template"]
        container = template["spec"]["containers"][0]
        assert {"configMapRef": {"name": FULLNAME}} in container["envFrom"]
        annotations = template["metadata"]["annotations"]
        assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/config"])
        assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/secret"])


def test_config_change_rolls_the_pods() -> None:
    def checksums(values):
        template = deployment(render(values), "api")["spec"]["template"]
        return template["metadata"]["annotations"]

    base = checksums({})
    assert checksums({})["checksum/config"] == base["checksum/config"]
    assert checksums({"config": {"attributionWindow": "30days"}})["checksum/config"] != base[
        "checksum/config"
    ]
    assert checksums({"auth": {"apiTokens": "x" * 20 + "=read"}})["checksum/secret"] != base[
        "checksum/secret"
    ]


def _secret_ref(container: dict[str, Any], name: str) -> dict[str, str] | None:
    entry = env_of(container).get(name)
    if entry is None:
        return None
    assert "value" not in entry, f"{name} must come from a Secret, not a literal"
    return entry["valueFrom"]["secretKeyRef"]


def test_secret_references(case) -> None:
    values_file, values, objects = case
    existing = values["existingSecret"]
    secret_name = existing or FULLNAME
    keys = values["secretKeys"]
    has_password = bool(existing or values["clickhouse"]["password"])

    secrets = {s["metadata"]["name"]: s for s in of_kind(objects, "Secret")}
    if existing:
        assert FULLNAME not in secrets, "no chart Secret with existingSecret"
    else:
        data = secrets[FULLNAME]["stringData"]
        assert data[keys["apiTokens"]] == values["auth"]["apiTokens"]
        assert data[keys["clickhousePassword"]] == values["clickhouse"]["password"]

    containers = {
        c: deployment(objects, c)["spec"]["template"]["spec"]["containers"][0] for c in COMPONENTS
    }
    # The API reads the tokens; the API, the aggregator and the deliverer read ClickHouse;
    # the edge reads neither.
    assert _secret_ref(containers["api"], "REFERRAL_API_TOKENS") == {
        "name": secret_name,
        "key": keys["apiTokens"],
    }
    for component in ("api", "aggregator", "deliverer"):
        ref = _secret_ref(containers[component], "REFERRAL_CLICKHOUSE_PASSWORD")
        if has_password:
            assert ref == {"name": secret_name, "key": keys["clickhousePassword"]}, component
        else:
            assert ref is None, component
    assert _secret_ref(containers["aggregator"], "REFERRAL_API_TOKENS") is None
    assert _secret_ref(containers["deliverer"], "REFERRAL_API_TOKENS") is None
    # The edge reads no secret but the Kafka SASL password (asserted elsewhere).
    assert "env" not in containers["ingest"] or not any(
        "valueFrom" in e and e["name"] != "REFERRAL_KAFKA_SASL_PASSWORD"
        for e in containers["ingest"]["env"]
    )

    for job in of_kind(objects, "Job"):
        container = job["spec"]["template"]["spec"]["containers"][0]
        ref = _secret_ref(container, "REFERRAL_CLICKHOUSE_PASSWORD")
        if not has_password:
            assert ref is None
        elif existing:
            assert ref == {"name": existing, "key": keys["clickhousePassword"]}
        else:
            # The release's Secret does not exist yet when a pre-install hook runs.
            hook_secret = secrets[f"{FULLNAME}-migrate"]
            assert ref == {"name": f"{FULLNAME}-migrate", "key": keys["clickhousePassword"]}
            annotations = hook_secret["metadata"]["annotations"]
            assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
            assert int(annotations["helm.sh/hook-weight"]) < int(
                job["metadata"]["annotations"]["helm.sh/hook-weight"]
            )
            assert hook_secret["stringData"][keys["clickhousePassword"]] == values["clickhouse"]["password"]
        assert _secret_ref(container, "REFERRAL_API_TOKENS") is None


def test_an_open_api_is_refused_unless_asked_for() -> None:
    with pytest.raises(helm.HelmRenderError) as refused:
        render_raw({}, add_auth=False)
    message = str(refused.value)
    for hint in ("no API tokens", "auth.apiTokens", "existingSecret", "auth.allowAnonymous: true"):
        assert hint in message, message
    # Tokens, an existingSecret, or an open API on purpose: each renders.
    for values in (
        {"auth": {"apiTokens": TEST_TOKENS}},
        {"existingSecret": "sre-managed"},
        {"auth": {"allowAnonymous": True}},
    ):
        objects = render(values)
        data = one(objects, "ConfigMap", FULLNAME)["data"]
        anonymous = values.get("auth", {}).get("allowAnonymous", False)
        assert data["REFERRAL_ALLOW_ANONYMOUS"] == ("true" if anonymous else "false")


@pytest.mark.parametrize("route", ["ingress", "httpRoute"])
def test_a_proxy_without_trusted_proxies_is_refused_while_limiting_per_ip(route: str) -> None:
    production = load_values("production.yaml")
    exposed = {
        "existingSecret": "sre-managed",
        "ingress": {"enabled": False},
        "httpRoute": {"enabled": False},
        route: production[route],
    }
    with pytest.raises(helm.HelmRenderError) as refused:
        render_raw(exposed)
    message = str(refused.value)
    for hint in ("config.trustedProxies", "config.rateLimit.perIp", "proxy"):
        assert hint in message, message
    # Trusted proxies given, or no per-IP limit: renders. Without trusted proxies every
    # connection comes from the proxy, so the per-client connection cap is off too.
    for config, cap in (({"trustedProxies": "10.0.0.0/8"}, "256"), ({"rateLimit": {"perIp": 0}}, "0")):
        data = one(render({**exposed, "config": config}), "ConfigMap", FULLNAME)["data"]
        assert data["REFERRAL_MAX_CONNECTIONS_PER_CLIENT"] == cap


def test_network_policies_admit_only_the_named_peers(case) -> None:
    _, values, objects = case
    policies = {p["metadata"]["name"]: p for p in of_kind(objects, "NetworkPolicy")}
    if not values["networkPolicy"]["enabled"]:
        assert not policies
        return
    for component in COMPONENTS:
        spec = policies[f"{FULLNAME}-{component}"]["spec"]
        labels = deployment(objects, component)["spec"]["template"]["metadata"]["labels"]
        assert spec["podSelector"]["matchLabels"].items() <= labels.items()
        assert spec["policyTypes"] == ["Ingress"]
        peers = [peer for rule in spec["ingress"] for peer in rule["from"]]
        expected = values["networkPolicy"]["metricsFrom"] + (
            [] if component in METRICS_ONLY else values["networkPolicy"]["ingressFrom"]
        )
        assert sorted(map(json.dumps, peers)) == sorted(map(json.dumps, expected))
        for rule in spec["ingress"]:
            assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]


def test_network_policies_need_the_peers_that_may_reach_the_edge() -> None:
    with pytest.raises(helm.HelmRenderError) as refused:
        render_raw({"networkPolicy": {"enabled": True}})
    assert "networkPolicy.ingressFrom" in str(refused.value)


def test_existing_secret_excludes_inline_secrets() -> None:
    with pytest.raises(helm.HelmRenderError) as refused:
        render_raw({"existingSecret": "sre-managed", "clickhouse": {"password": "p"}})
    assert "existingSecret is set" in str(refused.value)


# --------------------------------------------------------------------------- migration


def test_migration_hook(case) -> None:
    _, values, objects = case
    jobs = of_kind(objects, "Job")
    if not values["migration"]["enabled"]:
        assert not jobs
        return
    (job,) = jobs
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
    assert re.fullmatch(r"-?[0-9]+", annotations["helm.sh/hook-weight"])
    assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"].split(",")
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] == "Never"
    (container,) = spec["containers"]
    assert container["command"] == ["/usr/local/bin/referral-aggregator", "migrate"]
    env = env_of(container)
    assert env["REFERRAL_KAFKA_PARTITIONS"]["value"] == str(values["kafka"]["partitions"])
    assert env["REFERRAL_KAFKA_REPLICATION"]["value"] == str(values["kafka"]["replication"])
    assert env["REFERRAL_KAFKA_BROKERS"]["value"] == values["kafka"]["brokers"]
    assert env["REFERRAL_KAFKA_TOPIC"]["value"] == values["kafka"]["topic"]
    assert env["REFERRAL_KAFKA_CODES_TOPIC"]["value"] == values["kafka"]["codesTopic"]
    assert env["REFERRAL_KAFKA_DEAD_LETTER_TOPIC"]["value"] == values["kafka"]["deadLetterTopic"]
    assert env["REFERRAL_CLICKHOUSE_URL"]["value"] == values["clickhouse"]["url"]
    # A pre-install hook runs before the release's ConfigMap exists: settings are inline.
    assert "envFrom" not in container
    assert spec["serviceAccountName"] != FULLNAME or not values["serviceAccount"]["create"]


# --------------------------------------------------------------------------- webhooks


def test_deliverer_gets_the_webhook_settings_and_the_api_the_same_url_rule(case) -> None:
    _, values, objects = case
    webhooks = values["deliverer"]["webhooks"]
    deliverer = deployment(objects, "deliverer")["spec"]["template"]["spec"]["containers"][0]
    env = env_of(deliverer)
    for key, name in WEBHOOK_ENV.items():
        expected = str(webhooks[key]).lower() if key == "allowPrivate" else webhooks[key]
        assert env[name]["value"] == expected, (name, env[name])
    # ClickHouse settings (and REFERRAL_LISTEN on 0.0.0.0) come from the shared ConfigMap.
    assert {"configMapRef": {"name": FULLNAME}} in deliverer["envFrom"]
    api = env_of(deployment(objects, "api")["spec"]["template"]["spec"]["containers"][0])
    assert api["REFERRAL_WEBHOOK_ALLOW_PRIVATE"] == env["REFERRAL_WEBHOOK_ALLOW_PRIVATE"]
    # Nothing else gets the deliverer's settings.
    for component in ("ingest", "aggregator"):
        container = deployment(objects, component)["spec"]["template"]["spec"]["containers"][0]
        assert not any(name.startswith("REFERRAL_WEBHOOK_") for name in env_of(container))
    assert not any(k.startswith("REFERRAL_WEBHOOK_") for k in one(objects, "ConfigMap", FULLNAME)["data"])


def test_deliverer_settings_and_disabling() -> None:
    settings = {
        "allowPrivate": True,
        "timeout": "5s",
        "retryFor": "1day",
        "disableAfter": "6h",
        "retryBase": "1s",
        "poll": "1s",
        "group": "webhooks-eu",
        "sessionTimeout": "20s",
    }
    objects = render({"deliverer": {"webhooks": settings}})
    env = env_of(deployment(objects, "deliverer")["spec"]["template"]["spec"]["containers"][0])
    assert {name: env[name]["value"] for name in WEBHOOK_ENV.values()} == {
        "REFERRAL_WEBHOOK_ALLOW_PRIVATE": "true",
        "REFERRAL_WEBHOOK_TIMEOUT": "5s",
        "REFERRAL_WEBHOOK_RETRY_FOR": "1day",
        "REFERRAL_WEBHOOK_DISABLE_AFTER": "6h",
        "REFERRAL_WEBHOOK_RETRY_BASE": "1s",
        "REFERRAL_WEBHOOK_POLL": "1s",
        "REFERRAL_WEBHOOK_GROUP": "webhooks-eu",
        "REFERRAL_WEBHOOK_SESSION_TIMEOUT": "20s",
    }
    api = env_of(deployment(objects, "api")["spec"]["template"]["spec"]["containers"][0])
    assert api["REFERRAL_WEBHOOK_ALLOW_PRIVATE"]["value"] == "true"

    production = load_values("production.yaml")
    objects = render({**production, "deliverer": {"enabled": False, "webhooks": {"allowPrivate": True}}})
    name = f"{FULLNAME}-deliverer"
    assert not [o for o in objects if o["metadata"]["name"] == name]
    monitored = [o for o in of_kind(objects, "Service") if o["metadata"]["name"].endswith("-deliverer")]
    assert not monitored
    # The API still checks registrations with the same rule.
    api = env_of(deployment(objects, "api")["spec"]["template"]["spec"]["containers"][0])
    assert api["REFERRAL_WEBHOOK_ALLOW_PRIVATE"]["value"] == "true"


# --------------------------------------------------------------------------- ClickHouse replicas

# Every workload that talks to ClickHouse, as (kind, name suffix): the ones that must get
# the cluster settings. The edge reads Kafka only (it loads the shared ConfigMap too).
CLICKHOUSE_CLIENTS = (
    ("Deployment", "aggregator"),
    ("Job", "migrate"),
    ("Deployment", "deliverer"),
    ("Deployment", "api"),
)
CLUSTER_ENV = ("REFERRAL_CLICKHOUSE_CLUSTER", "REFERRAL_CLICKHOUSE_INSERT_QUORUM")


def effective_env(objects: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, str]:
    """The variables the workload's container starts with: its ConfigMaps (envFrom), then
    its own env (literal values; secret references as "<secret>")."""
    (container,) = one(objects, kind, f"{FULLNAME}-{suffix}")["spec"]["template"]["spec"]["containers"]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert set(source) == {"configMapRef"}, source
        env.update(one(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    for entry in container.get("env", []):
        env[entry["name"]] = entry["value"] if "value" in entry else "<secret>"
    return env


@pytest.mark.parametrize(
    ("clickhouse", "expected"),
    [
        ({"cluster": "referrals"}, {"REFERRAL_CLICKHOUSE_CLUSTER": "referrals"}),
        (
            {"cluster": "referral_replicas_3", "insertQuorum": 3},
            {"REFERRAL_CLICKHOUSE_CLUSTER": "referral_replicas_3", "REFERRAL_CLICKHOUSE_INSERT_QUORUM": "3"},
        ),
        ({"cluster": "referrals", "insertQuorum": 2}, {"REFERRAL_CLICKHOUSE_CLUSTER": "referrals", "REFERRAL_CLICKHOUSE_INSERT_QUORUM": "2"}),
    ],
)
def test_clickhouse_cluster_reaches_every_clickhouse_client(clickhouse, expected) -> None:
    for auth in ({}, {"existingSecret": "sre-managed"}):
        objects = render({**auth, "clickhouse": clickhouse})
        for kind, suffix in CLICKHOUSE_CLIENTS:
            env = effective_env(objects, kind, suffix)
            assert {name: env[name] for name in CLUSTER_ENV if name in env} == expected, (kind, suffix)
            # Next to the URL of the Service over the replicas, as the binaries expect.
            assert env["REFERRAL_CLICKHOUSE_URL"] == "http://clickhouse.clickhouse.svc:8123"
    # A change of cluster rolls the pods.
    annotations = lambda values: deployment(render(values), "aggregator")["spec"]["template"]["metadata"]["annotations"]  # noqa: E731
    assert annotations({"clickhouse": clickhouse})["checksum/config"] != annotations({})["checksum/config"]


@pytest.mark.parametrize(
    "clickhouse",
    [{}, {"cluster": ""}, {"cluster": "", "insertQuorum": 0}],
)
def test_no_cluster_sets_no_cluster_variable(clickhouse) -> None:
    objects = render({"clickhouse": clickhouse})
    assert not set(CLUSTER_ENV) & set(one(objects, "ConfigMap", FULLNAME)["data"])
    for kind, suffix in (*CLICKHOUSE_CLIENTS, ("Deployment", "ingest")):
        env = effective_env(objects, kind, suffix)
        assert not set(CLUSTER_ENV) & set(env), (kind, suffix)
        assert env["REFERRAL_CLICKHOUSE_URL"] == "http://clickhouse.clickhouse.svc:8123"
    notes = render_raw({"clickhouse": clickhouse})["referral-attribution/templates/NOTES.txt"]
    assert "cluster" not in notes


def test_cluster_without_quorum_leaves_the_default_to_the_binaries() -> None:
    objects = render({"clickhouse": {"cluster": "referrals", "insertQuorum": 0}})
    data = one(objects, "ConfigMap", FULLNAME)["data"]
    assert data["REFERRAL_CLICKHOUSE_CLUSTER"] == "referrals"
    assert "REFERRAL_CLICKHOUSE_INSERT_QUORUM" not in data
    notes = render_raw({"clickhouse": {"cluster": "referrals"}})["referral-attribution/templates/NOTES.txt"]
    assert "replicas of cluster referrals (insert quorum 2, the default)" in notes
    notes = render_raw({"clickhouse": {"cluster": "referrals", "insertQuorum": 3}})[
        "referral-attribution/templates/NOTES.txt"
    ]
    assert "replicas of cluster referrals (insert quorum 3)" in notes


def test_insert_quorum_needs_a_cluster() -> None:
    # Every binary refuses --clickhouse-insert-quorum without --clickhouse-cluster: so does
    # the chart, on the migration Job and (without it) on the Deployments.
    for extra in ({}, {"migration": {"enabled": False}}):
        with pytest.raises(helm.HelmRenderError) as refused:
            render_raw({"clickhouse": {"insertQuorum": 2}, **extra})
        message = str(refused.value)
        assert "clickhouse.insertQuorum (2) needs clickhouse.cluster" in message, message


def test_production_values_use_a_replicated_cluster() -> None:
    values = load_values("production.yaml")
    assert values["clickhouse"]["cluster"]
    objects = render(values)
    for kind, suffix in CLICKHOUSE_CLIENTS:
        env = effective_env(objects, kind, suffix)
        assert env["REFERRAL_CLICKHOUSE_CLUSTER"] == values["clickhouse"]["cluster"], (kind, suffix)
        assert env["REFERRAL_CLICKHOUSE_INSERT_QUORUM"] == str(values["clickhouse"]["insertQuorum"])


# --------------------------------------------------------------------------- scaling


def test_aggregator_replicas_bounded_by_partitions() -> None:
    with pytest.raises(helm.HelmRenderError) as refused:
        render_raw({"kafka": {"partitions": 3}, "aggregator": {"replicas": 4}})
    message = str(refused.value)
    assert "aggregator.replicas (4) must not exceed kafka.partitions (3)" in message
    # Equal is fine, and so is the migration Job disabled (the check is on the Deployment too).
    objects = render({"kafka": {"partitions": 3}, "aggregator": {"replicas": 3}})
    assert deployment(objects, "aggregator")["spec"]["replicas"] == 3
    with pytest.raises(helm.HelmRenderError):
        render_raw({"kafka": {"partitions": 1}, "aggregator": {"replicas": 2}, "migration": {"enabled": False}})


def test_kafka_security_reaches_every_workload(case) -> None:
    _, values, objects = case
    kafka = values["kafka"]
    sasl = kafka["securityProtocol"] in ("sasl-plaintext", "sasl-ssl")
    secret_name = values["existingSecret"] or FULLNAME
    configmap = one(objects, "ConfigMap", FULLNAME)["data"]
    assert configmap["REFERRAL_KAFKA_SECURITY_PROTOCOL"] == kafka["securityProtocol"]
    ca = kafka["tls"]["caSecret"]
    for name, spec in pod_specs(objects):
        (container,) = spec["containers"]
        is_job = name.startswith("Job/")
        settings = (
            {k: v.get("value") for k, v in env_of(container).items()} if is_job else configmap
        )
        ref = _secret_ref(container, "REFERRAL_KAFKA_SASL_PASSWORD")
        if sasl:
            assert settings["REFERRAL_KAFKA_SASL_MECHANISM"] == kafka["sasl"]["mechanism"], name
            assert settings["REFERRAL_KAFKA_SASL_USERNAME"] == kafka["sasl"]["username"], name
            expected = (
                f"{FULLNAME}-migrate" if is_job and not values["existingSecret"] else secret_name
            )
            assert ref == {"name": expected, "key": values["secretKeys"]["kafkaSaslPassword"]}, name
        else:
            assert ref is None, name
            assert "REFERRAL_KAFKA_SASL_USERNAME" not in settings, name
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        if ca:
            path = f"/etc/referral/kafka-ca/{kafka['tls']['caSecretKey']}"
            assert settings["REFERRAL_KAFKA_SSL_CA_LOCATION"] == path, name
            assert mounts["kafka-ca"]["readOnly"] is True
            assert path.startswith(mounts["kafka-ca"]["mountPath"] + "/")
            assert volumes["kafka-ca"]["secret"]["secretName"] == ca
        else:
            assert "kafka-ca" not in mounts and "kafka-ca" not in volumes, name
    if sasl and not values["existingSecret"]:
        secret = one(objects, "Secret", FULLNAME)["stringData"]
        assert secret[values["secretKeys"]["kafkaSaslPassword"]] == kafka["sasl"]["password"]


def test_managed_services_values_use_sasl_tls_and_https() -> None:
    values = load_values("managed-services.yaml")
    assert values["kafka"]["securityProtocol"] == "sasl-ssl"
    objects = render(values)
    configmap = one(objects, "ConfigMap", FULLNAME)["data"]
    assert configmap["REFERRAL_CLICKHOUSE_URL"].startswith("https://")
    # ClickHouse Cloud replicates by itself (SharedMergeTree): no cluster, no quorum.
    assert "REFERRAL_CLICKHOUSE_CLUSTER" not in configmap
    assert "REFERRAL_CLICKHOUSE_INSERT_QUORUM" not in configmap
    assert configmap["REFERRAL_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kafka": {"securityProtocol": "sasl-ssl"}}, "needs kafka.sasl.mechanism"),
        (
            {"kafka": {"sasl": {"mechanism": "PLAIN", "username": "u", "password": "p"}}},
            "not sasl-plaintext or sasl-ssl",
        ),
        ({"kafka": {"tls": {"caSecret": "ca"}}}, "not ssl or sasl-ssl"),
        (
            {
                "existingSecret": "sre",
                "kafka": {
                    "securityProtocol": "sasl-ssl",
                    "sasl": {"mechanism": "PLAIN", "username": "u", "password": "p"},
                },
            },
            "existingSecret is set",
        ),
    ],
)
def test_kafka_security_combinations_refused_with_reason(values, message) -> None:
    with pytest.raises(helm.HelmRenderError) as refused:
        render_raw(values)
    assert message in str(refused.value)


def test_autoscaling(case) -> None:
    _, values, objects = case
    hpas = {h["metadata"]["name"]: h for h in of_kind(objects, "HorizontalPodAutoscaler")}
    assert f"{FULLNAME}-aggregator" not in hpas
    for component in ("ingest", "api"):
        settings = values[component]["autoscaling"]
        spec = deployment(objects, component)["spec"]
        name = f"{FULLNAME}-{component}"
        if not settings["enabled"]:
            assert name not in hpas
            assert spec["replicas"] == values[component]["replicas"]
            continue
        assert "replicas" not in spec, "the HPA owns replicas"
        hpa = hpas[name]["spec"]
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert hpa["minReplicas"] == settings["minReplicas"]
        assert hpa["maxReplicas"] == settings["maxReplicas"]
        (metric,) = hpa["metrics"]
        assert metric["type"] == "Resource"
        assert metric["resource"]["name"] == "cpu"
        assert metric["resource"]["target"] == {
            "type": "Utilization",
            "averageUtilization": settings["targetCPUUtilizationPercentage"],
        }
    aggregator = deployment(objects, "aggregator")["spec"]
    assert aggregator["replicas"] == values["aggregator"]["replicas"] <= values["kafka"]["partitions"]
    # One release writes at a time: the old aggregators leave before the new ones start.
    assert aggregator["strategy"] == {"type": "Recreate"}
    # Deliverers share the endpoints through their group, so a rollout may surge: the old
    # pod gives its endpoints up (cursors stored) before the new one gets them. No HPA (the
    # group, not the CPU, decides who works).
    deliverer = deployment(objects, "deliverer")["spec"]
    assert deliverer["replicas"] == values["deliverer"]["replicas"]
    assert deliverer["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    assert f"{FULLNAME}-deliverer" not in hpas


def test_production_values_enable_autoscaling() -> None:
    values = merged(load_values("production.yaml"))
    assert values["ingest"]["autoscaling"]["enabled"] and values["api"]["autoscaling"]["enabled"]


def test_disruption_budgets_and_services_select_their_pods(case) -> None:
    _, values, objects = case
    budgets = {b["metadata"]["name"]: b for b in of_kind(objects, "PodDisruptionBudget")}
    for component in COMPONENTS:
        template = deployment(objects, component)["spec"]["template"]
        labels = template["metadata"]["labels"]
        name = f"{FULLNAME}-{component}"
        service = one(objects, "Service", name)["spec"]
        assert service["selector"].items() <= labels.items(), component
        # The aggregator's and deliverer's Services are for /metrics only: unready pods are
        # scraped too.
        assert service.get("publishNotReadyAddresses", False) == (component in METRICS_ONLY)
        assert service["ports"][0]["targetPort"] == "http"
        if values[component]["podDisruptionBudget"]["enabled"]:
            selector = budgets[name]["spec"]["selector"]["matchLabels"]
            assert selector.items() <= labels.items(), component
            assert budgets[name]["spec"]["maxUnavailable"] == values[component]["podDisruptionBudget"]["maxUnavailable"]
        else:
            assert name not in budgets
        # Selectors of different components never overlap.
        for other in COMPONENTS:
            if other != component:
                other_labels = deployment(objects, other)["spec"]["template"]["metadata"]["labels"]
                assert not service["selector"].items() <= other_labels.items()


# --------------------------------------------------------------------------- routing


def _route(route: dict[str, Any], method: str, path: str) -> str | None:
    """The backend Gateway API would pick: exact path beats prefix, longer prefix beats
    shorter, a method match beats none (the spec's precedence order)."""
    best, best_key = None, None
    for rule in route["spec"]["rules"]:
        for match in rule.get("matches", [{"path": {"type": "PathPrefix", "value": "/"}}]):
            want = match.get("path", {"type": "PathPrefix", "value": "/"})
            if want["type"] == "Exact":
                hit = path == want["value"]
            else:
                prefix = want["value"].rstrip("/")
                hit = path == prefix or path.startswith(prefix + "/") or want["value"] == "/"
            if not hit or match.get("method", method) != method:
                continue
            key = (want["type"] == "Exact", len(want["value"]), "method" in match)
            if best_key is None or key > best_key:
                best, best_key = rule["backendRefs"][0]["name"], key
    return best


def test_httproute_sends_only_the_click_post_to_ingest() -> None:
    objects = render(load_values("production.yaml"))
    (route,) = of_kind(objects, "HTTPRoute")
    spec = route["spec"]
    assert spec["hostnames"] == ["referrals.example.com"]
    assert spec["parentRefs"][0]["name"] == "public"
    ingest, api = f"{FULLNAME}-ingest", f"{FULLNAME}-api"
    ingest_paths = set()
    for rule in spec["rules"]:
        backends = {b["name"] for b in rule["backendRefs"]}
        if ingest in backends:
            assert backends == {ingest}
            for match in rule["matches"]:
                if match["path"]["value"] in LINK_PREFIXES:
                    assert match["method"] in ("GET", "HEAD"), match
                    assert match["path"]["type"] == "PathPrefix", match
                    continue
                assert match["method"] == "POST", match
                assert match["path"]["type"] == "Exact", match
                assert match["path"]["value"] in CLICK_PATHS, match
                ingest_paths.add(match["path"]["value"])
        else:
            assert backends == {api}
        for backend in rule["backendRefs"]:
            service = one(objects, "Service", backend["name"])
            assert backend["port"] == service["spec"]["ports"][0]["port"]
    assert ingest_paths == CLICK_PATHS
    # What a request gets, under Gateway API precedence.
    for path in CLICK_PATHS:
        assert _route(route, "POST", path) == ingest
        assert _route(route, "GET", path) == api
    assert _route(route, "PUT", "/api/v1/referral-attributions/attr_01JQ3V8W6Y7Z8A9B0C1D2E3F4G") == api
    assert _route(route, "POST", "/api/v1/referral-attributions/extra") == api
    assert _route(route, "PUT", "/api/v1/referral-codes/JAN-VERV-8F3A") == api
    assert _route(route, "GET", "/api/v1/referral-attributions/mentor/usr_4491/total") == api
    # The pixel and the redirect link go to the edge, GET and HEAD only.
    for method in ("GET", "HEAD"):
        assert _route(route, method, "/p/JAN-VERV-8F3A.gif") == ingest
        assert _route(route, method, "/r/JAN-VERV-8F3A") == ingest
    assert _route(route, "POST", "/r/JAN-VERV-8F3A") is None
    # The ops endpoints are not routed from outside the cluster.
    for path in ("/metrics", "/readyz", "/healthz", "/"):
        assert _route(route, "GET", path) is None, path


def test_ingress_hosts() -> None:
    objects = render(load_values("production.yaml"))
    (ingress,) = of_kind(objects, "Ingress")
    spec = ingress["spec"]
    assert spec["ingressClassName"] == "nginx"
    rules = {r["host"]: r["http"]["paths"] for r in spec["rules"]}
    tracking = rules["track.referrals.example.com"]
    assert {p["path"] for p in tracking} == CLICK_PATHS | LINK_PREFIXES
    for path in tracking:
        kind = "Prefix" if path["path"] in LINK_PREFIXES else "Exact"
        assert path["pathType"] == kind
        assert path["backend"]["service"] == {"name": f"{FULLNAME}-ingest", "port": {"name": "http"}}
    (api,) = rules["api.referrals.example.com"]
    # Only the API: /metrics, /readyz and /healthz are not reachable through the Ingress.
    assert (api["path"], api["pathType"]) == ("/api", "Prefix")
    assert api["backend"]["service"] == {"name": f"{FULLNAME}-api", "port": {"name": "http"}}
    assert spec["tls"][0]["secretName"] == "referrals-tls"


# --------------------------------------------------------------------------- observability


def test_service_monitor_scrapes_every_component() -> None:
    objects = render(load_values("production.yaml"))
    (monitor,) = of_kind(objects, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    spec = monitor["spec"]
    assert spec["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = spec["endpoints"]
    assert endpoint["port"] == "http" and endpoint["path"] == "/metrics"
    selected = set()
    for service in of_kind(objects, "Service"):
        labels = service["metadata"]["labels"]
        if spec["selector"]["matchLabels"].items() <= labels.items() and all(
            labels.get(e["key"]) in e["values"] for e in spec["selector"]["matchExpressions"]
        ):
            assert "http" in {p["name"] for p in service["spec"]["ports"]}
            selected.add(labels["app.kubernetes.io/component"])
    assert selected == set(COMPONENTS)


def test_prometheus_rules() -> None:
    objects = render(load_values("production.yaml"))
    (rule,) = of_kind(objects, "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    expected_metric = {
        "ReferralConsumerLagHigh": "referral_consumer_lag",
        "ReferralHTTP5xxRatioHigh": "referral_http_requests_total",
        "ReferralHTTP503RatioHigh": "referral_http_requests_total",
        "ReferralHTTPLatencyP99High": "referral_http_request_duration_seconds_bucket",
        "ReferralAggregatorFlushFailing": "referral_flush_failures_total",
        "ReferralLogGapAccepted": "referral_consumer_offset_gaps_total",
        "ReferralAggregatorNotReady": "kube_pod_status_ready",
        "ReferralAggregatorDown": "up",
        "ReferralWebhookDeliveriesFailed": "referral_webhook_deliveries_total",
        "ReferralWebhookEndpointsDisabled": "referral_webhook_disabled_endpoints",
        "ReferralWebhookLagHigh": "referral_webhook_lag_seconds",
        "ReferralWebhookPartitionsUnserved": "referral_webhook_group_partitions",
        "ReferralDelivererDown": "up",
    }
    for alert, metric in expected_metric.items():
        assert alert in alerts, alert
        expr = alerts[alert]["expr"]
        assert re.search(rf"\b{metric}\{{", expr), (alert, expr)
        assert f'namespace="{NAMESPACE}"' in expr, alert
        assert alerts[alert]["labels"]["severity"] in ("warning", "critical")
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
    assert 'status=~"5.."' in alerts["ReferralHTTP5xxRatioHigh"]["expr"]
    assert 'status="503"' in alerts["ReferralHTTP503RatioHigh"]["expr"]
    assert "histogram_quantile(0.99" in alerts["ReferralHTTPLatencyP99High"]["expr"]
    assert f'job="{FULLNAME}-aggregator"' in alerts["ReferralConsumerLagHigh"]["expr"]
    assert "> 100000" in alerts["ReferralConsumerLagHigh"]["expr"]
    for alert in ("ReferralWebhookDeliveriesFailed", "ReferralWebhookEndpointsDisabled",
                  "ReferralWebhookLagHigh", "ReferralWebhookPartitionsUnserved",
                  "ReferralDelivererDown"):
        assert f'job="{FULLNAME}-deliverer"' in alerts[alert]["expr"], alert
    assert 'outcome="failed"' in alerts["ReferralWebhookDeliveriesFailed"]["expr"]
    assert "> 1800" in alerts["ReferralWebhookLagHigh"]["expr"]
    # Without the deliverer, no alert waits for its series.
    objects = render({**load_values("production.yaml"), "deliverer": {"enabled": False}})
    (rule,) = of_kind(objects, "PrometheusRule")
    names = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert not any("Webhook" in n or "Deliverer" in n for n in names), names
    # Templated summaries keep Prometheus' own {{ $labels... }} placeholders.
    assert "{{ $labels.job }}" in alerts["ReferralHTTP5xxRatioHigh"]["annotations"]["summary"]


def test_grafana_dashboard(case) -> None:
    _, values, objects = case
    maps = [c for c in of_kind(objects, "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    if not values["dashboard"]["enabled"]:
        assert not maps
        return
    (config_map,) = maps
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["referral-attribution.json"])
    expressions = " ".join(
        t["expr"] for p in dashboard["panels"] if p["type"] != "row" for t in p["targets"]
    )
    for metric in (
        "referral_http_requests_total",
        "referral_http_request_duration_seconds_bucket",
        "referral_consumer_lag",
        "referral_flush_failures_total",
        "referral_flush_duration_seconds_bucket",
        "referral_flush_phase_duration_seconds_sum",
        "referral_events_applied_total",
    ):
        assert metric in expressions, metric
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_notes_render(case) -> None:
    values_file, values, _ = case
    notes = render_raw(load_values(values_file))["referral-attribution/templates/NOTES.txt"]
    assert f"{FULLNAME}-api" in notes
    open_api = not values["existingSecret"] and not values["auth"]["apiTokens"]
    assert open_api == values["auth"]["allowAnonymous"]
    assert ("WARNING: no API tokens" in notes) == open_api
    deliverer = values["deliverer"]
    assert (f"{deliverer['replicas']} in consumer group {deliverer['webhooks']['group']}" in notes) == deliverer["enabled"]


def test_sequential_reads_reach_the_clickhouse_clients_only_when_set() -> None:
    # ClickHouse Cloud: no cluster, no quorum, but the aggregator's reads must not be stale.
    objects = render({"clickhouse": {"sequentialReads": True}})
    for kind, suffix in CLICKHOUSE_CLIENTS:
        assert effective_env(objects, kind, suffix)["REFERRAL_CLICKHOUSE_SEQUENTIAL_READS"] == "true"
    objects = render({})
    for kind, suffix in CLICKHOUSE_CLIENTS:
        assert "REFERRAL_CLICKHOUSE_SEQUENTIAL_READS" not in effective_env(objects, kind, suffix)
