#!/usr/bin/env python3
"""Checks deploy/kubernetes/ offline, in a few seconds.

    target/interop-venv/bin/python tests/deploy/check_kubernetes.py [RPCPIN_BINARY]

1. Every manifest validates against the Kubernetes JSON schemas (strict: unknown fields are
   errors) bundled in the kubernetes-validate package, for the oldest and the newest
   Kubernetes version it carries. No cluster and no network are needed.
2. The ConfigMap's rpcpin.toml passes `rpcpin check` (default binary:
   target/release/rpcpin).
3. The manifests agree with that configuration and with the Dockerfile: every listener's
   port is a containerPort and (but for the admin port) the target of a Service port whose
   number is what clients use (135, or the pin's advertised port); the probes hit
   admin.listen's port; terminationGracePeriodSeconds exceeds limits.drain_timeout plus the
   preStop sleep; the config is mounted where --config reads it; the security context is
   the non-root, read-only, capability-less one the README promises.
4. A self-test breaks the manifests in memory, one fault at a time, and requires each
   fault to be caught by the check meant for it, so that none of the checks above can pass
   vacuously.

Prints PASS/FAIL lines and ends with "N passed, M failed"; exits non-zero on any failure.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
DOCKERFILE = ROOT / "Dockerfile"
# The oldest and the newest schema set kubernetes-validate bundles (install-deps.sh pins it).
KUBE_VERSIONS = ("1.25.0", "1.37.0")
# The contract's defaults (issue 6): used when the configuration leaves them out.
DEFAULT_DRAIN = 30.0
# Annotations by which cloud load balancers are told to send a PROXY protocol header.
PROXY_ANNOTATIONS = {
    "service.beta.kubernetes.io/aws-load-balancer-proxy-protocol": lambda v: v == "*",
    "service.beta.kubernetes.io/do-loadbalancer-enable-proxy-protocol": lambda v: v == "true",
}


@dataclass
class Manifests:
    """Everything the checks look at; the self-test mutates deep copies of it."""

    docs: dict[str, dict]  # file name -> the one document in it
    kustomization: dict
    dockerfile: str
    rpcpin: str
    files: list[str] = field(default_factory=list)

    def one(self, kind: str) -> dict:
        found = [d for d in self.docs.values() if d.get("kind") == kind]
        if len(found) != 1:
            raise Failure(f"expected exactly one {kind}, found {len(found)}")
        return found[0]

    @property
    def toml_text(self) -> str:
        data = self.one("ConfigMap").get("data") or {}
        if "rpcpin.toml" not in data:
            raise Failure("the ConfigMap has no key rpcpin.toml")
        return data["rpcpin.toml"]

    @property
    def config(self) -> dict:
        try:
            return tomllib.loads(self.toml_text)
        except tomllib.TOMLDecodeError as e:
            raise Failure(f"rpcpin.toml is not TOML: {e}") from e

    @property
    def pod(self) -> dict:
        return self.one("Deployment")["spec"]["template"]["spec"]

    @property
    def container(self) -> dict:
        containers = self.pod["containers"]
        named = [c for c in containers if c.get("name") == "rpcpin"]
        if len(named) != 1:
            raise Failure("the Deployment needs exactly one container named rpcpin")
        return named[0]


class Failure(Exception):
    pass


def load(rpcpin: str) -> Manifests:
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        loaded = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        if len(loaded) != 1:
            raise SystemExit(f"{path.name}: expected one YAML document, found {len(loaded)}")
        docs[path.name] = loaded[0]
    kustomization = docs.pop("kustomization.yaml", None)
    if kustomization is None:
        raise SystemExit("deploy/kubernetes/kustomization.yaml is missing")
    return Manifests(
        docs=docs,
        kustomization=kustomization,
        dockerfile=DOCKERFILE.read_text(),
        rpcpin=rpcpin,
        files=sorted(docs),
    )


# --- helpers -------------------------------------------------------------------------------


def parse_duration(text: str) -> float:
    """rpcpin's durations: "250ms", "10s", "15m", "1h" (src/config.rs)."""
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", text.strip())
    if not m:
        raise Failure(f"{text!r} is not a duration such as \"30s\"")
    n, unit = int(m.group(1)), m.group(2)
    return n * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def split_listen(key: str, text: str) -> tuple[str, int]:
    m = re.fullmatch(r"\[?([^\]]*)\]?:(\d+)", text.strip())
    if not m:
        raise Failure(f"{key} = {text!r} is not address:port")
    return m.group(1), int(m.group(2))


