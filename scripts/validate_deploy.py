#!/usr/bin/env python3
"""Structural checks of UniLink's deployment files, beyond schema validity.

Used by scripts/validate-deploy.sh; needs only PyYAML (installed with
yamllint). Each subcommand prints what it checked and exits 1 listing every
problem found.

  k8s FILE {base,production}   rendered kustomize output
  alerts RULES TESTS           every alert has a firing and a silent test
  grafana DASHBOARD OUT_RULES  dashboard shape; writes its PromQL as a rule
                               file for `promtool check rules`
  compose FILE                 docker-compose.yml wiring
"""
import json
import os
import re
import sys

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
        if pre[:1] == ["sleep"]:
            check(int(pre[1]) + 20 < 30, f"{where}: preStop sleep + drain does not fit the grace period")
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
            check(ready.get("path") == "/health" and ready.get("port") in ("http", 8000), f"{where}: readiness /health :8000")
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

    hpas = by_kind.get("HorizontalPodAutoscaler", {})
    for name in SERVICES:
        hpa = hpas.get(name)
        if not check(hpa is not None, f"HPA {name} missing"):
            continue
        s = hpa["spec"]
        check(s["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}, f"HPA {name}: target")
        check(s.get("minReplicas", 1) >= 2, f"HPA {name}: minReplicas < 2 (PDB would block drains)")
        kinds = {(m["type"], (m.get("resource") or m.get("pods") or {}).get("name") or
                  (m.get("pods") or {}).get("metric", {}).get("name")) for m in s["metrics"]}
        check(("Resource", "cpu") in kinds, f"HPA {name}: no CPU metric")
        if name in ("gateway", "signaling"):
            check(("Pods", "websocket_connections") in kinds, f"HPA {name}: no websocket_connections Pods metric")

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
    for port in (53, 5432, 6379, 4317, 587, 465, 25):
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
        for d in docs:
            if d["kind"] != "Namespace":
                check(d["metadata"].get("namespace") == "unilink", f"{d['kind']} {d['metadata']['name']}: namespace")
        check("unilink" in by_kind.get("Namespace", {}), "Namespace unilink missing")
    else:
        for d in docs:
            check("namespace" not in d["metadata"], f"base {d['kind']} {d['metadata']['name']} sets a namespace")
    finish(f"k8s policy ({flavour}, {len(docs)} objects)")


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
}


def check_alerts(rules_path, tests_path):
    rules = yaml.safe_load(open(rules_path))
    alerts = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    for name, metric in REQUIRED_ALERTS.items():
        if check(name in alerts, f"alert {name} missing"):
            check(metric in alerts[name], f"alert {name} does not use {metric}")
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
        svc = name.split("-")[-1] if name.startswith(("migrate-", "gateway-")) else name
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
    nginx_conf = open(os.path.join(base, "nginx", "nginx.conf")).read()
    for g in ("gateway-1:8000", "gateway-2:8000"):
        check(g in nginx_conf, f"nginx upstream lacks {g}")
    prom = yaml.safe_load(open(os.path.join(base, "prometheus", "prometheus.yml")))
    targets = {t for job in prom["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]}
    for t in ["gateway-1:8000", "gateway-2:8000"] + [f"{b}:9090" for b in BACKENDS]:
        check(t in targets, f"prometheus does not scrape {t}")
    finish(f"compose wiring ({len(svcs)} services)")


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 0 if len(argv) >= 2 else 2
    cmd, args = argv[1], argv[2:]
    if cmd == "k8s" and len(args) == 2 and args[1] in ("base", "production"):
        check_k8s(*args)
    elif cmd == "alerts" and len(args) == 2:
        check_alerts(*args)
    elif cmd == "grafana" and len(args) == 2:
        check_grafana(*args)
    elif cmd == "compose" and len(args) == 1:
        check_compose(*args)
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
