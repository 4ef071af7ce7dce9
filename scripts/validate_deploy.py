#!/usr/bin/env python3
"""Structural checks of UniLink's deployment files, beyond schema validity.

Used by scripts/validate-deploy.sh; needs only PyYAML (installed with
yamllint). Each subcommand prints what it checked and exits 1 listing every
problem found.

  k8s FILE {base,production}   rendered kustomize output (production: also
                               the PostgreSQL connection budget)
  budget-selftest FILE         proves the budget check fails when the
                               rendered production overlay could exceed
                               its declared max_connections
  drain-selftest FILE          proves the drain check (preStop sleep +
                               SHUTDOWN_GRACE_SECONDS + margin within
                               terminationGracePeriodSeconds) refuses
                               variants of the rendered overlay that overrun
  alerts RULES TESTS           every alert has a firing and a silent test
  grafana DASHBOARD OUT_RULES  dashboard shape; writes its PromQL as a rule
                               file for `promtool check rules`
  compose FILE                 docker-compose.yml wiring
  prometheusrule RULES OUT     writes the PrometheusRule of RULES (alerts.yml)
                               to OUT (k8s/monitoring/prometheusrule.yaml)
  monitoring FILE RULES        rendered production overlay: PrometheusRule
                               equal to RULES, ServiceMonitor on every
                               service, both against k8s/schemas; self-test
  secrets FILE                 rendered overlay: each workload gets only the
                               keys of unilink-secrets it uses; self-test
  workflow DEPLOY TESTS        .github/workflows/deploy.yml: tests gate it,
                               images carry an SBOM, the migration Job
                               completes before the Deployments change, the
                               rollout is waited for and rolled back on
                               failure; self-test
  turn CONF COMPOSE PROD TURN  coturn: the shipped turnserver.conf (denied
                               peers, relay range, options), compose's and
                               the rendered k8s (production overlay, k8s/turn)
                               wiring: one secret shared with signaling
  turn-selftest CONF COMPOSE PROD TURN
                               proves each turn check refuses a broken variant
  crds FILE                    objects of CustomResourceDefinitions (KEDA's
                               ScaledObject) against the schemas vendored in
                               k8s/schemas/<group>/<kind>_<version>.json
  autoscaling-selftest FILE    proves the autoscaling checks refuse broken
                               variants of the rendered production overlay
                               (wrong metric, no scale-down stabilization…)
"""
import copy
import ipaddress
import json
import math
import os
import re
import subprocess
import sys
import tempfile

import yaml

SERVICES = ["gateway", "auth", "profile", "signaling", "notification"]
BACKENDS = SERVICES[1:]
# Who may call whom over gRPC (port 50051).
CALLERS = {
    "auth": {"gateway"},
    "profile": {"gateway", "signaling"},
    "signaling": {"gateway"},
    "notification": {"gateway"},
}

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where the stores' CA certificates are mounted (Secret unilink-datastore-ca).
DATASTORE_CA_DIR = "/etc/unilink/datastore-ca"
# The budget declaration of the production overlay and its keys.
BUDGET_CONFIGMAP = "unilink-database-budget"
BUDGET_KEYS = ("DATABASE_MAX_CONNECTIONS", "DATABASE_SUPERUSER_RESERVED_CONNECTIONS", "DATABASE_HEADROOM_CONNECTIONS")
# unilink-config's defaults when neither the Deployment nor the ConfigMap
# sets a pool size (crates/config/src/lib.rs).
POOL_DEFAULTS = {"DATABASE_POOL_SIZE": 20, "DATABASE_MAX_OVERFLOW": 40}

problems = []


def check(cond, msg):
    if not cond:
        problems.append(msg)
    return cond


def finish(what):
    if problems:
        for p in problems:
            print(f"  FAIL {what}: {p}", file=sys.stderr)
        print(f"{what}: {len(problems)} problem(s)", file=sys.stderr)
        sys.exit(1)
    print(f"{what}: all checks passed")


def env_map(container):
    return {e["name"]: e for e in container.get("env", [])}


def env_value(container, name):
    e = env_map(container).get(name)
    return None if e is None else e.get("value", e.get("valueFrom"))