@dataclass
class Listener:
    key: str  # "epm.listen", "pin[0].listen", "admin.listen"
    addr: str
    port: int
    public_port: int | None  # the port clients use; None for the admin listener
    proxy_protocol: bool


def listeners(m: Manifests) -> list[Listener]:
    c = m.config
    out = []
    epm = c.get("epm", {})
    addr, port = split_listen("epm.listen", epm.get("listen", ""))
    # Clients always ask the endpoint mapper on 135, whatever port rpcpin listens on.
    out.append(Listener("epm.listen", addr, port, 135, bool(epm.get("proxy_protocol", False))))
    for i, pin in enumerate(c.get("pin", [])):
        key = f"pin[{i}].listen"
        addr, port = split_listen(key, pin.get("listen", ""))
        public = pin.get("advertise_port", port)
        out.append(Listener(key, addr, port, public, bool(pin.get("proxy_protocol", False))))
    admin = c.get("admin", {})
    if "listen" in admin:
        addr, port = split_listen("admin.listen", admin["listen"])
        out.append(Listener("admin.listen", addr, port, None, False))
    return out


def container_port(m: Manifests, ref) -> int | None:
    """A probe's or a Service's port reference (number or name) as a container port number."""
    if isinstance(ref, int):
        return ref
    for p in m.container.get("ports", []):
        if p.get("name") == ref:
            return p["containerPort"]
    return None


def prestop_sleep(m: Manifests) -> float:
    """Seconds a preStop hook sleeps before the kubelet sends SIGTERM."""
    pre = (m.container.get("lifecycle") or {}).get("preStop") or {}
    if "sleep" in pre:
        return float(pre["sleep"]["seconds"])
    cmd = (pre.get("exec") or {}).get("command") or []
    if cmd and os.path.basename(cmd[0]) == "sleep" and len(cmd) == 2:
        return float(cmd[1])
    if pre:
        raise Failure(f"cannot tell how long the preStop hook {pre} takes")
    return 0.0


# --- the checks ----------------------------------------------------------------------------
# Each returns a list of problems (empty: passed) and may raise Failure.


def check_schema(m: Manifests) -> list[str]:
    problems = []
    for name, doc in m.docs.items():
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                problems.append(f"{name} (Kubernetes {version}): {path}: {e.message}")
            except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
                problems.append(f"{name} (Kubernetes {version}): {e.message}")
    return problems


def check_kustomization(m: Manifests) -> list[str]:
    problems = []
    k = m.kustomization
    if k.get("kind") != "Kustomization":
        problems.append("kustomization.yaml: kind is not Kustomization")
    resources = k.get("resources") or []
    if sorted(resources) != m.files:
        problems.append(f"kustomization.yaml resources {resources} are not the manifests {m.files}")
    return problems


def rpcpin_check(binary: str, text: str) -> subprocess.CompletedProcess:
    with tempfile.NamedTemporaryFile("w", suffix=".toml", prefix="rpcpin-k8s-") as f:
        f.write(text)
        f.flush()
        return subprocess.run(
            [binary, "check", "--config", f.name], capture_output=True, text=True, timeout=30
        )


def check_rpcpin_accepts(m: Manifests) -> list[str]:
    out = rpcpin_check(m.rpcpin, m.toml_text)
    if out.returncode != 0:
        return [f"`rpcpin check` refuses the ConfigMap's rpcpin.toml: {out.stderr.strip()}"]
    if "valid" not in out.stdout:
        return [f"`rpcpin check` printed no verdict: {out.stdout.strip()}"]
    return []


