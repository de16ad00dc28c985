"""Chart tests (run through charts/tests/run.sh, which provides the pinned venv).

For every chart of charts/, in install order:
- strict lint (Helm 4 engine) with default and with non-default values;
- render with default values and with values-nondefault.yaml; every object parsed with
  duplicate keys refused and validated (strict: unknown fields refused) against the
  Kubernetes schemas of 1.33 and of the newest version kubernetes-validate ships;
- renders compared with golden/<chart>-<variant>.yaml (UPDATE_GOLDEN=1 rewrites them);
- every value documented in values.yaml and listed in the chart README (the README's value
  table is generated from values.yaml comments; UPDATE_GOLDEN=1 rewrites it);
- RBAC without wildcards; NOTES.txt explaining enrollment and how to check it;
- the base chart's CRD schemas accept sample policies and refuse broken ones;
- the documented install order (charts/README.md) is consistent: each chart only refers to
  what an earlier chart (or itself) provides, in both variants.

The tests that tie the renders to the binaries' own config parsers and Kubernetes clients
are Rust tests reading the golden files (ztunnel/tests/chart_env.rs,
istiod-compat/tests/chart_env.rs, istiod-compat/tests/chart_rbac.rs,
redirect-ebpf/agent/tests/chart_env.rs).
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

TESTS = Path(__file__).resolve().parent
CHARTS_DIR = TESTS.parent
GOLDEN = TESTS / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"

# The documented install order (charts/README.md says the same; a test checks it).
ORDER = ["base", "istiod-compat", "redirect-ebpf", "ztunnel"]
# Release namespace of each chart per variant. The non-default variant splits the control
# plane and the data plane over two namespaces to exercise the cross-namespace values.
NAMESPACES = {
    "default": {c: "istio-system" for c in ORDER},
    "nondefault": {
        "base": "istio-system",
        "istiod-compat": "mesh-control",
        "redirect-ebpf": "mesh-dataplane",
        "ztunnel": "mesh-dataplane",
    },
}
K8S_VERSIONS = sorted({"1.33.0", kubernetes_validate.utils.latest_version()})
# Values whose children are free-form data (Kubernetes fields, labels, env), so only the
# key itself needs a comment.
DATA_KEYS = {
    "resources",
    "installerResources",
    "nodeSelector",
    "tolerations",
    "affinity",
    "podAnnotations",
    "podLabels",
    "env",
    "commonLabels",
    "imagePullSecrets",
}
README_BEGIN = "<!-- values:begin (generated from values.yaml by charts/tests/run.sh) -->"
README_END = "<!-- values:end -->"


# === values ===


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def variant_values(variant: str, chart: str) -> dict | None:
    """The values passed to `chart` in `variant` (None: the chart's defaults)."""
    if variant == "default":
        return None
    doc = yaml.safe_load((TESTS / "values-nondefault.yaml").read_text())
    shared = {"global": doc.get("global", {})}
    return deep_merge(shared, doc.get(chart, {}))


# === rendering ===


class UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader refusing duplicate keys (Kubernetes would keep only one silently)."""


def _no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


class Render:
    """One chart rendered in one variant."""

    def __init__(self, chart: str, variant: str):
        self.chart = chart
        self.variant = variant
        self.namespace = NAMESPACES[variant][chart]
        self.values = variant_values(variant, chart)
        with helm.Chart.load(CHARTS_DIR / chart) as c:
            self.files = c.render(
                self.values, name=chart, namespace=self.namespace, is_install=True
            )
        self.notes = next((v for k, v in self.files.items() if k.endswith("NOTES.txt")), "")
        self.manifests = {
            k: v.strip() + "\n"
            for k, v in sorted(self.files.items())
            if not k.endswith("NOTES.txt") and v.strip()
        }
        self.objects: list[dict] = []
        for path, text in self.manifests.items():
            for doc in yaml.load_all(text, Loader=UniqueKeyLoader):
                if doc is not None:
                    doc["__source__"] = path
                    self.objects.append(doc)

    def golden_text(self) -> str:
        parts = [
            f"# Golden render of charts/{self.chart} ({self.variant} values, namespace "
            f"{self.namespace}).\n# Regenerate: UPDATE_GOLDEN=1 bash charts/tests/run.sh\n"
        ]
        for path, text in self.manifests.items():
            parts.append(f"---\n# Source: {path}\n{text}")
        return "".join(parts)

    def find(self, kind: str, name: str | None = None) -> list[dict]:
        return [
            o
            for o in self.objects
            if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
        ]

    def one(self, kind: str, name: str | None = None) -> dict:
        found = self.find(kind, name)
        assert len(found) == 1, f"{self.chart}: expected one {kind} {name}, found {len(found)}"
        return found[0]


_RENDERS: dict[tuple[str, str], Render] = {}


def render(chart: str, variant: str) -> Render:
    key = (chart, variant)
    if key not in _RENDERS:
        _RENDERS[key] = Render(chart, variant)
    return _RENDERS[key]


def clean(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k != "__source__"}


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


def env_of(container: dict) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def container(obj: dict, name: str) -> dict:
    for c in pod_spec(obj)["containers"]:
        if c["name"] == name:
            return c
    raise AssertionError(f"no container {name} in {obj['kind']}/{obj['metadata']['name']}")


# === tests ===


def test_lint_strict() -> None:
    for chart in ORDER:
        for variant in NAMESPACES:
            values = variant_values(variant, chart)
            report = helm.lint(
                str(CHARTS_DIR / chart),
                values,
                strict=True,
                namespace=NAMESPACES[variant][chart],
                kube_version="v1.33.0",
            )
            problems = [m for m in report["messages"] if m["severity"] >= 2] + [
                {"error": e} for e in report["errors"]
            ]
            assert not problems, f"{chart} ({variant}): {problems}"


def test_objects_valid_for_kubernetes() -> None:
    for chart in ORDER:
        for variant in NAMESPACES:
            r = render(chart, variant)
            assert r.objects, f"{chart} ({variant}) rendered nothing"
            for obj in r.objects:
                for version in K8S_VERSIONS:
                    try:
                        kubernetes_validate.validate(clean(obj), version, strict=True)
                    except kubernetes_validate.ValidationError as e:
                        raise AssertionError(
                            f"{chart} ({variant}) {obj['__source__']} {obj['kind']} "
                            f"invalid for Kubernetes {version}: {e.message} at "
                            f"{'/'.join(map(str, e.path))}"
                        ) from None
                    except kubernetes_validate.SchemaNotFoundError as e:
                        raise AssertionError(f"{chart}: {e.message}") from None
                if "template" in obj.get("spec", {}):
                    for c in pod_spec(obj)["containers"]:
                        names = [e["name"] for e in c.get("env", [])]
                        dups = {n for n in names if names.count(n) > 1}
                        assert not dups, f"{chart} ({variant}) {c['name']}: env {dups} twice"
                ns = obj["metadata"].get("namespace")
                cluster_scoped = obj["kind"] in {
                    "CustomResourceDefinition",
                    "ClusterRole",
                    "ClusterRoleBinding",
                }
                if cluster_scoped:
                    assert ns is None, f"{obj['kind']} must not have a namespace"
                else:
                    assert ns == r.namespace, f"{obj['kind']} {obj['metadata']['name']}: {ns}"


def test_golden_renders() -> None:
    GOLDEN.mkdir(exist_ok=True)
    stale = []
    expected_files = set()
    for chart in ORDER:
        for variant in NAMESPACES:
            text = render(chart, variant).golden_text()
            path = GOLDEN / f"{chart}-{variant}.yaml"
            expected_files.add(path.name)
            if UPDATE:
                path.write_text(text)
            elif not path.exists() or path.read_text() != text:
                stale.append(path.name)
    extra = {p.name for p in GOLDEN.glob("*.yaml")} - expected_files
    if UPDATE:
        for name in extra:
            (GOLDEN / name).unlink()
        extra = set()
    assert not stale, f"renders differ from golden files {stale}: review, then UPDATE_GOLDEN=1"
    assert not extra, f"golden files of no chart: {sorted(extra)}"


def documented_values(chart: str) -> list[tuple[str, str]]:
    """(dotted path, comment) of every key of values.yaml outside DATA_KEYS children."""
    out = []
    stack: list[tuple[int, str]] = []
    comment: list[str] = []
    for line in (CHARTS_DIR / chart / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip())
            continue
        m = re.match(r"^(\s*)([A-Za-z0-9_.-]+):", line)
        if not m or stripped.startswith("-"):
            if not stripped:
                comment = []
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        parents = [k for _, k in stack]
        stack.append((indent, m.group(2)))
        if not any(p in DATA_KEYS for p in parents):
            out.append((".".join(parents + [m.group(2)]), " ".join(comment)))
        comment = []
    return out


def lookup(values: dict, path: str) -> Any:
    cur: Any = values
    for part in path.split("."):
        cur = cur[part]
    return cur


def values_table(chart: str) -> str:
    with helm.Chart.load(CHARTS_DIR / chart) as c:
        defaults = c.values
    rows = ["| Value | Default | Meaning |", "|---|---|---|"]
    for path, doc in documented_values(chart):
        value = lookup(defaults, path)
        if isinstance(value, dict) and value and path.split(".")[-1] not in DATA_KEYS:
            default = ""
        else:
            default = f"`{json.dumps(value)}`"
        rows.append(f"| `{path}` | {default} | {doc.replace('|', '/')} |")
    return "\n".join(rows) + "\n"


def test_values_documented() -> None:
    stale = []
    for chart in ORDER:
        undocumented = [p for p, doc in documented_values(chart) if not doc]
        assert not undocumented, f"{chart}/values.yaml: no comment above {undocumented}"
        readme_path = CHARTS_DIR / chart / "README.md"
        readme = readme_path.read_text()
        assert README_BEGIN in readme and README_END in readme, f"{chart}/README.md markers"
        head, rest = readme.split(README_BEGIN, 1)
        _, tail = rest.split(README_END, 1)
        fresh = f"{head}{README_BEGIN}\n{values_table(chart)}{README_END}{tail}"
        if UPDATE:
            readme_path.write_text(fresh)
        elif fresh != readme:
            stale.append(f"{chart}/README.md")
    assert not stale, f"value tables out of date in {stale}: UPDATE_GOLDEN=1"


def test_nondefault_values_cover_every_value() -> None:
    """values-nondefault.yaml sets every documented value, so each one is rendered once."""
    for chart in ORDER:
        given = variant_values("nondefault", chart)
        with helm.Chart.load(CHARTS_DIR / chart) as c:
            defaults = c.values
        missing = []
        for path, _ in documented_values(chart):
            value = lookup(defaults, path)
            if isinstance(value, dict) and value and path.split(".")[-1] not in DATA_KEYS:
                continue  # a group: its leaves are checked
            try:
                lookup(given, path)
            except (KeyError, TypeError):
                missing.append(path)
        assert not missing, f"values-nondefault.yaml does not set {chart}: {missing}"


WORKLOAD_CONTAINERS = {
    "istiod-compat": ("Deployment", "discovery"),
    "ztunnel": ("DaemonSet", "istio-proxy"),
    "redirect-ebpf": ("DaemonSet", "agent"),
}


def test_extra_env_cannot_repeat_a_chart_variable() -> None:
    """`env` naming a variable the chart sets fails the render (no duplicate env entries)."""
    for chart, (kind, name) in WORKLOAD_CONTAINERS.items():
        for variant in NAMESPACES:
            r = render(chart, variant)
            extra = set((r.values or {}).get("env", {}))
            rendered = [e["name"] for e in container(r.one(kind), name)["env"]]
            for var in rendered:
                if var in extra:
                    continue
                values = deep_merge(r.values or {}, {"env": {var: "x"}})
                with helm.Chart.load(CHARTS_DIR / chart) as c:
                    try:
                        c.render(values, name=chart, namespace=r.namespace, is_install=True)
                    except helm.HelmError as e:
                        assert f"env.{var} is set by the chart" in str(e), f"{chart}: {e}"
                    else:
                        raise AssertionError(f"{chart}: env.{var} was accepted twice")


def test_no_rbac_wildcards() -> None:
    for chart in ORDER:
        for variant in NAMESPACES:
            for obj in render(chart, variant).objects:
                if obj["kind"] in {"ClusterRole", "Role"}:
                    for rule in obj["rules"]:
                        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                            assert "*" not in rule.get(field, []), f"{chart}: {rule}"
                        assert "nonResourceURLs" not in rule, f"{chart}: {rule}"


def test_notes_explain_enrollment_and_checks() -> None:
    for chart in ["istiod-compat", "redirect-ebpf", "ztunnel"]:
        notes = render(chart, "default").notes
        assert "kubectl label namespace <namespace> istio.io/dataplane-mode=ambient" in notes, chart
    zt = render("ztunnel", "default").notes
    for needle in ["config_dump", "15020", "istio_tcp_connections_opened_total", "15000"]:
        assert needle in zt, f"ztunnel NOTES.txt lacks {needle}"


def crd_schema(name: str) -> dict:
    crd = render("base", "default").one("CustomResourceDefinition", name)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def test_crd_schemas_accept_samples_and_refuse_broken() -> None:
    schemas = {
        "AuthorizationPolicy": crd_schema("authorizationpolicies.security.istio.io"),
        "PeerAuthentication": crd_schema("peerauthentications.security.istio.io"),
    }
    for kind, schema in schemas.items():
        jsonschema.Draft4Validator.check_schema(schema)
    for sample, valid in [("valid.yaml", True), ("invalid.yaml", False)]:
        docs = [
            d
            for d in yaml.load_all((TESTS / "samples" / sample).read_text(), UniqueKeyLoader)
            if d
        ]
        assert docs, sample
        for doc in docs:
            validator = jsonschema.Draft4Validator(schemas[doc["kind"]])
            body = {k: v for k, v in doc.items() if k in {"spec", "status"}}
            errors = list(validator.iter_errors(body))
            name = doc["metadata"]["name"]
            if valid:
                assert not errors, f"{sample} {name}: {[e.message for e in errors]}"
            else:
                assert errors, f"{sample} {name} should be refused"


def test_crds_have_structural_schemas() -> None:
    # Every object node either lists its properties or preserves unknown fields explicitly.
    def walk(node: dict, where: str) -> None:
        assert "type" in node or "x-kubernetes-preserve-unknown-fields" in node, where
        for key, child in node.get("properties", {}).items():
            walk(child, f"{where}.{key}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{where}[]")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{where}{{}}")

    for crd in render("base", "default").find("CustomResourceDefinition"):
        for v in crd["spec"]["versions"]:
            walk(v["schema"]["openAPIV3Schema"], crd["metadata"]["name"])


def test_install_order_documented() -> None:
    readme = (CHARTS_DIR / "README.md").read_text()
    installs = re.findall(r"^helm (?:upgrade --install|install) (\S+) charts/(\S+)", readme, re.M)
    assert [c for _, c in installs] == ORDER, f"charts/README.md install order: {installs}"
    uninstalls = re.findall(r"^helm uninstall (\S+)", readme, re.M)
    assert uninstalls == list(reversed(ORDER)), f"charts/README.md uninstall order: {uninstalls}"
    top = (CHARTS_DIR.parent / "README.md").read_text()
    assert "## Install on Kubernetes" in top, "README.md lacks the Install on Kubernetes section"
    assert [c for _, c in re.findall(r"^helm (?:upgrade --install|install) (\S+) charts/(\S+)", top, re.M)] == ORDER


def test_install_order_consistency() -> None:
    """Each chart refers only to things provided by itself or an earlier chart."""
    for variant in NAMESPACES:
        base = render("base", variant)
        istiod = render("istiod-compat", variant)
        agent = render("redirect-ebpf", variant)
        zt = render("ztunnel", variant)
        where = f"({variant})"

        # base → istiod-compat: the CRDs istiod-compat watches exist, and only those.
        crd_plurals = {
            (c["spec"]["group"], c["spec"]["names"]["plural"])
            for c in base.find("CustomResourceDefinition")
        }
        cr = istiod.find("ClusterRole")[0]
        watched = {
            (g, res)
            for rule in cr["rules"]
            for g in rule["apiGroups"]
            for res in rule["resources"]
            if g == "security.istio.io"
        }
        assert watched == crd_plurals, f"{where} {watched} vs {crd_plurals}"

        # istiod-compat → ztunnel: addresses name istiod-compat's Service and TLS port.
        svc = istiod.one("Service", "istiod-compat")
        ports = {p["port"] for p in svc["spec"]["ports"]}
        env = env_of(container(zt.one("DaemonSet", "ztunnel"), "istio-proxy"))
        for var in ("XDS_ADDRESS", "CA_ADDRESS"):
            host, port = env[var].rsplit(":", 1)
            assert host == f"istiod-compat.{istiod.namespace}.svc", f"{where} {var}={env[var]}"
            assert int(port) in ports and int(port) == 15012, f"{where} {var}={env[var]}"
        # istiod-compat trusts exactly ztunnel's service account to impersonate pods.
        ienv = env_of(container(istiod.one("Deployment", "istiod-compat"), "discovery"))
        sa = zt.one("ServiceAccount")
        assert (
            ienv["CA_TRUSTED_NODE_ACCOUNTS"] == f"{zt.namespace}/{sa['metadata']['name']}"
        ), f"{where} {ienv['CA_TRUSTED_NODE_ACCOUNTS']}"
        ds = zt.one("DaemonSet", "ztunnel")
        assert pod_spec(ds)["serviceAccountName"] == sa["metadata"]["name"]

        # redirect-ebpf → ztunnel: the ZDS socket is the same host file for both.
        agent_ds = agent.one("DaemonSet", "redirect-agent")
        aenv = env_of(container(agent_ds, "agent"))
        assert aenv["ZDS_SOCKET"] == env["INPOD_UDS"], f"{where} ZDS socket"
        sock_dir = os.path.dirname(env["INPOD_UDS"])
        for ds_obj, cname in [(agent_ds, "agent"), (ds, "istio-proxy")]:
            mounts = {m["name"]: m["mountPath"] for m in container(ds_obj, cname)["volumeMounts"]}
            host = {
                v["name"]: v["hostPath"]["path"]
                for v in pod_spec(ds_obj)["volumes"]
                if "hostPath" in v
            }
            shared = [n for n, p in mounts.items() if p == sock_dir]
            assert shared and host.get(shared[0]) == sock_dir, f"{where} {cname} ZDS dir"

        # The CNI plugin (on the host) reaches the agent's socket at the same host path.
        cni_sock_dir = os.path.dirname(aenv["CNI_EVENT_SOCKET"])
        host = {v["name"]: v["hostPath"]["path"] for v in pod_spec(agent_ds)["volumes"] if "hostPath" in v}
        mounts = {m["mountPath"]: m["name"] for m in container(agent_ds, "agent")["volumeMounts"]}
        assert host[mounts[cni_sock_dir]] == cni_sock_dir, f"{where} CNI socket dir"
        script = "\n".join(container(agent_ds, "install-cni")["command"])
        assert f"sock={aenv['CNI_EVENT_SOCKET']}" in script, f"{where} installer socket"

        # ztunnel drains within its grace period.
        assert env["TERMINATION_GRACE_PERIOD_SECONDS"] == str(
            pod_spec(ds)["terminationGracePeriodSeconds"]
        ), where

        # Cluster-scoped names of different charts never collide.
        names = [
            (o["kind"], o["metadata"]["name"])
            for r in (base, istiod, agent, zt)
            for o in r.objects
            if o["kind"] in {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}
        ]
        assert len(names) == len(set(names)), f"{where} {names}"


def test_ztunnel_daemonset_properties() -> None:
    for variant in NAMESPACES:
        ds = render("ztunnel", variant).one("DaemonSet", "ztunnel")
        spec = pod_spec(ds)
        c = container(ds, "istio-proxy")
        caps = c["securityContext"]["capabilities"]
        assert caps["drop"] == ["ALL"] and sorted(caps["add"]) == ["NET_ADMIN", "SYS_ADMIN"]
        assert not c["securityContext"]["privileged"]
        assert c["securityContext"]["readOnlyRootFilesystem"]
        assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == 0
        assert spec["automountServiceAccountToken"] is False
        token = [v for v in spec["volumes"] if v["name"] == "istio-token"][0]
        (src,) = token["projected"]["sources"]
        assert src["serviceAccountToken"]["audience"] == "istio-ca"
        ann = ds["spec"]["template"]["metadata"]["annotations"]
        assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == "15020"
        assert c["readinessProbe"]["httpGet"]["port"] == 15021
        if variant == "default":
            assert spec["priorityClassName"] == "system-node-critical"
            assert spec["tolerations"] == [{"operator": "Exists"}]


# === runner ===


def main() -> int:
    tests: list[tuple[str, Callable[[], None]]] = [
        (name, fn) for name, fn in globals().items() if name.startswith("test_") and callable(fn)
    ]
    only = sys.argv[1:]
    failed = 0
    print(f"chart tests (helm SDK {helm.helm_sdk_version()}, Kubernetes schemas {K8S_VERSIONS})")
    for name, fn in tests:
        if only and name not in only:
            continue
        try:
            fn()
            print(f"ok   {name}")
        except Exception as e:  # noqa: BLE001 - report every failure, then exit non-zero
            failed += 1
            print(f"FAIL {name}: {e}")
            if os.environ.get("VERBOSE"):
                traceback.print_exc()
    if UPDATE:
        print("golden renders and README value tables rewritten (UPDATE_GOLDEN=1)")
    print(f"{len(tests) - failed} passed, {failed} failed" if not only else "")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