# ------------------------------------------------------------------ k8s --
def check_k8s(path, flavour):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d

    check("Secret" not in by_kind, "a Secret is rendered: the template must never be applied over the real one")
    cm = by_kind.get("ConfigMap", {}).get("unilink-config")
    if check(cm is not None, "ConfigMap unilink-config missing"):
        for key in ["ENVIRONMENT", "ALLOWED_ORIGINS", "SMTP_SERVER", "SMTP_PORT", "EMAIL_FROM",
                    "OTEL_EXPORTER_OTLP_ENDPOINT", "LOG_LEVEL"]:
            check(key in cm.get("data", {}), f"ConfigMap lacks {key}")
        check(cm["data"].get("ENVIRONMENT") == "production", "ConfigMap ENVIRONMENT is not production")
        check("*" not in cm["data"].get("ALLOWED_ORIGINS", ""), "wildcard in ALLOWED_ORIGINS")
        check(cm["data"].get("ALGORITHM", "EdDSA") == "EdDSA",
              "ConfigMap ALGORITHM is not EdDSA (HS256 hands the signing secret to the gateways)")
        check(cm["data"].get("SMTP_TLS", "required") in ("required", "implicit"),
              "ConfigMap SMTP_TLS allows a plaintext fallback")
        if flavour == "production":
            # Behind the Ingress every client would otherwise have the
            # controller's address and share its rate limits.
            proxies = [p.strip() for p in cm["data"].get("TRUSTED_PROXIES", "").split(",") if p.strip()]
            check(proxies, "ConfigMap sets no TRUSTED_PROXIES (the Ingress controller's pod CIDR)")
            for p in proxies:
                try:
                    ipaddress.ip_network(p, strict=False)
                except ValueError:
                    check(False, f"ConfigMap TRUSTED_PROXIES: {p!r} is not an address or CIDR range")

    deployments = by_kind.get("Deployment", {})
    check(sorted(deployments) == sorted(SERVICES), f"Deployments {sorted(deployments)} != {sorted(SERVICES)}")
    for name, dep in deployments.items():
        where = f"Deployment {name}"
        spec = dep["spec"]
        check("replicas" not in spec, f"{where}: sets replicas (the HPA owns it)")
        pod = spec["template"]["spec"]
        labels = spec["template"]["metadata"].get("labels", {})
        check(labels.get("app.kubernetes.io/name") == name, f"{where}: pod label app.kubernetes.io/name")
        check(labels.get("app.kubernetes.io/part-of") == "unilink", f"{where}: pod label part-of=unilink")
        check(pod.get("terminationGracePeriodSeconds") == 30, f"{where}: terminationGracePeriodSeconds != 30")
        check(pod.get("automountServiceAccountToken") is False, f"{where}: service account token mounted")
        psc = pod.get("securityContext", {})
        check(psc.get("runAsNonRoot") is True, f"{where}: pod runAsNonRoot")
        check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: seccomp RuntimeDefault")
        containers = pod["containers"]
        check(len(containers) == 1, f"{where}: expected one container")
        c = containers[0]
        image = c["image"]
        check(image.split(":")[0] == f"ghcr.io/unilink/unilink-{name}", f"{where}: image {image}")
        if flavour == "production":
            check(":" in image and not image.endswith(":latest"), f"{where}: image {image} has no pinned tag")
        sc = c.get("securityContext", {})
        check(sc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem")
        check(sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation")
        check("ALL" in sc.get("capabilities", {}).get("drop", []), f"{where}: capabilities drop ALL")
        res = c.get("resources", {})
        for k in ("requests", "limits"):
            for r in ("cpu", "memory"):
                check(r in res.get(k, {}), f"{where}: resources.{k}.{r}")
        check(env_value(c, "SHUTDOWN_GRACE_SECONDS") == "20", f"{where}: SHUTDOWN_GRACE_SECONDS != 20")
        pre = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
        check(pre[:1] == ["sleep"], f"{where}: preStop sleep")
        refs = {r.get("configMapRef", {}).get("name") for r in c.get("envFrom", [])}
        check("unilink-config" in refs, f"{where}: envFrom unilink-config")
        # Each secret goes only where it is needed: SECRET_KEY (login-code
        # pepper) to auth, EVENT_SEAL_KEYS (sealed codes in events) to auth
        # and notification, the EdDSA private key to auth.
        needed = {"DATABASE_URL", "REDIS_URL", "SENTRY_DSN"}
        if name == "auth":
            needed |= {"SECRET_KEY", "EVENT_SEAL_KEYS"}
        if name == "notification":
            needed |= {"EVENT_SEAL_KEYS"}
        for secret_key in sorted(needed):
            e = env_map(c).get(secret_key, {})
            ref = e.get("valueFrom", {}).get("secretKeyRef", {})
            check(ref.get("name") == "unilink-secrets" and ref.get("key") == secret_key,
                  f"{where}: {secret_key} from Secret unilink-secrets")
        for secret_key in {"SECRET_KEY", "EVENT_SEAL_KEYS"} - needed:
            check(secret_key not in env_map(c), f"{where}: must not receive {secret_key}")
        jwt_volumes = [v for v in pod.get("volumes", [])
                       if v.get("secret", {}).get("secretName") == "unilink-jwt-keys"]
        if name == "auth":
            check(len(jwt_volumes) == 1, f"{where}: mounts Secret unilink-jwt-keys")
            mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
            if jwt_volumes:
                m = mounts.get(jwt_volumes[0]["name"], {})
                check(m.get("readOnly") is True, f"{where}: JWT keys mounted read-only")
                for var, file in (("JWT_PRIVATE_KEY_FILE", "private.pem"), ("JWT_PUBLIC_KEY_FILE", "public.pem")):
                    check(env_value(c, var) == f"{m.get('mountPath')}/{file}", f"{where}: {var} in the mounted Secret")
        else:
            check(not jwt_volumes, f"{where}: only auth may mount the signing keys")
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        live = c.get("livenessProbe", {}).get("httpGet", {})
        ready = c.get("readinessProbe", {}).get("httpGet", {})
        if name == "gateway":
            check(env_value(c, "HTTP_ADDR") == "0.0.0.0:8000", f"{where}: HTTP_ADDR")
            check(ports == {"http": 8000}, f"{where}: ports {ports}")
            # /health answers 503 while any dependency is down, which would
            # take every gateway out of the Ingress at once; /readyz only
            # while this replica drains.
            check(ready.get("path") == "/readyz" and ready.get("port") in ("http", 8000), f"{where}: readiness /readyz :8000")
            check(live.get("path") == "/livez" and live.get("port") in ("http", 8000), f"{where}: liveness /livez :8000")
            for b in BACKENDS:
                var = f"{b.upper()}_GRPC_URL"
                check(env_value(c, var) == f"http://{b}:50051", f"{where}: {var}")
        else:
            check(env_value(c, "GRPC_ADDR") == "0.0.0.0:50051", f"{where}: GRPC_ADDR")
            check(env_value(c, "HTTP_ADDR") == "0.0.0.0:9090", f"{where}: HTTP_ADDR")
            check(ports == {"grpc": 50051, "http": 9090}, f"{where}: ports {ports}")
            check(ready.get("path") == "/readyz" and ready.get("port") in ("http", 9090), f"{where}: readiness /readyz :9090")
            check(live.get("path") == "/livez" and live.get("port") in ("http", 9090), f"{where}: liveness /livez :9090")
            # Start-up waits for the database instead of crash-looping; the
            # startup probe must not kill it while it waits.
            sp = c.get("startupProbe", {})
            window = sp.get("periodSeconds", 10) * sp.get("failureThreshold", 3) + sp.get("initialDelaySeconds", 0)
            check(window >= startup_retry_seconds(),
                  f"{where}: startupProbe allows {window}s, less than the {startup_retry_seconds()}s start-up "
                  "waits for the database (DATABASE_STARTUP_RETRY in crates/runtime)")
            for var in POOL_DEFAULTS:
                check(var in env_map(c) and "value" in env_map(c)[var],
                      f"{where}: sets no {var} of its own (the connection budget is per Deployment)")
        if name == "signaling":
            check(env_value(c, "PROFILE_GRPC_URL") == "http://profile:50051", f"{where}: PROFILE_GRPC_URL")
        if name == "notification":
            for k in ("SMTP_USER", "SMTP_PASSWORD"):
                check(k in env_map(c), f"{where}: {k}")

    services = by_kind.get("Service", {})
    for name in SERVICES:
        svc = services.get(name)
        if not check(svc is not None, f"Service {name} missing"):
            continue
        ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
        check(svc["spec"].get("selector", {}).get("app.kubernetes.io/name") == name, f"Service {name}: selector")
        if name == "gateway":
            check(ports.get("http") == 8000, f"Service gateway: port http 8000 ({ports})")
        else:
            check(svc["spec"].get("clusterIP") == "None", f"Service {name}: not headless")
            check(ports == {"grpc": 50051, "http": 9090}, f"Service {name}: ports {ports}")

    problems.extend(drain_problems(docs))

    hpas = by_kind.get("HorizontalPodAutoscaler", {})
    for name in SERVICES:
        if name in SCALING_METRICS:
            # A KEDA ScaledObject (autoscaling_problems below).
            continue
        hpa = hpas.get(name)
        if not check(hpa is not None, f"HPA {name} missing"):
            continue
        s = hpa["spec"]
        check(s["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}, f"HPA {name}: target")
        check(s.get("minReplicas", 1) >= 2, f"HPA {name}: minReplicas < 2 (PDB would block drains)")
        kinds = {(m["type"], (m.get("resource") or m.get("pods") or {}).get("name") or
                  (m.get("pods") or {}).get("metric", {}).get("name")) for m in s["metrics"]}
        check(("Resource", "cpu") in kinds, f"HPA {name}: no CPU metric")
    problems.extend(autoscaling_problems(docs))

    pdbs = by_kind.get("PodDisruptionBudget", {})
    for name in SERVICES:
        pdb = pdbs.get(name)
        if check(pdb is not None, f"PDB {name} missing"):
            check(pdb["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": name}, f"PDB {name}: selector")

    # Network policies: default deny, ingress only from the callers.
    nps = by_kind.get("NetworkPolicy", {})
    deny = nps.get("default-deny-all")
    check(deny is not None and deny["spec"]["podSelector"] == {} and
          sorted(deny["spec"]["policyTypes"]) == ["Egress", "Ingress"], "default-deny-all missing or incomplete")

    def selects(np, name):
        sel = np["spec"]["podSelector"]
        if sel == {}:
            return True
        if sel.get("matchLabels", {}).get("app.kubernetes.io/name") == name:
            return True
        for ex in sel.get("matchExpressions", []):
            if ex["key"] == "app.kubernetes.io/name" and ex["operator"] == "In" and name in ex["values"]:
                return True
        return False

    def peer_names(peer):
        ps = peer.get("podSelector")
        if ps is None:
            return None
        if "matchLabels" in ps:
            return {ps["matchLabels"].get("app.kubernetes.io/name")}
        out = set()
        for ex in ps.get("matchExpressions", []):
            out |= set(ex["values"])
        return out

    for name in SERVICES:
        pod_callers, ns_callers, ports_open = set(), set(), set()
        for np in nps.values():
            if not selects(np, name) or "Ingress" not in np["spec"].get("policyTypes", []):
                continue
            for rule in np["spec"].get("ingress", []):
                rports = {p["port"] for p in rule.get("ports", [])}
                check(rule.get("from"), f"NetworkPolicy {np['metadata']['name']}: ingress rule without 'from' opens {name} to everyone")
                check(rports, f"NetworkPolicy {np['metadata']['name']}: ingress rule without ports")
                ports_open |= rports
                for peer in rule.get("from", []):
                    check("ipBlock" not in peer, f"NetworkPolicy {np['metadata']['name']}: ipBlock ingress to {name}")
                    names = peer_names(peer)
                    if names is not None:
                        pod_callers |= names
                    else:
                        ns = peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
                        ns_callers.add((ns, frozenset(rports)))
        if name == "gateway":
            check(("ingress-nginx", frozenset({8000})) in ns_callers, "gateway not reachable from the ingress-nginx namespace")
            check(not pod_callers, f"gateway: unexpected pod callers {pod_callers}")
        else:
            check(pod_callers == CALLERS[name], f"{name}: callers {sorted(pod_callers)} != {sorted(CALLERS[name])}")
            for ns, ports in ns_callers:
                check(50051 not in ports, f"{name}: gRPC port open to namespace {ns}")
                check(ns != "ingress-nginx", f"{name}: reachable from the ingress controller")

    egress_ports = {}
    for np in nps.values():
        for rule in np["spec"].get("egress", []):
            for p in rule.get("ports", []):
                egress_ports.setdefault(p["port"], set()).add(np["metadata"]["name"])
    for port in (53, 5432, 6379, 26379, 4317, 587, 465, 25):
        check(port in egress_ports, f"no egress rule for port {port}")

    job = by_kind.get("Job", {}).get("unilink-migrate")
    if check(job is not None, "Job unilink-migrate missing"):
        pod = job["spec"]["template"]["spec"]
        cmds = [c.get("command") for c in pod.get("initContainers", []) + pod["containers"]]
        for b in BACKENDS:
            check([f"unilink-{b}", "migrate"] in cmds, f"Job: no `unilink-{b} migrate`")
        for c in pod.get("initContainers", []) + pod["containers"]:
            check(c.get("securityContext", {}).get("readOnlyRootFilesystem") is True, f"Job {c['name']}: readOnlyRootFilesystem")
            check("ALL" in c.get("securityContext", {}).get("capabilities", {}).get("drop", []), f"Job {c['name']}: drop ALL")
            if flavour == "production":
                check(":" in c["image"], f"Job {c['name']}: image {c['image']} untagged")

    ing = by_kind.get("Ingress", {}).get("unilink")
    if check(ing is not None, "Ingress unilink missing"):
        ann = ing["metadata"].get("annotations", {})
        check(any(k.startswith("cert-manager.io/") for k in ann), "Ingress: no cert-manager annotation")
        check(int(ann.get("nginx.ingress.kubernetes.io/proxy-read-timeout", "0")) >= 3600, "Ingress: proxy-read-timeout < 3600")
        check(int(ann.get("nginx.ingress.kubernetes.io/proxy-send-timeout", "0")) >= 3600, "Ingress: proxy-send-timeout < 3600")
        check(ing["spec"].get("tls"), "Ingress: no TLS")
        paths = set()
        for rule in ing["spec"]["rules"]:
            for p in rule["http"]["paths"]:
                check(p["backend"]["service"]["name"] == "gateway", "Ingress: a path not going to the gateway")
                paths.add(p["path"])
        for p in ("/auth", "/users", "/calls", "/ws", "/admin", "/health"):
            check(p in paths, f"Ingress: no path {p}")
        check("/metrics" not in paths and "/" not in {p["path"] for r in ing["spec"]["rules"]
                                                     for p in r["http"]["paths"] if p["pathType"] == "Prefix"},
              "Ingress: /metrics exposed publicly")

    if flavour == "production":
        check_datastore_ca(by_kind)
        report = connection_budget(docs)
        print_budget(report)
        problems.extend(report["problems"])
        for d in docs:
            if d["kind"] != "Namespace":
                check(d["metadata"].get("namespace") == "unilink", f"{d['kind']} {d['metadata']['name']}: namespace")
        check("unilink" in by_kind.get("Namespace", {}), "Namespace unilink missing")
    else:
        for d in docs:
            check("namespace" not in d["metadata"], f"base {d['kind']} {d['metadata']['name']} sets a namespace")
    finish(f"k8s policy ({flavour}, {len(docs)} objects)")


def startup_retry_seconds():
    """DATABASE_STARTUP_RETRY of crates/runtime: how long start-up waits for the database."""
    path = os.path.join(ROOT, "crates", "runtime", "src", "lib.rs")
    m = re.search(r"const DATABASE_STARTUP_RETRY: Duration = Duration::from_secs\((\d+)\)", open(path).read())
    if not m:
        sys.exit(f"cannot find DATABASE_STARTUP_RETRY in {path}")
    return int(m.group(1))


# What a process may take past its SHUTDOWN_GRACE_SECONDS deadline before it
# exits: a backend's last probe round (at most 1 s) and its probe/metrics
# server (at most 2 s, crates/grpc/src/server.rs); the gateway exits within
# 0.1 s of its deadline (services/gateway/tests/operations.rs measures it).
DRAIN_MARGIN_SECONDS = 3


def shutdown_grace_default():
    """SHUTDOWN_GRACE_SECONDS's default in crates/config."""
    path = os.path.join(ROOT, "crates", "config", "src", "lib.rs")
    m = re.search(r'"SHUTDOWN_GRACE_SECONDS",\s*(\d+)', open(path).read())
    if not m:
        sys.exit(f"cannot find the SHUTDOWN_GRACE_SECONDS default in {path}")
    return int(m.group(1))


def drain_problems(docs):
    """Every UniLink Deployment drains within its pod's grace: preStop sleep
    (the balancers stop sending) + SHUTDOWN_GRACE_SECONDS (the process's one
    deadline) + DRAIN_MARGIN_SECONDS <= terminationGracePeriodSeconds, or the
    kubelet's SIGKILL cuts the drain short."""
    found = []
    config = {}
    for d in docs:
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "unilink-config":
            config = d.get("data") or {}
    for d in docs:
        name = d["metadata"]["name"]
        if d["kind"] != "Deployment" or name not in SERVICES:
            continue
        where = f"Deployment {name}"
        pod = d["spec"]["template"]["spec"]
        budget = pod.get("terminationGracePeriodSeconds", 30)
        for c in pod.get("containers", []):
            pre = c.get("lifecycle", {}).get("preStop", {})
            command = pre.get("exec", {}).get("command", [])
            try:
                if command[:1] == ["sleep"]:
                    sleep = float(command[1])
                elif "sleep" in pre:
                    sleep = float(pre["sleep"]["seconds"])
                elif not pre:
                    sleep = 0
                else:
                    found.append(f"drain budget: {where}: preStop {pre} takes an unknown time")
                    continue
                raw = env_value(c, "SHUTDOWN_GRACE_SECONDS")
                if raw is None:
                    raw = config.get("SHUTDOWN_GRACE_SECONDS", shutdown_grace_default())
                grace = float(raw)
            except (IndexError, KeyError, TypeError, ValueError) as e:
                found.append(f"drain budget: {where}: cannot read preStop sleep or SHUTDOWN_GRACE_SECONDS ({e})")
                continue
            need = sleep + grace + DRAIN_MARGIN_SECONDS
            if need > budget:
                found.append(f"drain budget: {where}: preStop sleep {sleep:g} s + SHUTDOWN_GRACE_SECONDS {grace:g} s "
                             f"+ margin {DRAIN_MARGIN_SECONDS} s = {need:g} s > terminationGracePeriodSeconds {budget}")
    return found


def drain_selftest(path):
    """Shows the drain check can fail: variants of the rendered overlay whose
    preStop sleep, grace or termination period overrun are refused, the exact
    fit accepted, and the real command exits 1."""
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    if drain_problems(docs):
        sys.exit(f"drain self-test: the rendered overlay itself fails: {drain_problems(docs)}")

    def deployment(ds, name):
        return next(d for d in ds if d["kind"] == "Deployment" and d["metadata"]["name"] == name)

    def container(ds, name):
        return deployment(ds, name)["spec"]["template"]["spec"]["containers"][0]

    def set_env(c, var, value):
        c["env"] = [e for e in c.get("env", []) if e["name"] != var]
        if value is not None:
            c["env"].append({"name": var, "value": str(value)})

    def variant(edit):
        ds = copy.deepcopy(docs)
        edit(ds)
        return ds

    def exact(ds):
        pod = deployment(ds, "gateway")["spec"]["template"]["spec"]
        set_env(container(ds, "gateway"), "SHUTDOWN_GRACE_SECONDS", 20)
        container(ds, "gateway")["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", "5"]}}}
        pod["terminationGracePeriodSeconds"] = 5 + 20 + DRAIN_MARGIN_SECONDS

    def one_short(ds):
        exact(ds)
        deployment(ds, "gateway")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] -= 1

    def longer_grace(ds):
        set_env(container(ds, "auth"), "SHUTDOWN_GRACE_SECONDS", 25)

    def longer_sleep(ds):
        container(ds, "signaling")["lifecycle"] = {"preStop": {"exec": {"command": ["sleep", "10"]}}}

    def native_sleep(ds):
        container(ds, "profile")["lifecycle"] = {"preStop": {"sleep": {"seconds": 10}}}

    def grace_from_configmap(ds):
        set_env(container(ds, "notification"), "SHUTDOWN_GRACE_SECONDS", None)
        next(d for d in ds if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "unilink-config")[
            "data"]["SHUTDOWN_GRACE_SECONDS"] = "40"

    def default_period(ds):
        deployment(ds, "gateway")["spec"]["template"]["spec"].pop("terminationGracePeriodSeconds", None)
        set_env(container(ds, "gateway"), "SHUTDOWN_GRACE_SECONDS", 23)

    cases = [
        ("gateway fits exactly (5 + 20 + margin)", variant(exact), True),
        ("gateway terminationGracePeriodSeconds one short", variant(one_short), False),
        ("auth SHUTDOWN_GRACE_SECONDS 25", variant(longer_grace), False),
        ("signaling preStop sleep 10", variant(longer_sleep), False),
        ("profile preStop sleep action of 10 s", variant(native_sleep), False),
        ("notification's grace from the ConfigMap (40)", variant(grace_from_configmap), False),
        ("gateway grace 23 under the default period (30)", variant(default_period), False),
    ]
    failures = 0
    for what, ds, should_pass in cases:
        found = drain_problems(ds)
        good = (not found) == should_pass
        failures += not good
        detail = f" ({found[0]})" if found else ""
        print(f"  {'ok' if good else 'WRONG'}: {what}: {'accepted' if not found else 'refused'}{detail}")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump_all(variant(longer_grace), f)
    try:
        run = subprocess.run([sys.executable, os.path.abspath(__file__), "k8s", f.name, "production"],
                             capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    e2e = run.returncode == 1 and "drain budget" in run.stderr
    failures += not e2e
    print(f"  {'ok' if e2e else 'WRONG'}: `validate_deploy.py k8s` on the auth grace 25 overlay exits {run.returncode}")
    if failures:
        sys.exit(f"drain self-test: {failures} case(s) not as expected")
    print(f"drain self-test: the check refuses every variant that overruns ({len(cases) + 1} cases)")


def pod_containers(obj):
    pod = obj["spec"]["template"]["spec"]
    return pod, pod.get("initContainers", []) + pod.get("containers", [])


def check_datastore_ca(by_kind):
    """Every container that talks to the stores can read their CA (production)."""
    cm = by_kind.get("ConfigMap", {}).get("unilink-config", {}).get("data", {})
    ca_file = cm.get("REDIS_CA_FILE")
    if ca_file:
        check(ca_file.startswith(DATASTORE_CA_DIR + "/"), f"REDIS_CA_FILE {ca_file} is not under {DATASTORE_CA_DIR}")
    for kind in ("Deployment", "Job"):
        for name, obj in by_kind.get(kind, {}).items():
            pod, containers = pod_containers(obj)
            vols = [v for v in pod.get("volumes", []) if v.get("secret", {}).get("secretName") == "unilink-datastore-ca"]
            if not check(len(vols) == 1, f"{kind} {name}: does not mount Secret unilink-datastore-ca"):
                continue
            check(vols[0]["secret"].get("optional") is True,
                  f"{kind} {name}: Secret unilink-datastore-ca not optional (clusters without a private CA would not start)")
            for c in containers:
                if not {"DATABASE_URL", "REDIS_URL"} & set(env_map(c)):
                    continue
                m = [m for m in c.get("volumeMounts", []) if m["name"] == vols[0]["name"]]
                check(m and m[0].get("mountPath") == DATASTORE_CA_DIR and m[0].get("readOnly") is True,
                      f"{kind} {name}/{c['name']}: datastore CA not mounted read-only at {DATASTORE_CA_DIR}")


def service_source(name):
    d = os.path.join(ROOT, "services", name, "src")
    text = ""
    for dirpath, _, files in os.walk(d):
        for f in sorted(files):
            if f.endswith(".rs"):
                text += open(os.path.join(dirpath, f)).read()
    return text


def gateway_pool():
    """The gateway's health-check pool, fixed in its code."""
    text = open(os.path.join(ROOT, "services", "gateway", "src", "startup.rs")).read()
    m = re.search(r"pool_size:\s*(\d+),\s*max_overflow:\s*(\d+)", text)
    if not m:
        sys.exit("cannot find the gateway's probe pool (pool_size/max_overflow) in services/gateway/src/startup.rs")
    return int(m.group(1)), int(m.group(2))


def int_or_percent(value, of):
    if isinstance(value, str) and value.endswith("%"):
        return math.ceil(int(value[:-1]) * of / 100)
    return int(value)


def connection_budget(docs):
    """The worst case of PostgreSQL connections the rendered manifests allow,
    against the max_connections declared in ConfigMap unilink-database-budget."""
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    out = {"rows": [], "problems": [], "read_rows": []}
    bad = out["problems"].append
    config = by_kind.get("ConfigMap", {}).get("unilink-config", {}).get("data", {})
    hpas = by_kind.get("HorizontalPodAutoscaler", {})
    total = 0
    for name, dep in sorted(by_kind.get("Deployment", {}).items()):
        containers = dep["spec"]["template"]["spec"]["containers"]
        if not any("DATABASE_URL" in env_map(c) for c in containers):
            continue
        hpa = hpas.get(name)
        scaled = by_kind.get("ScaledObject", {}).get(name)
        if hpa is None and scaled is None:
            bad(f"connection budget: Deployment {name} has no HPA or ScaledObject, so no bound on its replicas")
            continue
        # KEDA's default maxReplicaCount is 100.
        max_replicas = hpa["spec"]["maxReplicas"] if hpa else scaled["spec"].get("maxReplicaCount", 100)
        strategy = dep["spec"].get("strategy", {})
        surge = 0
        if strategy.get("type", "RollingUpdate") == "RollingUpdate":
            surge = int_or_percent(strategy.get("rollingUpdate", {}).get("maxSurge", "25%"), max_replicas)
        pods = max_replicas + 2 * surge
        c = containers[0]
        if name == "gateway":
            pool_size, overflow = gateway_pool()
            source = "fixed in services/gateway/src/startup.rs"
        else:
            values, sources = [], []
            for var, default in POOL_DEFAULTS.items():
                e = env_map(c).get(var)
                if e is not None and "value" in e:
                    values.append(int(e["value"]))
                    sources.append("env")
                elif e is not None:
                    bad(f"connection budget: Deployment {name}: {var} from {e.get('valueFrom')} cannot be checked")
                    values.append(default)
                    sources.append("?")
                elif var in config:
                    values.append(int(config[var]))
                    sources.append("ConfigMap")
                else:
                    values.append(default)
                    sources.append("default")
            pool_size, overflow = values
            source = "/".join(sorted(set(sources)))
        src = service_source(name)
        listeners = len(re.findall(r"outbox_relay::<", src))
        per_pod = pool_size + overflow + listeners
        need = pods * per_pod
        total += need
        out["rows"].append(dict(name=name, pods=pods, max_replicas=max_replicas, surge=surge, pool_size=pool_size,
                                overflow=overflow, listeners=listeners, per_pod=per_pod, need=need, source=source))
        if "read_pool(" in src:
            out["read_rows"].append((name, pods * (pool_size + overflow)))
    jobs = 0
    for name, job in sorted(by_kind.get("Job", {}).items()):
        pod, containers = pod_containers(job)
        if not any("DATABASE_URL" in env_map(c) for c in containers):
            continue
        # Init containers run one after another, then the main ones together.
        n = max(1 if pod.get("initContainers") else 0, len(pod.get("containers", [])))
        jobs += n * job["spec"].get("parallelism", 1)
    out["jobs"] = jobs
    total += jobs
    out["total"] = total
    decl = by_kind.get("ConfigMap", {}).get(BUDGET_CONFIGMAP)
    if decl is None:
        bad(f"connection budget: ConfigMap {BUDGET_CONFIGMAP} (DATABASE_MAX_CONNECTIONS…) is not rendered")
        return out
    data = decl.get("data", {})
    try:
        max_conn, reserved, headroom = (int(data[k]) for k in BUDGET_KEYS)
    except (KeyError, ValueError) as e:
        bad(f"connection budget: ConfigMap {BUDGET_CONFIGMAP} needs integer {', '.join(BUDGET_KEYS)} ({e})")
        return out
    out.update(max_connections=max_conn, reserved=reserved, headroom=headroom,
               available=max_conn - reserved - headroom)
    if total > out["available"]:
        bad(f"connection budget: the fleet could open {total} connections, more than the {out['available']} "
            f"left of max_connections {max_conn} after {reserved} reserved and {headroom} headroom")
    return out


def print_budget(report):
    print("PostgreSQL connection budget (worst case):")
    print(f"  {'deployment':<13} {'pods':>16}  {'per pod':<34} {'connections':>11}")
    for r in report["rows"]:
        pods = f"{r['pods']} ({r['max_replicas']}+2x{r['surge']})"
        per = f"{r['per_pod']} ({r['pool_size']}+{r['overflow']} pool, {r['listeners']} LISTEN)"
        print(f"  {r['name']:<13} {pods:>16}  {per:<34} {r['need']:>11}   [{r['source']}]")
    print(f"  {'migration Job':<13} {'':>16}  {'':<34} {report['jobs']:>11}")
    print(f"  {'total':<13} {'':>16}  {'':<34} {report['total']:>11}")
    if "available" in report:
        print(f"  declared max_connections {report['max_connections']} - {report['reserved']} reserved "
              f"- {report['headroom']} headroom = {report['available']} available; "
              f"{report['available'] - report['total']} to spare")
    if report["read_rows"]:
        share = " + ".join(f"{n} {c}" for n, c in report["read_rows"])
        print(f"  read replica (when DATABASE_READ_URL is set): {share} = {sum(c for _, c in report['read_rows'])}")


def budget_selftest(path):
    """Shows the budget check can fail: variants of the rendered production
    overlay that exceed the declaration by one connection must be refused,
    the exact fit accepted, and the real command must exit 1."""
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    base = connection_budget(docs)
    if base["problems"]:
        sys.exit(f"budget self-test: the rendered overlay itself fails: {base['problems']}")
    def declare(ds, max_connections):
        for d in ds:
            if d["kind"] == "ConfigMap" and d["metadata"]["name"] == BUDGET_CONFIGMAP:
                d["data"]["DATABASE_MAX_CONNECTIONS"] = str(max_connections)
        return ds
    exact = base["total"] + base["reserved"] + base["headroom"]

    def variant(edit):
        ds = declare(copy.deepcopy(docs), exact)
        edit(ds)
        return ds

    def find(ds, kind, name):
        return next(d for d in ds if d["kind"] == kind and d["metadata"]["name"] == name)

    def more_replicas(ds):
        find(ds, "HorizontalPodAutoscaler", "notification")["spec"]["maxReplicas"] += 1

    def bigger_pool(ds):
        c = find(ds, "Deployment", "profile")["spec"]["template"]["spec"]["containers"][0]
        c["env"] = [e for e in c["env"] if e["name"] != "DATABASE_MAX_OVERFLOW"]

    def more_surge(ds):
        find(ds, "Deployment", "auth")["spec"]["strategy"]["rollingUpdate"]["maxSurge"] = 2

    def undeclared(ds):
        ds[:] = [d for d in ds if d["metadata"]["name"] != BUDGET_CONFIGMAP]

    cases = [
        ("max_connections fits exactly", variant(lambda ds: None), True),
        ("max_connections one short", declare(copy.deepcopy(docs), exact - 1), False),
        ("notification HPA maxReplicas + 1", variant(more_replicas), False),
        ("profile without its own DATABASE_MAX_OVERFLOW (falls back to 40)", variant(bigger_pool), False),
        ("auth maxSurge 2", variant(more_surge), False),
        ("no budget declared", variant(undeclared), False),
    ]
    failures = 0
    for what, ds, should_pass in cases:
        report = connection_budget(ds)
        ok = not report["problems"]
        verdict = "accepted" if ok else "refused"
        good = ok == should_pass
        failures += not good
        detail = f" ({report['problems'][0]})" if report["problems"] else f" ({report['total']} connections)"
        print(f"  {'ok' if good else 'WRONG'}: {what}: {verdict}{detail}")
    # End to end: the k8s command itself exits 1 on the one-short overlay.
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump_all(declare(copy.deepcopy(docs), exact - 1), f)
    try:
        run = subprocess.run([sys.executable, os.path.abspath(__file__), "k8s", f.name, "production"],
                             capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    e2e = run.returncode == 1 and "connection budget" in run.stderr
    failures += not e2e
    print(f"  {'ok' if e2e else 'WRONG'}: `validate_deploy.py k8s` on the one-short overlay exits {run.returncode}")
    if failures:
        sys.exit(f"budget self-test: {failures} case(s) not as expected")
    print(f"budget self-test: the check refuses every over-budget variant ({len(cases) + 1} cases)")


# ---------------------------------------------------------- autoscaling --
# Load-based autoscaling: KEDA ScaledObjects with the Prometheus scaler.
# The metric each service scales on, and where the code that records it
# lives: the gateway on its open sockets (a gauge), signaling on the gRPC
# requests it serves (a counter the gRPC server of crates/grpc records in
# every backend, so the query must keep signaling's pods only). Since relay
# v2 signaling holds no stream per socket: it answers unary calls.
SCALING_METRICS = {
    "gateway": ("websocket_connections", "services/gateway/src"),
    "signaling": ("grpc_server_handled_total", "crates/grpc/src"),
}
# Where Prometheus runs: k8s/base/networkpolicies.yaml lets it scrape from there.
PROMETHEUS_NAMESPACE = "monitoring"
# Scale-down looks back this long at least (the HPA's own default is 300 s).
MIN_SCALE_DOWN_WINDOW = 300
# Each scale-down policy removes at most this many pods or percent per minute or more.
MAX_SCALE_DOWN_PODS, MAX_SCALE_DOWN_PERCENT = 2, 25
SCHEMA_DIR = os.path.join(ROOT, "k8s", "schemas")
METRIC_MACRO = re.compile(r'metrics::(?:gauge|counter|histogram)!\(\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"')
# A metric name directly followed by its label selector, in PromQL.
PROMQL_SELECTOR = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}')
# PromQL functions that turn a counter into a rate.
COUNTER_RATE = re.compile(r'\b(?:rate|irate|increase)\s*\(\s*$')


def pins_service(labels, name):
    """Whether a PromQL label selector keeps the pods of service `name` only:
    service="name" or job="name" (what the ServiceMonitor of k8s/monitoring
    sets), or pod=~"name-…"."""
    return bool(re.search(rf'\b(?:service|job)\s*=\s*"{re.escape(name)}"', labels) or
                re.search(rf'\bpod\s*=~\s*"{re.escape(name)}-', labels))


def exported_metrics(src_dir):
    """Metric names the Rust sources under src_dir record (metrics::gauge!("…") etc.)."""
    names = set()
    for base, _, files in os.walk(os.path.join(ROOT, src_dir)):
        for f in files:
            if f.endswith(".rs"):
                names |= set(METRIC_MACRO.findall(open(os.path.join(base, f)).read()))
    return names


def autoscaling_problems(docs):
    """What is wrong with the load-based autoscaling of the rendered
    manifests: one ScaledObject per service in SCALING_METRICS, on the
    metric that service records (a counter through a rate; a metric every
    service records limited to this one's pods), CPU too, no second
    autoscaler, and a scale-down that does not flap."""
    out = []
    bad = out.append
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    hpas = by_kind.get("HorizontalPodAutoscaler", {})
    for name, (metric, src) in SCALING_METRICS.items():
        exported = exported_metrics(src)
        if metric not in exported:
            bad(f"{src} no longer exports {metric}: the autoscaling of {name} would see nothing")
        for hpa_name, hpa in hpas.items():
            if hpa["spec"].get("scaleTargetRef", {}).get("name") == name:
                bad(f"HPA {hpa_name} scales Deployment {name} next to its ScaledObject: two autoscalers fight "
                    "(KEDA renders the HPA itself)")
        so = by_kind.get("ScaledObject", {}).get(name)
        where = f"ScaledObject {name}"
        if so is None:
            bad(f"{where} missing: {name} must scale on its load ({metric})")
            continue
        s = so.get("spec", {})
        target = s.get("scaleTargetRef", {})
        if (target.get("apiVersion", "apps/v1"), target.get("kind", "Deployment"), target.get("name")) != \
                ("apps/v1", "Deployment", name):
            bad(f"{where}: scaleTargetRef {target} is not Deployment {name}")
        low, high = s.get("minReplicaCount", 0), s.get("maxReplicaCount")
        if low < 2:
            bad(f"{where}: minReplicaCount {low} < 2 (the PDB would block drains)")
        if high is None or high < low:
            bad(f"{where}: maxReplicaCount {high} (unset means KEDA's 100; the connection budget needs a bound)")
        hpa_config = s.get("advanced", {}).get("horizontalPodAutoscalerConfig", {})
        if so["metadata"].get("annotations", {}).get("scaledobject.keda.sh/transfer-hpa-ownership") != "true" \
                or hpa_config.get("name") != name:
            bad(f"{where}: KEDA must adopt the HPA {name} earlier releases applied "
                "(annotation scaledobject.keda.sh/transfer-hpa-ownership and horizontalPodAutoscalerConfig.name)")
        fallback = s.get("fallback")
        if fallback is not None and fallback.get("behavior") != "currentReplicasIfHigher":
            bad(f"{where}: a fallback replaces the CPU-based count while Prometheus fails (kedacore/keda#6659); "
                "leave it out or use behavior currentReplicasIfHigher")
        triggers = s.get("triggers", [])
        if not any(t.get("type") == "cpu" and t.get("metricType") == "Utilization" for t in triggers):
            bad(f"{where}: no cpu trigger (metricType Utilization)")
        prom = [t for t in triggers if t.get("type") == "prometheus"]
        if len(prom) != 1:
            bad(f"{where}: {len(prom)} prometheus triggers, expected one on {metric}")
        for t in prom:
            md = t.get("metadata", {})
            query = md.get("query", "")
            selectors = PROMQL_SELECTOR.findall(query)
            used = {m for m, _ in selectors}
            if used != {metric}:
                bad(f"{where}: the query reads {sorted(used) or 'no metric'}, not {metric} ({name} exports "
                    f"{metric}): {query!r}")
            for m in used - exported:
                bad(f"{where}: {src} exports no metric {m}")
            namespace = so["metadata"].get("namespace")
            shared = not src.startswith(f"services/{name}/")
            for m, labels in selectors:
                if shared and m == metric and not pins_service(labels, name):
                    bad(f"{where}: every service built on {src} records {m}; the query must keep {name}'s pods "
                        f'only (service="{name}", job="{name}" or pod=~"{name}-.*"): {query!r}')
                if m.endswith("_total"):
                    at = query.find(m)
                    if not COUNTER_RATE.search(query[:at]):
                        bad(f"{where}: {m} is a counter: the query must take its rate (rate(…[2m])), "
                            "its total only grows")
                ns = re.search(r'\bnamespace\s*=\s*"([^"]*)"', labels)
                if ns is None:
                    bad(f"{where}: {m} is not limited to one namespace: another environment's pods would count")
                elif namespace is not None and ns.group(1) != namespace:
                    bad(f"{where}: the query counts namespace {ns.group(1)!r}, the object is in {namespace!r}")
            if t.get("metricType", "AverageValue") != "AverageValue":
                bad(f"{where}: metricType {t.get('metricType')} (AverageValue: the total over the replica count)")
            try:
                if float(md.get("threshold", "0")) <= 0:
                    raise ValueError
            except ValueError:
                bad(f"{where}: threshold {md.get('threshold')!r} is not a positive number")
            if md.get("ignoreNullValues") != "false":
                bad(f"{where}: ignoreNullValues must be \"false\": a lost scrape target would read as no load "
                    "and scale the fleet down")
            host = (re.match(r"https?://([^/:]+)", md.get("serverAddress", "")) or [None, ""])[1]
            if host.split(".")[1:2] != [PROMETHEUS_NAMESPACE]:
                bad(f"{where}: serverAddress {md.get('serverAddress')!r} is not a Service in namespace "
                    f"{PROMETHEUS_NAMESPACE} (where the NetworkPolicies let Prometheus scrape from)")
        down = hpa_config.get("behavior", {}).get("scaleDown")
        if down is None:
            bad(f"{where}: no scaleDown behaviour (stabilization window and policies)")
            continue
        window = down.get("stabilizationWindowSeconds")
        if window is None or window < MIN_SCALE_DOWN_WINDOW:
            bad(f"{where}: scaleDown stabilizationWindowSeconds {window} < {MIN_SCALE_DOWN_WINDOW}: "
                "the count would follow every dip" + (", and each removal drains sockets" if name == "gateway" else ""))
        if down.get("selectPolicy") == "Disabled":
            bad(f"{where}: scale-down disabled")
        policies = down.get("policies", [])
        if not policies:
            bad(f"{where}: no scaleDown policies (the default removes every pod above the minimum in 15 s)")
        for p in policies:
            gentle = p.get("periodSeconds", 0) >= 60 and (
                (p.get("type") == "Pods" and p.get("value", 0) <= MAX_SCALE_DOWN_PODS) or
                (p.get("type") == "Percent" and p.get("value", 0) <= MAX_SCALE_DOWN_PERCENT))
            if not gentle:
                bad(f"{where}: scaleDown policy {p} removes more than {MAX_SCALE_DOWN_PODS} pods or "
                    f"{MAX_SCALE_DOWN_PERCENT}% per minute or more")
    return out


def schema_for(doc):
    """The vendored JSON schema of an object of a CustomResourceDefinition, if any."""
    group, _, version = doc.get("apiVersion", "").rpartition("/")
    path = os.path.join(SCHEMA_DIR, group, f"{doc.get('kind', '').lower()}_{version}.json")
    return path if group and os.path.exists(path) else None


def crd_schema_problems(docs):
    """Every keda.sh object against its vendored schema (check-jsonschema);
    kubernetes-validate only warns about kinds it has no schema for."""
    out, by_schema = [], {}
    for d in docs:
        schema = schema_for(d)
        if schema is not None:
            by_schema.setdefault(schema, []).append(d)
        elif d.get("apiVersion", "").startswith("keda.sh/"):
            out.append(f"{d['kind']} {d['metadata']['name']}: no schema for {d['apiVersion']} in k8s/schemas")
    with tempfile.TemporaryDirectory() as tmp:
        for schema, objs in sorted(by_schema.items()):
            files = []
            for i, d in enumerate(objs):
                files.append(os.path.join(tmp, f"{d['kind']}-{d['metadata']['name']}-{i}.json"))
                with open(files[-1], "w") as f:
                    json.dump(d, f)
            run = subprocess.run(["check-jsonschema", "--schemafile", schema, *files], capture_output=True, text=True)
            if run.returncode != 0:
                out.append(f"{os.path.relpath(schema, ROOT)}: {(run.stdout + run.stderr).strip()}")
    return out, sum(len(o) for o in by_schema.values())


def check_crds(path):
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    found, count = crd_schema_problems(docs)
    problems.extend(found)
    finish(f"vendored CRD schemas ({count} objects)")


# What signaling's ScaledObject asked before relay v2: the streams it held,
# one per gateway socket.
OLD_SIGNALING_QUERY = 'sum(max by (pod, kind) (signaling_streams{namespace="unilink"}))'


def autoscaling_selftest(path):
    """Shows the autoscaling checks can fail: broken variants of the rendered
    production overlay must be refused, the overlay itself accepted, and the
    real `k8s` command must exit 1 on the query signaling scaled on before
    relay v2 (signaling_streams, a gauge no code records any more)."""
    docs = [d for d in yaml.safe_load_all(open(path)) if d]

    def find(ds, name):
        return next(d for d in ds if d["kind"] == "ScaledObject" and d["metadata"]["name"] == name)

    def prom(ds, name):
        return next(t for t in find(ds, name)["spec"]["triggers"] if t["type"] == "prometheus")["metadata"]

    def down(ds, name):
        return find(ds, name)["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]

    def variant(edit):
        ds = copy.deepcopy(docs)
        edit(ds)
        return ds

    def metric(name, old, new):
        return lambda ds: prom(ds, name).update(query=prom(ds, name)["query"].replace(old, new))

    def plain_hpa(ds):
        ds.append({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
                   "metadata": {"name": "gateway-extra", "namespace": "unilink"},
                   "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "gateway"},
                            "minReplicas": 2, "maxReplicas": 5, "metrics": []}})

    def misspelt(ds):
        d = down(ds, "gateway")
        d["stabilisationWindowSeconds"] = d.pop("stabilizationWindowSeconds")

    cases = [
        ("the rendered overlay", lambda ds: None, True, autoscaling_problems),
        ("signaling scaled on websocket_connections (the gateway's gauge, the old HPA's name)",
         metric("signaling", "grpc_server_handled_total", "websocket_connections"), False, autoscaling_problems),
        ("signaling scaled on signaling_streams (gone with relay v2)",
         lambda ds: prom(ds, "signaling").update(query=OLD_SIGNALING_QUERY), False, autoscaling_problems),
        ("signaling's gRPC rate over every backend (no service label)",
         metric("signaling", ',service="signaling"', ""), False, autoscaling_problems),
        ("signaling's gRPC rate of auth's pods",
         metric("signaling", 'service="signaling"', 'service="auth"'), False, autoscaling_problems),
        ("signaling on the gRPC counter itself, not its rate",
         lambda ds: prom(ds, "signaling").update(
             query='sum(grpc_server_handled_total{namespace="unilink",service="signaling"})'),
         False, autoscaling_problems),
        ("gateway scaled on a metric it does not export",
         metric("gateway", "websocket_connections", "websocket_connection"), False, autoscaling_problems),
        ("gateway query over every namespace",
         metric("gateway", 'namespace="unilink"', 'pod=~"gateway-.*"'), False, autoscaling_problems),
        ("no scaleDown stabilization window", lambda ds: down(ds, "gateway").pop("stabilizationWindowSeconds"),
         False, autoscaling_problems),
        ("scaleDown stabilization window 60 s",
         lambda ds: down(ds, "signaling").update(stabilizationWindowSeconds=60), False, autoscaling_problems),
        ("scaleDown policy of 10 pods a minute",
         lambda ds: down(ds, "gateway").update(policies=[{"type": "Pods", "value": 10, "periodSeconds": 60}]),
         False, autoscaling_problems),
        ("no scaleDown behaviour",
         lambda ds: find(ds, "signaling")["spec"]["advanced"]["horizontalPodAutoscalerConfig"].pop("behavior"),
         False, autoscaling_problems),
        ("ignoreNullValues left to its default (true)", lambda ds: prom(ds, "gateway").pop("ignoreNullValues"),
         False, autoscaling_problems),
        ("a static fallback", lambda ds: find(ds, "gateway")["spec"].update(fallback={"failureThreshold": 3,
                                                                                   "replicas": 3}),
         False, autoscaling_problems),
        ("a plain HPA on the gateway as well", plain_hpa, False, autoscaling_problems),
        ("no ScaledObject for signaling",
         lambda ds: ds.remove(find(ds, "signaling")), False, autoscaling_problems),
        ("a misspelt stabilisationWindowSeconds (schema)", misspelt, False, lambda ds: crd_schema_problems(ds)[0]),
        ("threshold as a number (schema: metadata values are strings)",
         lambda ds: prom(ds, "gateway").update(threshold=1000), False, lambda ds: crd_schema_problems(ds)[0]),
    ]
    failures = 0
    for what, edit, should_pass, checker in cases:
        found = checker(variant(edit))
        good = (not found) == should_pass
        failures += not good
        # One line: the schema's message without the temporary file's path.
        one_line = re.sub(r"\s+", " ", re.sub(r"\S*/tmp\S*::", "", found[0])) if found else ""
        detail = f" ({one_line[:200]})" if found else ""
        print(f"  {'ok' if good else 'WRONG'}: {what}: {'accepted' if not found else 'refused'}{detail}")
    # End to end: the k8s command itself exits 1 on signaling's old query.
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump_all(variant(lambda ds: prom(ds, "signaling").update(query=OLD_SIGNALING_QUERY)), f)
    try:
        run = subprocess.run([sys.executable, os.path.abspath(__file__), "k8s", f.name, "production"],
                             capture_output=True, text=True)
    finally:
        os.unlink(f.name)
    expected = "ScaledObject signaling: crates/grpc/src exports no metric signaling_streams"
    e2e = run.returncode == 1 and expected in run.stderr
    failures += not e2e
    print(f"  {'ok' if e2e else 'WRONG'}: `validate_deploy.py k8s` with signaling on signaling_streams "
          f"exits {run.returncode}{', saying ' + repr(expected) if e2e else ''}")
    if failures:
        sys.exit(f"autoscaling self-test: {failures} case(s) not as expected")
    print(f"autoscaling self-test: every broken variant refused ({len(cases) + 1} cases)")


# --------------------------------------------------------------- alerts --
REQUIRED_ALERTS = {
    "HighErrorRate": "http_requests_total",
    "HighDatabaseLatency": "db_query_duration_seconds_bucket",
    "LowDiskSpace": "node_filesystem_avail_bytes",
    "WebSocketConnectionsDropped": "websocket_connections",
    "OutboxLagHigh": "outbox_lag_seconds",
    "StreamConsumerLagHigh": "stream_consumer_lag",
    "RateLimitStorm": "rate_limit_hits_total",
    "PodNotReady": "kube_pod_status_ready",
    "EmailsDeadLettered": "emails_dead_lettered_total",
    "EmailsFailing": "emails_failed_total",
    "SignalingRelayFramesLost": "signaling_relay_lost_total",
    "DatabasePoolWaiting": "db_pool_waiting",
    "RateLimitFallback": "rate_limit_fallback_total",
}


def exported_metric_names():
    """Names passed to metrics::counter!/gauge!/histogram! anywhere in crates/ and services/."""
    names = set()
    for top in ("crates", "services"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            if "/target" in dirpath or "/tests" in dirpath:
                continue
            for f in files:
                if f.endswith(".rs"):
                    text = open(os.path.join(dirpath, f)).read()
                    names |= set(re.findall(r'(?:counter|gauge|histogram)!\(\s*"([a-z_:][a-z0-9_:]*)"', text))
    return names


def check_alerts(rules_path, tests_path):
    rules = yaml.safe_load(open(rules_path))
    alerts = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    exported = exported_metric_names()
    for name, metric in REQUIRED_ALERTS.items():
        if check(name in alerts, f"alert {name} missing"):
            check(metric in alerts[name], f"alert {name} does not use {metric}")
        # Our own metrics must be what the code exports (a renamed metric
        # leaves an alert that can never fire).
        if not metric.startswith(("node_", "kube_")):
            base = re.sub(r"_(bucket|sum|count)$", "", metric)
            check(base in exported, f"alert {name}: no code exports {base} (metrics::counter!/gauge!/histogram!)")
    tests = yaml.safe_load(open(tests_path))
    fires, silent = set(), set()
    for t in tests["tests"]:
        for a in t.get("alert_rule_test", []):
            (fires if a.get("exp_alerts") else silent).add(a["alertname"])
    for name in alerts:
        check(name in fires, f"no test makes {name} fire")
        check(name in silent, f"no test shows {name} staying silent")
    finish(f"alert coverage ({len(alerts)} alerts)")


# -------------------------------------------------------------- grafana --
REQUIRED_METRICS = [
    "http_requests_total", "http_request_duration_seconds_bucket", "websocket_connections",
    "signaling_relay_latency_seconds_bucket", "db_pool_connections", "db_pool_waiting",
    "grpc_server_handled_total", "grpc_server_handling_seconds_bucket", "calls_started_total",
    "call_duration_seconds_sum", "call_duration_seconds_count", "calls_missed_total", "daily_active_users",
]


def check_grafana(path, out_rules):
    dash = json.load(open(path))
    check(dash.get("uid") and dash.get("title"), "dashboard without uid/title")
    panels = []

    def walk(ps):
        for p in ps:
            panels.append(p)
            walk(p.get("panels", []))

    walk(dash.get("panels", []))
    ids = [p.get("id") for p in panels]
    check(len(ids) == len(set(ids)) and None not in ids, "panel ids missing or duplicated")
    exprs = []
    for p in panels:
        if p.get("type") == "row":
            continue
        where = f"panel {p.get('id')} {p.get('title')!r}"
        check(p.get("title"), f"{where}: no title")
        gp = p.get("gridPos", {})
        check(all(k in gp for k in "hwxy") and gp["x"] + gp["w"] <= 24, f"{where}: bad gridPos {gp}")
        check(p.get("datasource", {}).get("type") == "prometheus", f"{where}: datasource is not prometheus")
        check(p.get("targets"), f"{where}: no queries")
        for t in p.get("targets", []):
            if check(t.get("expr"), f"{where}: target without expr"):
                exprs.append((where, t["expr"]))
    text = " ".join(e for _, e in exprs)
    for m in REQUIRED_METRICS:
        check(re.search(rf"\b{re.escape(m)}\b", text), f"no panel queries {m}")
    titles = " ".join(p.get("title", "").lower() for p in panels)
    for word in ("request rate", "latency", "error", "websocket", "relay", "pool", "grpc", "calls per hour",
                 "duration", "missed", "active users"):
        check(word in titles, f"no panel about {word!r}")
    rules = {"groups": [{"name": "grafana-dashboard-queries", "rules": [
        {"record": f"dashboard:query:{i}", "expr": e.replace("$__rate_interval", "5m").replace("$__interval", "1m")}
        for i, (_, e) in enumerate(exprs)]}]}
    with open(out_rules, "w") as f:
        yaml.safe_dump(rules, f)
    finish(f"grafana dashboard ({len(panels)} panels, {len(exprs)} queries)")


# -------------------------------------------------------------- compose --
def compose_service(name):
    """The UniLink service a compose service runs: migrate-auth -> auth, gateway-2 -> gateway."""
    if name.startswith("migrate-"):
        return name[len("migrate-"):]
    if re.fullmatch(r"gateway-\d+", name):
        return "gateway"
    return name


def check_compose(path):
    base = os.path.dirname(os.path.abspath(path))
    doc = yaml.safe_load(open(path))
    svcs = doc["services"]
    expected = ["postgres", "redis", "auth", "profile", "signaling", "notification", "gateway-1", "gateway-2",
                "nginx", "prometheus", "grafana", "otel-collector"] + [f"migrate-{b}" for b in BACKENDS]
    for s in expected:
        check(s in svcs, f"service {s} missing")
    check(str(svcs.get("postgres", {}).get("image", "")).startswith("postgres:15"), "postgres is not PostgreSQL 15")
    check(str(svcs.get("redis", {}).get("image", "")).startswith("redis:7"), "redis is not Redis 7")
    for name, s in svcs.items():
        svc = compose_service(name)
        if svc in SERVICES:
            b = s.get("build", {})
            check(b.get("dockerfile") == "deploy/Dockerfile" and b.get("args", {}).get("SERVICE") == svc,
                  f"{name}: not built from deploy/Dockerfile with SERVICE={svc}")
            check(str(s.get("image", "")).startswith(f"ghcr.io/unilink/unilink-{svc}:"), f"{name}: image name")
            env = s.get("environment", {})
            if name.startswith("migrate-"):
                check(s.get("command") == ["migrate"], f"{name}: command is not migrate")
            elif svc in BACKENDS:
                check(env.get("HTTP_ADDR") == "0.0.0.0:9090" and env.get("GRPC_ADDR") == "0.0.0.0:50051", f"{name}: addresses")
                dep = s.get("depends_on", {})
                check(dep.get(f"migrate-{svc}", {}).get("condition") == "service_completed_successfully",
                      f"{name}: does not wait for migrate-{svc}")
            else:
                check(env.get("HTTP_ADDR") == "0.0.0.0:8000", f"{name}: HTTP_ADDR")
                for bk in BACKENDS:
                    check(env.get(f"{bk.upper()}_GRPC_URL") == f"http://{bk}:50051", f"{name}: {bk.upper()}_GRPC_URL")
            if not name.startswith("migrate-"):
                check(s.get("read_only") is True and "ALL" in s.get("cap_drop", []), f"{name}: not hardened")
        for v in s.get("volumes", []):
            src = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
            if src.startswith("./") and src != "./nginx/certs":
                check(os.path.exists(os.path.join(base, src)), f"{name}: mounts missing {src}")
    check_compose_profiles(svcs)
    check_compose_proxies(doc)
    check_compose_sentinel(svcs)
    check_compose_budget(svcs)
    check_compose_safe_defaults(doc, base)
    nginx_conf = open(os.path.join(base, "nginx", "nginx.conf")).read()
    for g in ("gateway-1:8000", "gateway-2:8000"):
        check(g in nginx_conf, f"nginx upstream lacks {g}")
    prom = yaml.safe_load(open(os.path.join(base, "prometheus", "prometheus.yml")))
    targets = {t for job in prom["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]}
    for t in ["gateway-1:8000", "gateway-2:8000"] + [f"{b}:9090" for b in BACKENDS]:
        check(t in targets, f"prometheus does not scrape {t}")
    finish(f"compose wiring ({len(svcs)} services)")


# Who may receive each secret in compose (UniLink services; migrate-* count
# as their service): SECRET_KEY peppers login codes in auth, EVENT_SEAL_KEYS
# seals them for notification, only notification sends mail, only signaling
# mints TURN credentials. Other containers (coturn, alertmanager) are checked
# by their own sections.
COMPOSE_SECRET_USERS = {
    "SECRET_KEY": {"auth"},
    "EVENT_SEAL_KEYS": {"auth", "notification"},
    "SMTP_PASSWORD": {"notification"},
    "SMTP_USER": {"notification"},
    "TURN_SECRET": {"signaling"},
}
COMPOSE_VAR = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::?([-?])([^}]*))?\}")


def compose_var_default(value):
    """The value compose gives `${VAR:-default}` when VAR is unset (None if required or unset)."""
    m = COMPOSE_VAR.fullmatch(str(value))
    if not m:
        return str(value)
    return m.group(3) if m.group(2) == "-" else None


def check_compose_safe_defaults(doc, base):
    """Compose runs as production unless told otherwise, with what production
    needs, and each secret only where it is used."""
    svcs = doc["services"]
    text = open(os.path.join(base, "docker-compose.yml")).read()
    for name, s in svcs.items():
        svc = compose_service(name)
        env = s.get("environment", {})
        if svc not in SERVICES:
            continue
        where = f"compose {name}"
        check(compose_var_default(env.get("ENVIRONMENT", "")) == "production",
              f"{where}: ENVIRONMENT does not default to production ({env.get('ENVIRONMENT')!r})")
        check(compose_var_default(env.get("ALGORITHM", "EdDSA")) == "EdDSA", f"{where}: ALGORITHM does not default to EdDSA")
        check(compose_var_default(env.get("JWT_ALLOW_HS256", "false")) in ("false", None),
              f"{where}: JWT_ALLOW_HS256 defaults to true")
        smtp = str(env.get("SMTP_SERVER", ""))
        check(COMPOSE_VAR.fullmatch(smtp) and COMPOSE_VAR.fullmatch(smtp).group(2) == "?",
              f"{where}: SMTP_SERVER is not required (production refuses to start without it)")
        # Production refuses plaintext to a store on the network unless told.
        for url_var, flag in (("DATABASE_URL", "DATABASE_ALLOW_PLAINTEXT"), ("REDIS_URL", "REDIS_ALLOW_PLAINTEXT")):
            url = str(env.get(url_var, ""))
            if not url or "sslmode=require" in url or "sslmode=verify" in url or url.startswith("rediss://"):
                continue
            check(compose_var_default(env.get(flag, "false")) == "true",
                  f"{where}: {url_var} is plaintext on compose's network but {flag} does not default to true "
                  "(production would refuse to start)")
        for var, users in COMPOSE_SECRET_USERS.items():
            if svc in users and not name.startswith("migrate-"):
                check(var in env, f"{where}: lacks {var}")
            else:
                check(var not in env, f"{where}: must not receive {var} (only {', '.join(sorted(users))})")
        secrets = [x if isinstance(x, str) else x.get("source") for x in s.get("secrets", [])]
        if name == "auth":
            for var, secret in (("JWT_PRIVATE_KEY_FILE", "jwt_private_key"), ("JWT_PUBLIC_KEY_FILE", "jwt_public_key")):
                check(env.get(var) == f"/run/secrets/{secret}" and secret in secrets,
                      f"{where}: {var} is not the mounted secret {secret}")
        else:
            check(not {"jwt_private_key", "jwt_public_key"} & set(secrets), f"{where}: only auth may mount the signing keys")
    check(doc.get("secrets", {}).get("jwt_private_key", {}).get("file", "").startswith("./secrets/"),
          "compose secret jwt_private_key does not come from deploy/secrets/")
    # deploy/.env.example assigns every variable compose requires, and no
    # required secret there is anything but a placeholder or empty.
    example = {}
    for line in open(os.path.join(base, ".env.example")):
        m = re.match(r"([A-Z_][A-Z0-9_]*)=(.*)$", line.strip())
        if m:
            example[m.group(1)] = m.group(2)
    required = sorted({m.group(1) for m in COMPOSE_VAR.finditer(text) if m.group(2) == "?"})
    for var in required:
        check(var in example, f"deploy/.env.example does not assign {var}, which compose requires")
    check(example.get("ENVIRONMENT", "production") == "production", "deploy/.env.example: ENVIRONMENT is not production")
    # Alertmanager: Prometheus sends to it, and it gets every variable its
    # template uses.
    am = svcs.get("alertmanager")
    if check(am is not None, "compose: no alertmanager service"):
        mounts = [v.split(":")[:2] for v in am.get("volumes", []) if isinstance(v, str)]
        check(["./alertmanager", "/etc/alertmanager"] in mounts, "alertmanager: deploy/alertmanager not mounted at /etc/alertmanager")
        check(am.get("entrypoint", [None])[-1] == "/etc/alertmanager/entrypoint.sh",
              "alertmanager: not started through deploy/alertmanager/entrypoint.sh (the template would not be rendered)")
        template = open(os.path.join(base, "alertmanager", "alertmanager.yml")).read()
        used = {m.group(1) for m in COMPOSE_VAR.finditer(template)}
        for var in sorted(used):
            check(var in am.get("environment", {}), f"alertmanager: the template uses {var}, which the container does not get")
            check(var in example, f"deploy/.env.example does not assign {var} (alertmanager)")
    prom = yaml.safe_load(open(os.path.join(base, "prometheus", "prometheus.yml")))
    am_targets = {t for a in prom.get("alerting", {}).get("alertmanagers", []) for sc in a.get("static_configs", [])
                  for t in sc.get("targets", [])}
    check("alertmanager:9093" in am_targets, "prometheus.yml does not send alerts to alertmanager:9093")
    # setup-ssl.sh's default webroot is the volume nginx serves.
    nginx = svcs.get("nginx", {})
    webroot_mounts = [v for v in nginx.get("volumes", []) if isinstance(v, str) and v.split(":")[1] == "/var/www/certbot"]
    ssl_script = open(os.path.join(ROOT, "scripts", "setup-ssl.sh")).read()
    m = re.search(r'^webroot_volume="([^"]+)"', ssl_script, re.M)
    if check(webroot_mounts and m, "nginx does not mount a volume at /var/www/certbot, or setup-ssl.sh names none"):
        volume = webroot_mounts[0].split(":")[0]
        check(m.group(1) == f"{doc.get('name')}_{volume}",
              f"setup-ssl.sh writes the challenge into volume {m.group(1)}, nginx serves {doc.get('name')}_{volume}")
    conf = open(os.path.join(base, "nginx", "conf.d", "unilink.conf")).read()
    check(re.search(r"location /\.well-known/acme-challenge/ \{\s*root /var/www/certbot;", conf),
          "nginx does not serve /var/www/certbot at /.well-known/acme-challenge/")


def check_compose_proxies(doc):
    """The gateways trust exactly the nginx in front of them: nginx has a
    fixed address on a network it shares with them (and no other network, so
    that is the address they see), inside that network's subnet, and that
    address is the gateways' TRUSTED_PROXIES."""
    def default(value):
        # What `${VAR:-default}` gives when VAR is unset.
        m = re.fullmatch(r"\$\{\w+:?-([^}]*)\}", str(value))
        return m.group(1) if m else str(value)

    svcs = doc["services"]
    nginx_nets = svcs.get("nginx", {}).get("networks")
    if not check(isinstance(nginx_nets, dict) and len(nginx_nets) == 1,
                 "nginx: not on exactly one network with a fixed address (the one the gateways trust)"):
        return
    (net, conf), = nginx_nets.items()
    address = default((conf or {}).get("ipv4_address", ""))
    subnets = [default(c.get("subnet", "")) for c in
               (doc.get("networks", {}).get(net) or {}).get("ipam", {}).get("config", [])]
    try:
        inside = any(ipaddress.ip_address(address) in ipaddress.ip_network(n) for n in subnets)
    except ValueError:
        inside = False
    check(inside, f"nginx: address {address!r} is not inside network {net}'s subnet {subnets}")
    for name, s in svcs.items():
        if compose_service(name) != "gateway" or name.startswith("migrate-"):
            continue
        nets = s.get("networks", [])
        check(net in (nets if isinstance(nets, (list, dict)) else []), f"{name}: not on network {net} with nginx")
        trusted = default(s.get("environment", {}).get("TRUSTED_PROXIES", ""))
        check(trusted == address, f"{name}: TRUSTED_PROXIES {trusted!r} is not nginx's address {address!r}")


def check_compose_profiles(svcs):
    """The file works with and without each profile: every dependency of a
    started service is started too."""
    profiles = sorted({p for s in svcs.values() for p in s.get("profiles", [])})
    for active in [[]] + [[p] for p in profiles]:
        started = {n for n, s in svcs.items() if not s.get("profiles") or set(s["profiles"]) & set(active)}
        label = f"profile {active[0]}" if active else "no profile"
        for name in started:
            deps = svcs[name].get("depends_on", {})
            for dep in (deps if isinstance(deps, list) else deps.keys()):
                check(dep in started, f"{label}: {name} depends on {dep}, which does not start")


SENTINEL_MONITOR = re.compile(r"sentinel monitor (\S+) (\S+) (\d+) (\d+)")


def check_compose_sentinel(svcs):
    """Profile "sentinel": the master, a replica of it, three Sentinels
    agreeing on it, and services that can be pointed at them."""
    sentinels = sorted(n for n in svcs if n.startswith("redis-sentinel-"))
    check(len(sentinels) == 3, f"sentinel profile: {len(sentinels)} Sentinels, expected 3")
    replica = svcs.get("redis-replica", {})
    check(" ".join(map(str, replica.get("command", []))).find("--replicaof redis 6379") >= 0,
          "redis-replica does not replicate redis:6379")
    for name in ["redis-replica"] + sentinels:
        s = svcs.get(name, {})
        check(s.get("profiles") == ["sentinel"], f"{name}: not only in profile sentinel")
        check(str(s.get("image", "")).startswith("redis:7"), f"{name}: not the Redis 7 image")
    monitors = set()
    for name in sentinels:
        text = "\n".join(map(str, svcs[name].get("command", [])))
        m = SENTINEL_MONITOR.search(text)
        if not check(m, f"{name}: no `sentinel monitor` line"):
            continue
        master, host, port, quorum = m.group(1), m.group(2), int(m.group(3)), int(m.group(4))
        monitors.add((master, host, port, quorum))
        check(host in svcs and not svcs[host].get("profiles"), f"{name}: monitors {host}, not the always-on master")
        check(2 <= quorum <= len(sentinels) and quorum > len(sentinels) // 2, f"{name}: quorum {quorum} of {len(sentinels)}")
        check("--sentinel" in text or "redis-sentinel" in text, f"{name}: not started as a Sentinel")
        check("port 26379" in text, f"{name}: not on port 26379")
        check("announce-hostnames yes" in text, f"{name}: tells clients IPs that change when containers restart")
    check(len(monitors) == 1, f"Sentinels disagree on the master: {sorted(monitors)}")
    for name, s in svcs.items():
        env = s.get("environment", {})
        if "REDIS_URL" in env:
            for var in ("REDIS_SENTINELS", "REDIS_SENTINEL_MASTER"):
                check(var in env, f"{name}: {var} is not passed through (the sentinel profile could not be used)")


def compose_default(value, var):
    m = re.fullmatch(r"\$\{" + var + r":?-(\d+)\}", str(value))
    return int(m.group(1)) if m else int(value)


def check_compose_budget(svcs):
    """The services' pools fit in the compose PostgreSQL's max_connections."""
    pg = " ".join(map(str, svcs.get("postgres", {}).get("command", [])))
    m = re.search(r"max_connections=(\d+)", pg)
    max_connections, reserved = (int(m.group(1)) if m else 100), 3
    total, parts = 0, []
    for name, s in svcs.items():
        env = s.get("environment", {})
        if "DATABASE_URL" not in env:
            continue
        replicas = int(s.get("deploy", {}).get("replicas", 1))
        svc = compose_service(name)
        if name.startswith("migrate-"):
            need = 1
        elif svc == "gateway":
            need = sum(gateway_pool())
        else:
            listeners = len(re.findall(r"outbox_relay::<", service_source(svc)))
            need = sum(compose_default(env.get(v, d), v) for v, d in POOL_DEFAULTS.items()) + listeners
        total += replicas * need
        parts.append(f"{name} {replicas * need}")
    print(f"compose PostgreSQL connections: {' + '.join(parts)} = {total} of {max_connections - reserved}")
    check(total <= max_connections - reserved,
          f"the services could open {total} PostgreSQL connections; max_connections {max_connections} - {reserved} reserved")


# ----------------------------------------------------------------- turn --
# deploy/coturn/turnserver.conf is the one coturn configuration: the image
# carries it (compose and k8s/turn), scripts/e2e.sh runs it.
TURN_IMAGE = "ghcr.io/unilink/unilink-coturn"
# Options this check knows coturn for. coturn only logs an option it does
# not know and starts anyway, so a typo ("no-clii") would silently leave the
# telnet CLI on: anything else is refused.
TURN_KNOWN_OPTIONS = {
    "listening-port", "no-tls", "no-dtls", "no-tlsv1", "no-tlsv1_1", "no-tlsv1_2", "min-port", "max-port",
    "no-tcp-relay", "use-auth-secret", "realm", "stale-nonce", "user-quota", "total-quota", "max-bps",
    "bps-capacity", "denied-peer-ip", "no-multicast-peers", "no-cli", "fingerprint", "no-rfc5780",
    "no-stun-backward-compatibility", "response-origin-only-with-rfc5780", "no-software-attribute",
    "log-file", "simple-log", "new-log-timestamp", "prod", "channel-lifetime", "permission-lifetime",
    "max-allocate-lifetime", "max-allocate-timeout", "relay-threads", "verbose", "secure-stun",
}
# Never in the shipped file, and why.
TURN_FORBIDDEN = {
    "static-auth-secret": "the secret comes from TURN_SECRET at start (deploy/coturn/entrypoint.sh), never from the repository",
    "allowed-peer-ip": "re-opens denied ranges (only scripts/e2e.sh's loopback run may add it)",
    "allow-loopback-peers": "lets clients relay to the host's own loopback services",
    "lt-cred-mech": "static long-term users instead of TURN REST credentials",
    "user": "a static user whose password never expires",
    "no-auth": "an open relay",
    "server-relay": "relays to the server's own addresses",
    "cli-password": "the telnet CLI must stay off (no-cli)",
    "web-admin": "an admin web interface",
    "listening-ip": "per host: set by entrypoint.sh from TURN_LISTENING_IP",
    "relay-ip": "per host: set by entrypoint.sh from TURN_LISTENING_IP",
    "external-ip": "per host: set by entrypoint.sh from TURN_EXTERNAL_IPS",
}
TURN_REQUIRED_FLAGS = ["use-auth-secret", "no-cli", "fingerprint", "no-multicast-peers", "no-tcp-relay",
                       "no-tlsv1", "no-tlsv1_1"]
# Peers a relay must never reach: private, shared, loopback, link-local
# (cloud metadata), reserved; IPv6 loopback, IPv4-mapped, NAT64 and 6to4
# (they embed IPv4 addresses), unique-local, link-local.
TURN_DENIED_NETS = ["0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
                    "172.16.0.0/12", "192.0.0.0/24", "192.168.0.0/16", "198.18.0.0/15", "240.0.0.0/4",
                    "::1/128", "::ffff:0:0/96", "64:ff9b::/96", "2002::/16", "fc00::/7", "fe80::/10"]
# Relay ports: in the dynamic range, and bounded (one per allocation; more
# than the host's bandwidth can fill only widens what is open).
TURN_RELAY_PORTS = (49152, 65535)
TURN_RELAY_MAX_PORTS = 1000


def turn_options(text):
    """The (option, value) lines of a coturn configuration, in order."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.lstrip("-").partition("=")
        out.append((key.strip(), value.strip().strip('"')))
    return out


def ip_intervals(values):
    """{4: [(lo, hi)], 6: [...]} merged, from coturn's "ip" / "ip-ip" values."""
    import ipaddress
    spans = {4: [], 6: []}
    for v in values:
        lo, _, hi = v.partition("-")
        try:
            a, b = ipaddress.ip_address(lo), ipaddress.ip_address(hi or lo)
        except ValueError:
            check(False, f"turnserver.conf: denied-peer-ip={v} is not an address or range")
            continue
        if check(a.version == b.version and int(a) <= int(b), f"turnserver.conf: denied-peer-ip={v} is not a range"):
            spans[a.version].append((int(a), int(b)))
    for version, s in spans.items():
        merged = []
        for lo, hi in sorted(s):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        spans[version] = merged
    return spans


def check_turn_conf(text):
    """The shipped coturn configuration; returns its settings."""
    import ipaddress
    opts = turn_options(text)
    keys = [k for k, _ in opts]
    for k in sorted(set(keys)):
        if k in TURN_FORBIDDEN:
            check(False, f"turnserver.conf: {k}: {TURN_FORBIDDEN[k]}")
        else:
            check(k in TURN_KNOWN_OPTIONS, f"turnserver.conf: unknown option {k!r} (coturn would ignore it)")
    for flag in TURN_REQUIRED_FLAGS:
        check(flag in keys, f"turnserver.conf: lacks {flag}")
    single = {}
    for k, v in opts:
        if k != "denied-peer-ip":
            check(k not in single, f"turnserver.conf: {k} given twice")
            single[k] = v
    check(single.get("realm"), "turnserver.conf: no realm")
    try:
        port = int(single.get("listening-port", "3478"))
        lo, hi = int(single["min-port"]), int(single["max-port"])
    except (KeyError, ValueError):
        check(False, "turnserver.conf: listening-port, min-port and max-port must be numbers, and the relay range set")
        return {}
    check(TURN_RELAY_PORTS[0] <= lo <= hi <= TURN_RELAY_PORTS[1],
          f"turnserver.conf: relay range {lo}-{hi} is not inside {TURN_RELAY_PORTS[0]}-{TURN_RELAY_PORTS[1]}")
    check(hi - lo + 1 <= TURN_RELAY_MAX_PORTS,
          f"turnserver.conf: relay range {lo}-{hi} opens {hi - lo + 1} ports (at most {TURN_RELAY_MAX_PORTS})")
    check(not lo <= port <= hi, f"turnserver.conf: listening-port {port} inside the relay range")
    spans = ip_intervals([v for k, v in opts if k == "denied-peer-ip"])
    for net in TURN_DENIED_NETS:
        n = ipaddress.ip_network(net)
        first, last = int(n.network_address), int(n.broadcast_address)
        check(any(a <= first and last <= b for a, b in spans[n.version]),
              f"turnserver.conf: denied-peer-ip does not cover {net}")
    return {"port": port, "relay": (lo, hi), "realm": single.get("realm")}


def turn_urls(value, where, port):
    """TURN_URLS: turn: URLs on coturn's port, UDP and TCP."""
    transports = set()
    for url in str(value or "").split(","):
        m = re.fullmatch(r"turn:([^:?]+):(\d+)\?transport=(udp|tcp)", url.strip())
        if not check(m, f"{where}: TURN_URLS entry {url!r} is not turn:HOST:PORT?transport=udp|tcp"):
            continue
        check(int(m.group(2)) == port, f"{where}: TURN_URLS {url} is not on coturn's listening-port {port}")
        transports.add(m.group(3))
    check(transports == {"udp", "tcp"}, f"{where}: TURN_URLS offers {sorted(transports)}, not both udp and tcp")


def compose_var(value):
    """The variable a compose value interpolates: ${TURN_SECRET:?...} -> TURN_SECRET."""
    m = re.fullmatch(r"\$\{(\w+)(?::?[-?][^}]*)?\}", str(value))
    return m.group(1) if m else None


def check_turn_compose(svcs, conf, dockerfile):
    turn = svcs.get("coturn")
    if not check(turn is not None, "compose: service coturn missing"):
        return
    check(turn.get("build", {}).get("context") == "./coturn", "compose coturn: not built from deploy/coturn")
    check(str(turn.get("image", "")).startswith(TURN_IMAGE + ":"), "compose coturn: image name")
    check(turn.get("network_mode") == "host",
          "compose coturn: not on the host's network (published ports NAT the peers' addresses)")
    check(not turn.get("ports"), "compose coturn: publishes ports (on the host's network they mean nothing)")
    check(turn.get("read_only") is True and "ALL" in turn.get("cap_drop", []), "compose coturn: not hardened")
    env = turn.get("environment", {})
    secret_var = compose_var(env.get("TURN_SECRET"))
    check(secret_var, "compose coturn: TURN_SECRET is not taken from deploy/.env")
    sig = svcs.get("signaling", {}).get("environment", {})
    check(compose_var(sig.get("TURN_SECRET")) == secret_var and secret_var,
          f"compose: signaling's TURN_SECRET ({sig.get('TURN_SECRET')}) is not coturn's ({env.get('TURN_SECRET')})")
    urls = re.sub(r"\$\{(\w+)[^}]*\}", r"\1", str(sig.get("TURN_URLS", "")))
    turn_urls(urls, "compose signaling", conf["port"])
    for name, s in svcs.items():
        if name not in ("signaling", "coturn"):
            check("TURN_SECRET" not in s.get("environment", {}), f"compose {name}: must not receive TURN_SECRET")
    # The checked file is the one the image carries, on the ports it exposes.
    check("COPY turnserver.conf /etc/coturn/unilink.conf" in dockerfile,
          "deploy/coturn/Dockerfile does not ship turnserver.conf as /etc/coturn/unilink.conf")
    lo, hi = conf["relay"]
    check(f"{lo}-{hi}/udp" in dockerfile, f"deploy/coturn/Dockerfile does not EXPOSE the relay range {lo}-{hi}/udp")


def secret_ref(container, name):
    ref = env_map(container).get(name, {}).get("valueFrom", {}).get("secretKeyRef")
    return (ref.get("name"), ref.get("key")) if ref else None


def check_turn_k8s(prod_docs, turn_docs, conf):
    by_kind = {}
    for d in prod_docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    sig_ref = None
    for name, dep in by_kind.get("Deployment", {}).items():
        c = dep["spec"]["template"]["spec"]["containers"][0]
        if name == "signaling":
            sig_ref = secret_ref(c, "TURN_SECRET")
            check(sig_ref == ("unilink-secrets", "TURN_SECRET"),
                  f"k8s signaling: TURN_SECRET not from Secret unilink-secrets ({sig_ref})")
            turn_urls(env_value(c, "TURN_URLS"), "k8s signaling", conf["port"])
        else:
            check("TURN_SECRET" not in env_map(c), f"k8s {name}: must not receive TURN_SECRET")
    cm = by_kind.get("ConfigMap", {}).get("unilink-config", {}).get("data", {})
    for k in ("TURN_URLS", "TURN_SECRET"):
        check(k not in cm, f"k8s unilink-config sets {k}: every service would need TURN_SECRET")

    for d in turn_docs:
        check(d["kind"] != "Secret", "k8s/turn renders a Secret (created out of band)")
        if d["kind"] != "Namespace":
            check(d["metadata"].get("namespace") == "unilink-turn", f"k8s/turn {d['kind']} {d['metadata']['name']}: namespace")
    ds = next((d for d in turn_docs if d["kind"] == "DaemonSet" and d["metadata"]["name"] == "coturn"), None)
    if not check(ds is not None, "k8s/turn: DaemonSet coturn missing"):
        return
    pod = ds["spec"]["template"]["spec"]
    check(pod.get("hostNetwork") is True, "k8s coturn: not hostNetwork (see k8s/turn/coturn.yaml for why)")
    check(pod.get("nodeSelector"), "k8s coturn: no nodeSelector (it would take ports 3478 and the relay range on every node)")
    check(pod.get("automountServiceAccountToken") is False, "k8s coturn: service account token mounted")
    psc = pod.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
          "k8s coturn: pod not runAsNonRoot with RuntimeDefault seccomp")
    c = pod["containers"][0]
    image = c["image"]
    check(image.split(":")[0] == TURN_IMAGE and ":" in image and not image.endswith(":latest"),
          f"k8s coturn: image {image} is not a pinned {TURN_IMAGE}")
    sc = c.get("securityContext", {})
    check(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False and
          "ALL" in sc.get("capabilities", {}).get("drop", []), "k8s coturn: container not read-only, without capabilities")
    check(not c.get("command") and not c.get("args"), "k8s coturn: command/args override the shipped configuration")
    ref = secret_ref(c, "TURN_SECRET")
    check(ref is not None and ref == sig_ref,
          f"k8s coturn: TURN_SECRET from {ref}, signaling's from {sig_ref}: credentials would never verify")
    field = env_map(c).get("TURN_LISTENING_IP", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    check(field == "status.hostIP", "k8s coturn: TURN_LISTENING_IP is not the node's address (status.hostIP)")
    ports = {(p["containerPort"], p.get("protocol", "TCP")) for p in c.get("ports", [])}
    check(ports == {(conf["port"], "UDP"), (conf["port"], "TCP")},
          f"k8s coturn: ports {sorted(ports)} are not listening-port {conf['port']} UDP and TCP")
    for probe in ("readinessProbe", "livenessProbe"):
        check(c.get(probe, {}).get("tcpSocket", {}).get("port") == conf["port"], f"k8s coturn: {probe} not on TCP {conf['port']}")


def check_turn(conf_path, compose_path, prod_path, turn_path):
    conf = check_turn_conf(open(conf_path).read())
    if not conf:
        finish("turn")
    svcs = yaml.safe_load(open(compose_path))["services"]
    dockerfile = open(os.path.join(os.path.dirname(conf_path), "Dockerfile")).read()
    check_turn_compose(svcs, conf, dockerfile)
    prod = [d for d in yaml.safe_load_all(open(prod_path)) if d]
    turn = [d for d in yaml.safe_load_all(open(turn_path)) if d]
    check_turn_k8s(prod, turn, conf)
    lo, hi = conf["relay"]
    finish(f"turn (coturn on {conf['port']}, relay {lo}-{hi}, {len(TURN_DENIED_NETS)} denied ranges covered; "
           "compose and k8s share its secret with signaling)")


def turn_selftest(conf_path, compose_path, prod_path, turn_path):
    """Shows the turn checks can fail: broken variants of the configuration,
    the compose file and the rendered manifests must each be refused."""
    text = open(conf_path).read()
    svcs = yaml.safe_load(open(compose_path))["services"]
    dockerfile = open(os.path.join(os.path.dirname(conf_path), "Dockerfile")).read()
    prod = [d for d in yaml.safe_load_all(open(prod_path)) if d]
    turn = [d for d in yaml.safe_load_all(open(turn_path)) if d]

    def run(text=text, svcs=svcs, prod=prod, turn=turn):
        del problems[:]
        conf = check_turn_conf(text)
        if conf:
            check_turn_compose(svcs, conf, dockerfile)
            check_turn_k8s(prod, turn, conf)
        found = list(problems)
        del problems[:]
        return found

    def conf_edit(old, new):
        assert old in text, old
        return text.replace(old, new)

    def compose_edit(edit):
        s = copy.deepcopy(svcs)
        edit(s)
        return s

    def docs_edit(docs, kind, name, edit):
        ds = copy.deepcopy(docs)
        edit(next(d for d in ds if d["kind"] == kind and d["metadata"]["name"] == name))
        return ds

    def container(d):
        return d["spec"]["template"]["spec"]["containers"][0]

    def env_set(d, name, entry):
        c = container(d)
        c["env"] = [e for e in c["env"] if e["name"] != name] + ([dict(entry, name=name)] if entry else [])

    cases = [
        ("the shipped files", {}, True),
        ("172.16.0.0/12 no longer denied", {"text": conf_edit("denied-peer-ip=172.16.0.0-172.31.255.255\n", "")}, False),
        ("10/8 narrowed to 10.0/16", {"text": conf_edit("10.0.0.0-10.255.255.255", "10.0.0.0-10.0.255.255")}, False),
        ("link-local (cloud metadata) not denied", {"text": conf_edit("denied-peer-ip=169.254.0.0-169.254.255.255\n", "")}, False),
        ("IPv6 unique-local not denied", {"text": conf_edit("denied-peer-ip=fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff\n", "")}, False),
        ("allow-loopback-peers", {"text": text + "allow-loopback-peers\n"}, False),
        ("allowed-peer-ip=10.1.2.3", {"text": text + "allowed-peer-ip=10.1.2.3\n"}, False),
        ("a secret in the file", {"text": text + "static-auth-secret=north\n"}, False),
        ("lt-cred-mech instead of use-auth-secret", {"text": conf_edit("use-auth-secret\n", "lt-cred-mech\n")}, False),
        ("no-cli misspelt", {"text": conf_edit("no-cli\n", "no-clii\n")}, False),
        ("no-multicast-peers dropped", {"text": conf_edit("no-multicast-peers\n", "")}, False),
        ("relay range up to 65535", {"text": conf_edit("max-port=49999", "max-port=65535")}, False),
        ("relay range from 1024", {"text": conf_edit("min-port=49160", "min-port=1024")}, False),
        ("compose: coturn's secret from another variable",
         {"svcs": compose_edit(lambda s: s["coturn"]["environment"].update(TURN_SECRET="${TURN_SECRET_OLD}"))}, False),
        ("compose: TURN_URLS on port 3479",
         {"svcs": compose_edit(lambda s: s["signaling"]["environment"].update(
             TURN_URLS=s["signaling"]["environment"]["TURN_URLS"].replace(":3478?", ":3479?")))}, False),
        ("compose: coturn publishes ports instead of the host network",
         {"svcs": compose_edit(lambda s: (s["coturn"].pop("network_mode"), s["coturn"].update(ports=["3478:3478/udp"])))}, False),
        ("compose: the gateways get TURN_SECRET",
         {"svcs": compose_edit(lambda s: s["gateway-1"]["environment"].update(TURN_SECRET="${TURN_SECRET}"))}, False),
        ("k8s: coturn's secret from another key",
         {"turn": docs_edit(turn, "DaemonSet", "coturn", lambda d: env_set(
             d, "TURN_SECRET", {"valueFrom": {"secretKeyRef": {"name": "unilink-secrets", "key": "TURN_SECRET_OLD"}}}))}, False),
        ("k8s: coturn without hostNetwork",
         {"turn": docs_edit(turn, "DaemonSet", "coturn", lambda d: d["spec"]["template"]["spec"].pop("hostNetwork"))}, False),
        ("k8s: coturn with allow-loopback-peers in args",
         {"turn": docs_edit(turn, "DaemonSet", "coturn", lambda d: container(d).update(args=["--allow-loopback-peers"]))}, False),
        ("k8s: signaling's TURN_URLS udp only",
         {"prod": docs_edit(prod, "Deployment", "signaling", lambda d: env_set(
             d, "TURN_URLS", {"value": "turn:turn.unilink.app:3478?transport=udp"}))}, False),
        ("k8s: the gateway gets TURN_SECRET",
         {"prod": docs_edit(prod, "Deployment", "gateway", lambda d: env_set(
             d, "TURN_SECRET", {"valueFrom": {"secretKeyRef": {"name": "unilink-secrets", "key": "TURN_SECRET"}}}))}, False),
    ]
    failures = 0
    for what, args, should_pass in cases:
        found = run(**args)
        good = (not found) == should_pass
        failures += not good
        detail = f" ({found[0]})" if found else ""
        print(f"  {'ok' if good else 'WRONG'}: {what}: {'accepted' if not found else 'refused'}{detail}")
    if failures:
        sys.exit(f"turn self-test: {failures} case(s) not as expected")
    print(f"turn self-test: every broken variant refused ({len(cases) - 1} variants)")


# ----------------------------------------------------------- monitoring --
# prometheus-operator resources next to the plain rule files: the
# PrometheusRule is generated from deploy/prometheus/alerts.yml (never edited
# by hand) and must stay equal to it; the ServiceMonitor scrapes every
# service's metrics port.
MONITORING_DIR = os.path.join(ROOT, "k8s", "monitoring")
PROMETHEUS_RULE_FILE = os.path.join(MONITORING_DIR, "prometheusrule.yaml")
MONITORING_SCHEMAS = os.path.join(ROOT, "k8s", "schemas", "monitoring.coreos.com")


def prometheus_rule(rules_path):
    """The PrometheusRule object carrying the groups of RULES."""
    groups = yaml.safe_load(open(rules_path))["groups"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "unilink", "labels": {"app.kubernetes.io/part-of": "unilink",
                                                   "app.kubernetes.io/component": "alerts"}},
        "spec": {"groups": groups},
    }


class _LiteralDumper(yaml.SafeDumper):
    pass


_LiteralDumper.add_representer(
    str, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v, style="|" if "\n" in v else None))