def check_config_for_production(m: Manifests) -> list[str]:
    problems = []
    c = m.config
    if (c.get("log") or {}).get("format") != "json":
        problems.append('log.format must be "json" (kubectl logs and log shippers read JSON lines)')
    if "listen" not in (c.get("admin") or {}):
        problems.append("admin.listen is needed: the probes and Prometheus use it")
    ls = listeners(m)
    public = [l for l in ls if l.public_port is not None]
    if "advertise" not in (c.get("epm") or {}) and not all(l.proxy_protocol for l in public):
        problems.append(
            "epm.advertise must be set (the LoadBalancer's address): otherwise towers carry the pod's IP"
        )
    for l in ls:
        try:
            unspecified = ipaddress.ip_address(l.addr).is_unspecified
        except ValueError:
            unspecified = False
        if not unspecified:
            problems.append(
                f"{l.key} listens on {l.addr}: only 0.0.0.0 or [::] is reachable through the pod's IP"
            )
    return problems


def check_ports(m: Manifests) -> list[str]:
    problems = []
    svc = m.one("Service")["spec"]
    cports = {
        p["containerPort"]: p for p in m.container.get("ports", []) if p.get("protocol", "TCP") == "TCP"
    }
    # Service port number -> the container port it sends to.
    targets = {}
    for p in svc.get("ports", []):
        if p.get("protocol", "TCP") != "TCP":
            problems.append(f"Service port {p.get('name', p['port'])} is not TCP")
        target = container_port(m, p.get("targetPort", p["port"]))
        if target is None:
            problems.append(f"Service port {p['port']}: targetPort {p.get('targetPort')!r} names no container port")
        targets[p["port"]] = target
    listened = {}
    for l in listeners(m):
        listened[l.port] = l
        if l.port not in cports:
            problems.append(f"{l.key} port {l.port} is not a TCP containerPort of the rpcpin container")
        serving = [port for port, t in targets.items() if t == l.port]
        if l.public_port is None:
            if serving:
                problems.append(
                    f"Service port {serving} exposes the admin port {l.port} on the load balancer"
                )
            continue
        if l.public_port not in serving:
            problems.append(
                f"{l.key} (port {l.port}): no Service port {l.public_port} targets it "
                f"(clients are sent to {l.public_port}); Service ports targeting it: {serving}"
            )
    for port, t in targets.items():
        if t is not None and t not in listened:
            problems.append(f"Service port {port} targets container port {t}, where nothing listens")
    return problems


def check_probes(m: Manifests) -> list[str]:
    problems = []
    admin = [l for l in listeners(m) if l.key == "admin.listen"]
    if not admin:
        return ["no admin.listen to probe"]
    port = admin[0].port
    for kind, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        probe = m.container.get(kind)
        if not probe or "httpGet" not in probe:
            problems.append(f"{kind}: missing, or not an httpGet")
            continue
        get = probe["httpGet"]
        if get.get("path") != path:
            problems.append(f"{kind}: path {get.get('path')!r}, expected {path}")
        if get.get("scheme", "HTTP") != "HTTP":
            problems.append(f"{kind}: scheme {get.get('scheme')}, the admin listener speaks HTTP")
        target = container_port(m, get.get("port"))
        if target != port:
            problems.append(f"{kind}: port {get.get('port')!r}, but admin.listen's port is {port}")
    return problems


def check_drain(m: Manifests) -> list[str]:
    limits = m.config.get("limits") or {}
    drain = parse_duration(limits["drain_timeout"]) if "drain_timeout" in limits else DEFAULT_DRAIN
    grace = m.pod.get("terminationGracePeriodSeconds", 30)
    sleep = prestop_sleep(m)
    if grace <= drain + sleep:
        return [
            f"terminationGracePeriodSeconds {grace} must exceed limits.drain_timeout {drain:g} s "
            f"+ preStop sleep {sleep:g} s, or the kubelet kills rpcpin mid-drain"
        ]
    return []


def check_security(m: Manifests) -> list[str]:
    problems = []
    pod_sc = m.pod.get("securityContext") or {}
    sc = m.container.get("securityContext") or {}

    def effective(key):
        return sc.get(key, pod_sc.get(key))

    if effective("runAsNonRoot") is not True:
        problems.append("runAsNonRoot must be true")
    uid = effective("runAsUser")
    image_user = re.search(r"^USER\s+(\S+)", m.dockerfile, re.M)
    image_uid = image_user.group(1).split(":")[0] if image_user else None
    if uid is None and not (image_uid or "").isdigit():
        problems.append(
            "runAsUser is unset and the image's USER is not a number: the kubelet cannot "
            "prove the user non-root"
        )
    elif uid is not None and (not isinstance(uid, int) or uid == 0):
        problems.append(f"runAsUser must be a non-zero number (is {uid!r})")
    if sc.get("readOnlyRootFilesystem") is not True:
        problems.append("readOnlyRootFilesystem must be true")
    if sc.get("allowPrivilegeEscalation") is not False:
        problems.append("allowPrivilegeEscalation must be false")
    if sc.get("privileged"):
        problems.append("privileged must not be set")
    caps = sc.get("capabilities") or {}
    if caps.get("drop") != ["ALL"]:
        problems.append(f"capabilities.drop must be [ALL], is {caps.get('drop')}")
    added = caps.get("add") or []
    if set(added) - {"NET_BIND_SERVICE"}:
        problems.append(f"capabilities.add may hold NET_BIND_SERVICE only, holds {added}")
    if re.search(r"setcap\s+cap_net_bind_service", m.dockerfile) and "NET_BIND_SERVICE" not in added:
        problems.append(
            "the Dockerfile gives the binary a file capability: without NET_BIND_SERVICE in "
            "capabilities.add the kernel refuses to run it"
        )
    low = [l for l in listeners(m) if l.port < 1024]
    sysctls = {s["name"]: s["value"] for s in pod_sc.get("sysctls") or []}
    start = sysctls.get("net.ipv4.ip_unprivileged_port_start")
    for l in low:
        if start is None or int(start) > l.port:
            problems.append(
                f"{l.key} port {l.port} is privileged: with allowPrivilegeEscalation false "
                "(no_new_privs) the binary's file capability cannot be relied on, so the pod "
                f"needs the sysctl net.ipv4.ip_unprivileged_port_start <= {l.port}"
            )
    return problems


def check_config_mount(m: Manifests) -> list[str]:
    problems = []
    c = m.container
    if "command" in c:
        problems.append("the container sets command: the image's ENTRYPOINT (rpcpin) must stay")
    if not re.search(r'^ENTRYPOINT\s+\["/usr/local/bin/rpcpin"\]', m.dockerfile, re.M):
        problems.append("the Dockerfile's ENTRYPOINT is no longer /usr/local/bin/rpcpin")
    args = c.get("args") or []
    if len(args) < 3 or args[0] != "run" or "--config" not in args:
        return problems + [f"args {args} are not `run --config FILE`"]
    config_path = args[args.index("--config") + 1]
    cm_name = m.one("ConfigMap")["metadata"]["name"]
    mounted = []
    volumes = {v["name"]: v for v in m.pod.get("volumes", [])}
    for vm in c.get("volumeMounts", []):
        v = volumes.get(vm["name"], {})
        if (v.get("configMap") or {}).get("name") != cm_name:
            continue
        items = v["configMap"].get("items")
        keys = {i["key"]: i["path"] for i in items} if items else {"rpcpin.toml": "rpcpin.toml"}
        if "rpcpin.toml" in keys:
            if "subPath" in vm:
                problems.append("the config is mounted with subPath: a ConfigMap change would never reach the pod")
                mounted.append(vm["mountPath"])
            else:
                mounted.append(f"{vm['mountPath'].rstrip('/')}/{keys['rpcpin.toml']}")
    if config_path not in mounted:
        problems.append(f"--config {config_path} is not where the ConfigMap's rpcpin.toml is mounted ({mounted})")
    return problems