def write_prometheus_rule(rules_path, out_path):
    """validate_deploy.py prometheusrule: regenerate k8s/monitoring/prometheusrule.yaml."""
    rel = os.path.relpath(os.path.abspath(rules_path), ROOT)
    with open(out_path, "w") as f:
        f.write(f"# GENERATED from {rel}: do not edit. Regenerate with\n"
                f"#   scripts/validate_deploy.py prometheusrule {rel} {os.path.relpath(os.path.abspath(out_path), ROOT)}\n"
                "# scripts/validate-deploy.sh fails when the two differ.\n---\n")
        yaml.dump(prometheus_rule(rules_path), f, Dumper=_LiteralDumper, sort_keys=False, width=120)
    print(f"wrote {out_path}")


def selector_matches(selector, labels):
    for k, v in selector.get("matchLabels", {}).items():
        if labels.get(k) != v:
            return False
    for ex in selector.get("matchExpressions", []):
        value, op = labels.get(ex["key"]), ex["operator"]
        if (op == "In" and value not in ex.get("values", [])) or (op == "NotIn" and value in ex.get("values", [])) \
                or (op == "Exists" and value is None) or (op == "DoesNotExist" and value is not None):
            return False
    return True


def schema_problems(objs, schema_dir):
    """Objects of monitoring.coreos.com against the vendored schemas (check-jsonschema)."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, d in enumerate(objs):
            version = d["apiVersion"].rpartition("/")[2]
            schema = os.path.join(schema_dir, f"{d['kind'].lower()}_{version}.json")
            if not os.path.exists(schema):
                out.append(f"{d['kind']} {d['metadata']['name']}: no vendored schema {os.path.relpath(schema, ROOT)}")
                continue
            f = os.path.join(tmp, f"{i}.json")
            with open(f, "w") as fh:
                json.dump(d, fh)
            run = subprocess.run(["check-jsonschema", "--schemafile", schema, f], capture_output=True, text=True)
            if run.returncode != 0:
                text = re.sub(r"\s+", " ", (run.stdout + run.stderr).replace(f, "")).strip()
                out.append(f"{d['kind']} {d['metadata']['name']}: schema: {text[:300]}")
    return out


def monitoring_problems(docs, rules_path):
    out = []
    bad = out.append
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
    rules = by_kind.get("PrometheusRule", {})
    if len(rules) != 1:
        bad(f"expected one PrometheusRule, found {sorted(rules)}")
    for name, rule in rules.items():
        want = prometheus_rule(rules_path)["spec"]
        if rule.get("spec") != want:
            have = {r.get("alert") or r.get("record") for g in rule.get("spec", {}).get("groups", []) for r in g["rules"]}
            wanted = {r.get("alert") or r.get("record") for g in want["groups"] for r in g["rules"]}
            bad(f"PrometheusRule {name} differs from {os.path.relpath(rules_path, ROOT)} (missing "
                f"{sorted(wanted - have)}, extra {sorted(have - wanted)}; regenerate it: "
                f"scripts/validate_deploy.py prometheusrule deploy/prometheus/alerts.yml k8s/monitoring/prometheusrule.yaml)")
    monitors = by_kind.get("ServiceMonitor", {})
    if len(monitors) != 1:
        bad(f"expected one ServiceMonitor, found {sorted(monitors)}")
    services = by_kind.get("Service", {})
    for name, sm in monitors.items():
        spec = sm.get("spec", {})
        ns = spec.get("namespaceSelector", {})
        for svc_name in SERVICES:
            svc = services.get(svc_name)
            if svc is None:
                bad(f"Service {svc_name} not rendered")
                continue
            labels = svc["metadata"].get("labels", {})
            if not selector_matches(spec.get("selector", {}), labels):
                bad(f"ServiceMonitor {name} does not select Service {svc_name}")
                continue
            if ns and not ns.get("any") and svc["metadata"].get("namespace") not in ns.get("matchNames", []):
                bad(f"ServiceMonitor {name}: namespaceSelector misses Service {svc_name}'s namespace")
            port_names = {p.get("name") for p in svc["spec"].get("ports", [])}
            eps = [e for e in spec.get("endpoints", []) if e.get("port") in port_names]
            if not eps:
                bad(f"ServiceMonitor {name}: no endpoint on a port of Service {svc_name} ({sorted(port_names)})")
            for e in eps:
                if e.get("path", "/metrics") != "/metrics":
                    bad(f"ServiceMonitor {name}: scrapes {e.get('path')} on {svc_name}, not /metrics")
                port = next(p for p in svc["spec"]["ports"] if p.get("name") == e["port"])
                if port["port"] not in (8000, 9090):
                    bad(f"ServiceMonitor {name}: port {e['port']} of {svc_name} is {port['port']}, not a metrics port")
        # `job` must stay the service name: the alerts and the dashboard say job="auth", ….
        if spec.get("jobLabel") not in (None, "app.kubernetes.io/name"):
            bad(f"ServiceMonitor {name}: jobLabel {spec.get('jobLabel')} would rename the job label the alerts use")
    out.extend(schema_problems(list(rules.values()) + list(monitors.values()), MONITORING_SCHEMAS))
    return out


def check_monitoring(rendered_path, rules_path):
    """The rendered production overlay's prometheus-operator resources, then a
    self-test: broken variants must be refused."""
    docs = [d for d in yaml.safe_load_all(open(rendered_path)) if d]
    problems.extend(monitoring_problems(docs, rules_path))
    if problems:
        finish("monitoring (PrometheusRule, ServiceMonitor)")

    def find(ds, kind):
        return next(d for d in ds if d["kind"] == kind)

    def drop_alert(ds):
        find(ds, "PrometheusRule")["spec"]["groups"][-1]["rules"].pop()

    def edit_expr(ds):
        r = find(ds, "PrometheusRule")["spec"]["groups"][0]["rules"][0]
        r["expr"] = r["expr"].replace("0.05", "0.5")

    def wrong_port(ds):
        find(ds, "ServiceMonitor")["spec"]["endpoints"] = [{"port": "grpc", "path": "/metrics"}]

    def narrow(ds):
        sel = find(ds, "ServiceMonitor")["spec"]["selector"]
        sel.setdefault("matchLabels", {})["app.kubernetes.io/name"] = "gateway"

    def unknown_field(ds):
        find(ds, "ServiceMonitor")["spec"]["endpoints"][0]["intervall"] = "15s"

    def bad_duration(ds):
        find(ds, "PrometheusRule")["spec"]["groups"][0]["rules"][0]["for"] = "5 minutes"

    def whole(ds):
        return monitoring_problems(ds, rules_path)

    def schema_only(ds):
        return schema_problems([d for d in ds if d["kind"] in ("PrometheusRule", "ServiceMonitor")], MONITORING_SCHEMAS)

    cases = [("an alert missing from the PrometheusRule", drop_alert, whole),
             ("an edited expression", edit_expr, whole),
             ("scraping the gRPC port", wrong_port, whole),
             ("a selector that misses the backends", narrow, whole),
             ("a misspelt endpoint field (schema)", unknown_field, schema_only),
             ("a duration Prometheus cannot parse (schema)", bad_duration, schema_only)]
    wrong = 0
    for what, edit, checker in cases:
        ds = copy.deepcopy(docs)
        edit(ds)
        found = checker(ds)
        wrong += not found
        print(f"  {'ok' if found else 'WRONG'}: {what}: {'refused (' + found[0][:150] + ')' if found else 'accepted'}")
    check(wrong == 0, f"monitoring self-test: {wrong} broken variant(s) accepted")
    finish(f"monitoring (PrometheusRule = alerts.yml, ServiceMonitor on {len(SERVICES)} services; "
           f"{len(cases)} broken variants refused)")


# -------------------------------------------------------------- secrets --
# Which keys of Secret unilink-secrets each workload may receive: what its
# code uses. The gateway keeps DATABASE_URL for its /health database ping
# (a pool of 2, `SELECT 1`; README "Operating in production").
SECRET_KEYS_ALLOWED = {
    "gateway": {"DATABASE_URL", "REDIS_URL", "SENTRY_DSN"},
    "auth": {"DATABASE_URL", "DATABASE_READ_URL", "REDIS_URL", "SENTRY_DSN", "SECRET_KEY", "EVENT_SEAL_KEYS"},
    "profile": {"DATABASE_URL", "DATABASE_READ_URL", "REDIS_URL", "SENTRY_DSN"},
    "signaling": {"DATABASE_URL", "DATABASE_READ_URL", "REDIS_URL", "SENTRY_DSN", "TURN_SECRET"},
    "notification": {"DATABASE_URL", "DATABASE_READ_URL", "REDIS_URL", "SENTRY_DSN", "EVENT_SEAL_KEYS",
                     "SMTP_USER", "SMTP_PASSWORD"},
    "unilink-migrate": {"DATABASE_URL", "REDIS_URL"},
}


def secret_refs(container):
    refs = set()
    for e in container.get("env", []):
        ref = e.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            refs.add((ref.get("name"), ref.get("key"), e["name"]))
    for ef in container.get("envFrom", []):
        if "secretRef" in ef:
            refs.add((ef["secretRef"].get("name"), "*", "*"))
    return refs


def secrets_problems(docs):
    out = []
    for d in docs:
        if d["kind"] not in ("Deployment", "Job"):
            continue
        name = d["metadata"]["name"]
        allowed = SECRET_KEYS_ALLOWED.get(name)
        if allowed is None:
            continue
        pod = d["spec"]["template"]["spec"]
        for c in pod.get("initContainers", []) + pod["containers"]:
            for secret, key, var in sorted(secret_refs(c)):
                if secret == "unilink-secrets" and key == "*":
                    out.append(f"{d['kind']} {name}/{c['name']}: envFrom the whole Secret unilink-secrets")
                elif secret == "unilink-secrets" and key not in allowed:
                    out.append(f"{d['kind']} {name}/{c['name']}: receives {key} (as {var}), which it does not use")
                elif secret == "unilink-secrets" and key != var:
                    out.append(f"{d['kind']} {name}/{c['name']}: {key} arrives as {var}")
    return out


def check_secrets(rendered_path):
    docs = [d for d in yaml.safe_load_all(open(rendered_path)) if d]
    problems.extend(secrets_problems(docs))
    # Self-test: TURN_SECRET or SECRET_KEY handed to the gateway is refused.
    for key in ("TURN_SECRET", "SECRET_KEY", "SMTP_PASSWORD"):
        ds = copy.deepcopy(docs)
        gw = next(d for d in ds if d["kind"] == "Deployment" and d["metadata"]["name"] == "gateway")
        gw["spec"]["template"]["spec"]["containers"][0].setdefault("env", []).append(
            {"name": key, "valueFrom": {"secretKeyRef": {"name": "unilink-secrets", "key": key}}})
        check(secrets_problems(ds), f"secrets self-test: {key} given to the gateway was not refused")
    finish(f"secrets per workload ({len(SECRET_KEYS_ALLOWED)} workloads; 3 broken variants refused)")


# ------------------------------------------------------------- workflow --
# .github/workflows/deploy.yml must: run the tests before anything is built
# or applied; push images that carry an SBOM; apply the migration Job and
# wait for it to complete before any Deployment changes; wait for the
# rollout with a timeout; roll every Deployment back when that fails.
YQ_SPLIT = re.compile(r"""yq\b.*select\(\.kind\s*(==|!=)\s*"Deployment"\).*>\s*"?([^"\s]+)"?""")