def check_service_and_selectors(m: Manifests) -> list[str]:
    problems = []
    svc = m.one("Service")["spec"]
    dep = m.one("Deployment")["spec"]
    if svc.get("type") != "LoadBalancer":
        problems.append(f"Service type is {svc.get('type')}, expected LoadBalancer")
    if svc.get("externalTrafficPolicy") != "Local":
        problems.append("Service externalTrafficPolicy must be Local, or the client's address is lost to SNAT")
    labels = dep["template"]["metadata"].get("labels") or {}
    for what, selector in (
        ("Service selector", svc.get("selector") or {}),
        ("Deployment selector", (dep.get("selector") or {}).get("matchLabels") or {}),
    ):
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            problems.append(f"{what} {selector} does not match the pod labels {labels}")
    if dep.get("replicas", 1) < 2:
        problems.append("replicas must be at least 2")
    annotations = m.one("Service")["metadata"].get("annotations") or {}
    asked = any(ok(str(annotations[a])) for a, ok in PROXY_ANNOTATIONS.items() if a in annotations)
    public = [l for l in listeners(m) if l.public_port is not None]
    flags = {l.proxy_protocol for l in public}
    if len(flags) > 1:
        problems.append("proxy_protocol differs between listeners behind the same load balancer")
    if asked and flags != {True}:
        problems.append("the Service asks the load balancer for PROXY headers, but rpcpin does not expect them")
    return problems


CHECKS = [
    ("schema", "manifests validate against the Kubernetes JSON schemas " + "/".join(KUBE_VERSIONS) + " (strict)", check_schema),
    ("kustomization", "kustomization.yaml lists every manifest", check_kustomization),
    ("rpcpin-check", "`rpcpin check` accepts the ConfigMap's rpcpin.toml", check_rpcpin_accepts),
    ("config", "rpcpin.toml: JSON logs, admin.listen, epm.advertise, listeners on every address", check_config_for_production),
    ("ports", "every listener is a containerPort and (but admin) a Service port clients are sent to", check_ports),
    ("probes", "liveness /healthz and readiness /readyz on admin.listen's port", check_probes),
    ("drain", "terminationGracePeriodSeconds > drain_timeout + preStop sleep", check_drain),
    ("security", "non-root, read-only root, no privilege escalation, NET_BIND_SERVICE only", check_security),
    ("config-mount", "the ConfigMap is mounted where --config reads it", check_config_mount),
    ("service", "LoadBalancer, externalTrafficPolicy Local, selectors, replicas, PROXY protocol agreement", check_service_and_selectors),
]


def run_check(fn, m: Manifests) -> list[str]:
    try:
        return fn(m)
    except Failure as e:
        return [str(e)]
    except (KeyError, TypeError, ValueError) as e:
        return [f"malformed manifest: {type(e).__name__}: {e}"]


# --- the self-test: faults each check must catch --------------------------------------------


def set_toml(m: Manifests, old: str, new: str) -> None:
    data = m.one("ConfigMap")["data"]
    assert old in data["rpcpin.toml"], old
    data["rpcpin.toml"] = data["rpcpin.toml"].replace(old, new, 1)


def service_port(m: Manifests, name: str) -> dict:
    return next(p for p in m.one("Service")["spec"]["ports"] if p["name"] == name)


FAULTS = [
    ("schema", "a misspelt field", lambda m: m.one("Service")["spec"].update(externalTraficPolicy="Local")),
    ("schema", "a port as a string", lambda m: m.container["ports"][0].update(containerPort="135")),
    ("kustomization", "a manifest left out", lambda m: m.kustomization["resources"].pop()),
    ("rpcpin-check", "an unknown interface alias", lambda m: set_toml(m, '"rfr"', '"rfx"')),
    ("rpcpin-check", "an unknown key", lambda m: set_toml(m, "[log]", "[log]\ncolour = true")),
    ("rpcpin-check", "a bad [admin] key", lambda m: set_toml(m, "[admin]", "[admin]\nport = 9135")),
    ("rpcpin-check", "a drain without unit", lambda m: set_toml(m, 'drain_timeout = "30s"', 'drain_timeout = "30"')),
    ("config", "text logs", lambda m: set_toml(m, 'format = "json"', 'format = "text"')),
    ("config", "admin on loopback", lambda m: set_toml(m, '"0.0.0.0:9135"', '"127.0.0.1:9135"')),
    ("ports", "a pin moved to another port", lambda m: set_toml(m, '"0.0.0.0:6001"', '"0.0.0.0:6002"')),
    ("ports", "a pin's advertised port no Service port uses", lambda m: set_toml(m, 'listen = "0.0.0.0:6004"', 'listen = "0.0.0.0:6004"\nadvertise_port = 7004')),
    ("ports", "a containerPort missing", lambda m: m.container["ports"].pop(1)),
    ("ports", "the admin port on the load balancer", lambda m: m.one("Service")["spec"]["ports"].append({"name": "admin", "port": 9135, "targetPort": "admin", "protocol": "TCP"})),
    ("ports", "the EPM published on another port", lambda m: service_port(m, "epm").update(port=1135)),
    ("probes", "readiness on the wrong port", lambda m: m.container["readinessProbe"]["httpGet"].update(port=6001)),
    ("probes", "liveness on the wrong path", lambda m: m.container["livenessProbe"]["httpGet"].update(path="/readyz")),
    ("probes", "admin moved, probes left behind", lambda m: set_toml(m, '"0.0.0.0:9135"', '"0.0.0.0:9136"')),
    ("drain", "a grace period equal to the drain", lambda m: m.pod.update(terminationGracePeriodSeconds=30)),
    ("drain", "a drain longer than the grace period", lambda m: set_toml(m, 'drain_timeout = "30s"', 'drain_timeout = "2m"')),
    ("security", "escalation allowed", lambda m: m.container["securityContext"].update(allowPrivilegeEscalation=True)),
    ("security", "an extra capability", lambda m: m.container["securityContext"]["capabilities"].update(add=["NET_BIND_SERVICE", "NET_RAW"])),
    ("security", "no NET_BIND_SERVICE in the bounding set", lambda m: m.container["securityContext"]["capabilities"].pop("add")),
    ("security", "no sysctl for port 135", lambda m: m.pod["securityContext"].pop("sysctls")),
    ("security", "root", lambda m: m.pod["securityContext"].update(runAsUser=0)),
    ("security", "a writable root filesystem", lambda m: m.container["securityContext"].update(readOnlyRootFilesystem=False)),
    ("config-mount", "config mounted elsewhere", lambda m: m.container["volumeMounts"][0].update(mountPath="/etc/rpcpin.d")),
    ("config-mount", "another ConfigMap", lambda m: m.pod["volumes"][0]["configMap"].update(name="other")),
    ("service", "ClusterIP", lambda m: m.one("Service")["spec"].update(type="ClusterIP")),
    ("service", "externalTrafficPolicy Cluster", lambda m: m.one("Service")["spec"].update(externalTrafficPolicy="Cluster")),
    ("service", "a selector matching no pod", lambda m: m.one("Service")["spec"]["selector"].update({"app.kubernetes.io/name": "rpcpin2"})),
    ("service", "PROXY headers rpcpin does not expect", lambda m: m.one("Service")["metadata"].setdefault("annotations", {}).update({"service.beta.kubernetes.io/aws-load-balancer-proxy-protocol": "*"})),
]


def main() -> int:
    rpcpin = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "target" / "release" / "rpcpin")
    if not os.access(rpcpin, os.X_OK):
        print(f"check_kubernetes: {rpcpin} is not an executable (cargo build --release first)", file=sys.stderr)
        return 2
    manifests = load(rpcpin)
    passed = failed = 0

    def report(ok: bool, what: str, evidence: list[str]) -> None:
        nonlocal passed, failed
        print(f"{'PASS' if ok else 'FAIL'}: {what}")
        for line in evidence:
            print(f"    {line}")
        passed, failed = passed + ok, failed + (not ok)

    for name, what, fn in CHECKS:
        problems = run_check(fn, manifests)
        report(not problems, f"k8s {name}: {what}", problems)

    by_name = {name: fn for name, _, fn in CHECKS}
    for name, what, fault in FAULTS:
        broken = copy.deepcopy(manifests)
        fault(broken)
        problems = run_check(by_name[name], broken)
        evidence = [problems[0]] if problems else ["not caught"]
        report(bool(problems), f"k8s self-test: {name} catches {what}", evidence)

    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