def rendered_without_deployments(step, target):
    """Whether `step` writes `target` with `kustomize build` of its
    working directory, a repository directory whose manifests hold no
    Deployment (so applying it cannot roll the release out early)."""
    run = step.get("run", "")
    directory = step.get("working-directory")
    if not directory or not re.search(r"kustomize build\s+\.\s*>\s*\"?" + re.escape(target) + r"\"?", run):
        return False
    path = os.path.join(ROOT, directory)
    if not os.path.isdir(path):
        return False
    for name in os.listdir(path):
        if name.endswith((".yaml", ".yml")) and "kind: Deployment" in open(os.path.join(path, name)).read():
            return False
    return True

def workflow_problems(deploy, tests):
    out = []
    bad = out.append
    jobs = deploy.get("jobs", {})
    on = deploy.get("on", deploy.get(True, {}))

    def runs(job):
        return "\n".join(st.get("run", "") for st in job.get("steps", []))

    def needs(name, seen=None):
        seen = set() if seen is None else seen
        for n in ([jobs[name].get("needs")] if isinstance(jobs[name].get("needs"), str) else jobs[name].get("needs", [])):
            if n in jobs and n not in seen:
                seen.add(n)
                needs(n, seen)
        return seen

    # The gate: a job that is the test workflow (or runs scripts/test.sh).
    gates = {n for n, j in jobs.items()
             if j.get("uses") == "./.github/workflows/tests.yml" or "scripts/test.sh" in runs(j)}
    if not gates:
        bad("no job runs the tests (uses ./.github/workflows/tests.yml, or runs scripts/test.sh)")
    if any(j.get("uses") == "./.github/workflows/tests.yml" for j in jobs.values()):
        tests_on = tests.get("on", tests.get(True, {}))
        if "workflow_call" not in (tests_on or {}):
            bad("tests.yml has no workflow_call trigger: the deploy workflow cannot run it")
        if "scripts/test.sh" not in yaml.safe_dump(tests) or "scripts/validate-deploy.sh" not in yaml.safe_dump(tests):
            bad("tests.yml does not run scripts/test.sh and scripts/validate-deploy.sh (the README's test command)")
    for name, job in jobs.items():
        text = yaml.safe_dump(job)
        if ("docker/build-push-action" in text or "kubectl" in text) and not (needs(name) & gates):
            bad(f"job {name} builds or deploys without needing the tests ({sorted(gates)})")

    # Images carry an SBOM.
    builds = [(n, st) for n, j in jobs.items() for st in j.get("steps", [])
              if str(st.get("uses", "")).startswith("docker/build-push-action")]
    if not builds:
        bad("no docker/build-push-action step")
    for n, st in builds:
        w = st.get("with", {})
        if str(w.get("push", "")).lower() == "true" and str(w.get("sbom", "")).lower() != "true":
            bad(f"job {n}: pushes images without an SBOM attestation (sbom: true)")

    # The deploy job's order.
    deployers = [n for n, j in jobs.items() if "kubectl apply" in runs(j)]
    if len(deployers) != 1:
        bad(f"expected one job that runs kubectl apply, found {deployers}")
        return out
    steps = jobs[deployers[0]].get("steps", [])
    split = {}
    for st in steps:
        for m in YQ_SPLIT.finditer(st.get("run", "")):
            split[m.group(2)] = m.group(1)
    wait_at = next((i for i, st in enumerate(steps)
                    if "wait --for=condition=complete" in st.get("run", "") and "job/unilink-migrate" in st.get("run", "")),
                   None)
    if wait_at is None:
        bad("no step waits for job/unilink-migrate to complete (kubectl wait --for=condition=complete)")
        return out
    job_applied = deploy_applied = None
    for i, st in enumerate(steps):
        for line in st.get("run", "").splitlines():
            if "kubectl apply" not in line:
                continue
            if "kubectl apply -k" in line or re.search(r"kubectl apply\b.*-k\s", line):
                bad(f"step {st.get('name', i)!r} applies a whole kustomization: Deployments would change "
                    "together with the migration Job")
                continue
            m = re.search(r"kubectl apply\b.*-f\s+\"?([^\"\s]+)\"?", line)
            if not m:
                continue
            target = m.group(1)
            if target == "-":
                continue
            kind = split.get(target)
            if kind == "!=":
                job_applied = i if job_applied is None else job_applied
            elif kind == "==":
                deploy_applied = i if deploy_applied is None else deploy_applied
            elif os.path.exists(os.path.join(ROOT, target)):
                if "kind: Deployment" in open(os.path.join(ROOT, target)).read():
                    deploy_applied = i if deploy_applied is None else deploy_applied
            elif rendered_without_deployments(st, target):
                # e.g. k8s/turn (coturn's own namespace): rendered in this
                # step from a directory that holds no Deployment.
                continue
            else:
                bad(f"step {st.get('name', i)!r} applies {target}, which is not one of the split halves")
    if job_applied is None or job_applied > wait_at:
        bad("the migration Job is not applied before the wait for it (a select(.kind != \"Deployment\") half)")
    if deploy_applied is None:
        bad("no step applies the Deployments (a select(.kind == \"Deployment\") half)")
    elif deploy_applied <= wait_at:
        bad("Deployments are applied before the migration Job completed")
    # The wait for the release's Deployments (not, e.g., coturn's DaemonSet).
    status_at = next((i for i, st in enumerate(steps) if "rollout status" in st.get("run", "")
                      and "deployment/" in st.get("run", "")
                      and "--timeout=" in st.get("run", "") and not st.get("if")), None)
    if status_at is None or deploy_applied is None or status_at <= deploy_applied:
        bad("no step waits for the rollout with a timeout (kubectl rollout status --timeout=…) after applying")
    undo = [(i, st) for i, st in enumerate(steps) if "rollout undo" in st.get("run", "")]
    if not undo:
        bad("no step rolls back (kubectl rollout undo)")
    for i, st in undo:
        if "failure()" not in str(st.get("if", "")):
            bad(f"step {st.get('name', i)!r}: rollout undo does not run on failure (if: failure())")
        if status_at is not None and i <= status_at:
            bad(f"step {st.get('name', i)!r}: rolls back before the rollout was waited for")
        if "$DEPLOYMENTS" not in st.get("run", "") and not all(d in st.get("run", "") for d in SERVICES):
            bad(f"step {st.get('name', i)!r}: does not roll back every Deployment")
    return out


def check_workflow(deploy_path, tests_path):
    deploy = yaml.safe_load(open(deploy_path))
    tests = yaml.safe_load(open(tests_path))
    problems.extend(workflow_problems(deploy, tests))
    if problems:
        finish("deploy workflow")

    def deploy_job(d):
        return next(j for j in d["jobs"].values() if "kubectl apply" in yaml.safe_dump(j))

    def steps(d):
        return deploy_job(d)["steps"]

    def step(d, word):
        return next(st for st in steps(d) if word in st.get("run", ""))

    def no_gate(d, t):
        for j in d["jobs"].values():
            j.pop("needs", None)

    def no_call(d, t):
        (t.get("on") if "on" in t else t[True]).pop("workflow_call")

    def all_at_once(d, t):
        st = step(d, "wait --for=condition=complete")
        st["run"] = st["run"].replace('kubectl apply -f "$RUNNER_TEMP/prerequisites.yaml"', "kubectl apply -k .")

    def deployments_first(d, t):
        ss = steps(d)
        st = step(d, 'kubectl apply -f "$RUNNER_TEMP/workloads.yaml"')
        ss.remove(st)
        ss.insert(ss.index(step(d, "wait --for=condition=complete")), st)

    def no_undo(d, t):
        steps(d).remove(step(d, "rollout undo"))

    def undo_always(d, t):
        step(d, "rollout undo").pop("if")

    def no_timeout(d, t):
        st = next(x for x in steps(d) if "rollout status" in x.get("run", "") and "deployment/" in x.get("run", "")
                  and not x.get("if"))
        st["run"] = st["run"].replace(" --timeout=300s", "")

    def no_sbom(d, t):
        for j in d["jobs"].values():
            for st in j.get("steps", []):
                if str(st.get("uses", "")).startswith("docker/build-push-action"):
                    st["with"].pop("sbom")

    cases = [("no job needs the tests", no_gate), ("tests.yml cannot be called", no_call),
             ("the whole overlay applied with the Job", all_at_once),
             ("Deployments applied before the Job completed", deployments_first),
             ("no rollback", no_undo), ("a rollback that runs on success too", undo_always),
             ("a rollout wait without timeout", no_timeout), ("images without an SBOM", no_sbom)]
    wrong = 0
    for what, edit in cases:
        d, t = copy.deepcopy(deploy), copy.deepcopy(tests)
        edit(d, t)
        found = workflow_problems(d, t)
        wrong += not found
        print(f"  {'ok' if found else 'WRONG'}: {what}: {'refused (' + found[0][:140] + ')' if found else 'accepted'}")
    check(wrong == 0, f"workflow self-test: {wrong} broken variant(s) accepted")
    finish(f"deploy workflow (tests gate, SBOM, migrations before rollout, timeout, rollback; "
           f"{len(cases)} broken variants refused)")


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 0 if len(argv) >= 2 else 2
    cmd, args = argv[1], argv[2:]
    if cmd == "k8s" and len(args) == 2 and args[1] in ("base", "production"):
        check_k8s(*args)
    elif cmd == "budget-selftest" and len(args) == 1:
        budget_selftest(*args)
    elif cmd == "drain-selftest" and len(args) == 1:
        drain_selftest(*args)
    elif cmd == "alerts" and len(args) == 2:
        check_alerts(*args)
    elif cmd == "grafana" and len(args) == 2:
        check_grafana(*args)
    elif cmd == "compose" and len(args) == 1:
        check_compose(*args)
    elif cmd == "prometheusrule" and len(args) == 2:
        write_prometheus_rule(*args)
    elif cmd == "monitoring" and len(args) == 2:
        check_monitoring(*args)
    elif cmd == "secrets" and len(args) == 1:
        check_secrets(*args)
    elif cmd == "workflow" and len(args) == 2:
        check_workflow(*args)
    elif cmd == "turn" and len(args) == 4:
        check_turn(*args)
    elif cmd == "turn-selftest" and len(args) == 4:
        turn_selftest(*args)
    elif cmd == "crds" and len(args) == 1:
        check_crds(*args)
    elif cmd == "autoscaling-selftest" and len(args) == 1:
        autoscaling_selftest(*args)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
