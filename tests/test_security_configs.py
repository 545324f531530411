"""No unauthenticated Ray endpoints in what rootzone ships (reliability review, defect 3).

- Every shipped config and doc (cluster/, docs/, benchmarks/, ray_jobs/, scripts/, README.md): no dashboard or
  job API bound to all interfaces, and nothing that turns Ray's token authentication off.
- Each cluster definition turns token authentication on, keeps the dashboard/job API on 127.0.0.1 (KubeRay:
  on the pod network for the operator, behind the token and a NetworkPolicy, see docs/ray.md), and in KubeRay
  hands the S3 secret only to the Ray containers that read the store.
- A local Ray instance started by rootzone listens on 127.0.0.1 only, and its token file is private
  (``ray`` marker: it starts Ray, ~10 s).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED_DIRS = ("cluster", "docs", "benchmarks", "ray_jobs", "scripts")
TEXT_SUFFIXES = {".py", ".sh", ".bash", ".yaml", ".yml", ".md", ".rst", ".txt", ".toml", ".json", ".cfg", ".ini",
                 ".env", ""}

# `--dashboard-host=0.0.0.0`, `--dashboard-host 0.0.0.0`, `dashboard-host: "0.0.0.0"`, `dashboard_host="::"`, ...
ALL_INTERFACES = r"""["']?(?:0\.0\.0\.0|::|\[::\]|\*)["']?(?![\w.:])"""
DASHBOARD_ALL = re.compile(r"dashboard[-_]host[\"']?\s*[=:\s,]\s*" + ALL_INTERFACES, re.IGNORECASE)
# a job API / dashboard URL on the wildcard address (what a reader would open to the network)
WILDCARD_URL = re.compile(r"https?://(?:0\.0\.0\.0|\[::\])(?::\d+)?", re.IGNORECASE)


def shipped_files() -> list[Path]:
    files = [REPO / "README.md"] if (REPO / "README.md").is_file() else []
    for d in SHIPPED_DIRS:
        root = REPO / d
        if root.is_dir():
            files += [p for p in sorted(root.rglob("*"))
                      if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES and "__pycache__" not in p.parts
                      and p.stat().st_size < 2_000_000]
    return files


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


def violations(text: str) -> list[str]:
    """Lines that bind the dashboard/job API to all interfaces or turn Ray's authentication off."""
    bad = []
    for n, line in enumerate(text.splitlines(), 1):
        if DASHBOARD_ALL.search(line) or WILDCARD_URL.search(line):
            bad.append(f"{n}: dashboard/job API on all interfaces: {line.strip()}")
        if "RAY_AUTH_MODE" in line.upper() and re.search(r"\bdisabled?\b", line, re.IGNORECASE):
            bad.append(f"{n}: Ray authentication disabled: {line.strip()}")
    return bad


def yaml_docs(path: Path) -> list[dict]:
    yaml = pytest.importorskip("yaml")
    return [d for d in yaml.safe_load_all(read(path)) if d is not None]


def find_key(obj, key: str):
    """Every value stored under ``key`` anywhere in a parsed YAML document."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key:
                yield v
            yield from find_key(v, key)
    elif isinstance(obj, list):
        for v in obj:
            yield from find_key(v, key)


# ---------------------------------------------------------------------------------------------- the scanner
def test_scanner_catches_what_the_review_found():
    """The patterns of the review's findings (before the fix) are caught; the fixed forms are not."""
    for line in ('export RAY_AUTH_MODE=disabled                # cluster-internal network',
                 '  --dashboard-host=0.0.0.0 --dashboard-port=$dash --temp-dir="$tmp" \\',
                 '  - ray start --head --port=6379 --dashboard-host=0.0.0.0 --autoscaling-config=x',
                 '      RAY_AUTH_MODE: disabled  # in-cluster traffic only',
                 '        dashboard-host: "0.0.0.0"',
                 'RAY_AUTH_MODE=e.get("RAY_AUTH_MODE", "disabled"))',
                 'ray.init(dashboard_host="0.0.0.0")',
                 "ray start --head --dashboard-host 0.0.0.0",
                 "ray job submit --address http://0.0.0.0:8265 -- python x.py",
                 "mp.setenv('RAY_AUTH_MODE', 'disabled')"):
        assert violations(line), line
    for line in ("export RAY_AUTH_MODE=token",
                 "  --dashboard-host=127.0.0.1 --dashboard-port=$dash",
                 "ray job submit --address http://127.0.0.1:8265 --working-dir .",
                 "(`*` / `0.0.0.0`) the GCS listens on all interfaces",
                 "dashboard-host: '127.0.0.1'"):
        assert not violations(line), line


def test_shipped_configs_and_docs_keep_auth_on_and_dashboard_off_the_network():
    files = shipped_files()
    assert REPO / "cluster" / "slurm-ensemble.sh" in files and REPO / "docs" / "ray.md" in files
    found = {str(p.relative_to(REPO)): violations(read(p)) for p in files}
    assert not {k: v for k, v in found.items() if v}


# ---------------------------------------------------------------------------------------------- SLURM
def test_slurm_script_token_auth_and_loopback_dashboard():
    path = REPO / "cluster" / "slurm-ensemble.sh"
    text = read(path)
    if shutil.which("bash"):
        done = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    assert re.search(r"^export RAY_AUTH_MODE=token\b", text, re.MULTILINE)
    assert "RAY_AUTH_TOKEN_PATH" in text and "umask 077" in text  # the job's token: a file only the user reads
    assert "RAY_AUTH_TOKEN=" not in text  # never the token itself in the script or on a command line
    joined = text.replace("\\\n", " ")
    heads = [line for line in joined.splitlines() if "ray start --head" in line]
    assert heads and all("--dashboard-host=127.0.0.1" in line for line in heads), heads
    submits = [line for line in joined.splitlines() if "ray job submit" in line]
    assert submits and all(re.search(r'--address "?http://127\.0\.0\.1:', line) for line in submits), submits


# ---------------------------------------------------------------------------------------------- AWS
def test_aws_launcher_token_auth_and_loopback_dashboard():
    (cfg,) = yaml_docs(REPO / "cluster" / "aws-gpu.yaml")
    head = [c for c in cfg["head_start_ray_commands"] if "ray start" in c]
    workers = [c for c in cfg["worker_start_ray_commands"] if "ray start" in c]
    assert head and workers
    for cmd in head + workers:
        assert re.match(r"^RAY_AUTH_MODE=token ray start\b", cmd), cmd
    assert all("--dashboard-host=127.0.0.1" in c for c in head), head
    assert "RAY_AUTH_MODE=token" in " ".join(cfg["docker"]["run_options"])
    # the token reaches every node as a file (never written into the config)
    assert any(remote.rstrip("/").endswith(".ray/auth_token") for remote in cfg.get("file_mounts", {}))
    assert "RAY_AUTH_TOKEN=" not in read(REPO / "cluster" / "aws-gpu.yaml")
    assert "http://127.0.0.1:8265" in read(REPO / "cluster" / "aws-gpu.yaml")  # how to submit: the SSH tunnel


# ---------------------------------------------------------------------------------------------- KubeRay
def kuberay() -> tuple[dict, list[dict]]:
    docs = yaml_docs(REPO / "cluster" / "kuberay-rayjob.yaml")
    (job,) = [d for d in docs if d.get("kind") == "RayJob"]
    return job, [d for d in docs if d.get("kind") == "NetworkPolicy"]


def pod_templates(job: dict) -> dict[str, dict]:
    spec = job["spec"]
    out = {"head": spec["rayClusterSpec"]["headGroupSpec"]["template"]}
    for g in spec["rayClusterSpec"].get("workerGroupSpecs", []):
        out[f"worker:{g['groupName']}"] = g["template"]
    if "submitterPodTemplate" in spec:
        out["submitter"] = spec["submitterPodTemplate"]
    return out


def secrets_used(container: dict) -> set[str]:
    names = {e["secretRef"]["name"] for e in container.get("envFrom", []) if "secretRef" in e}
    names |= {e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env", [])
              if "secretKeyRef" in e.get("valueFrom", {})}
    return names


def test_kuberay_token_auth_on():
    job, _ = kuberay()
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"
    assert not any(str(v).lower() == "disabled" for v in find_key(job, "RAY_AUTH_MODE"))
    assert "RAY_AUTH_MODE" not in job["spec"].get("runtimeEnvYAML", "")
    for env in find_key(job, "env"):  # no token spelled out in the manifest
        assert not any(e.get("name") == "RAY_AUTH_TOKEN" and "value" in e for e in env)


def test_kuberay_dashboard_not_exposed():
    """KubeRay's operator polls the job status through the head Service, so the dashboard stays on the pod
    network (KubeRay's default; 127.0.0.1 would leave the RayJob running forever): never set to all interfaces
    explicitly, never exposed beyond a ClusterIP Service, and fenced by a NetworkPolicy."""
    job, policies = kuberay()
    cluster = job["spec"]["rayClusterSpec"]
    for params in find_key(cluster, "rayStartParams"):
        assert "dashboard-host" not in (params or {}), params
    assert cluster["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP"
    assert "headService" not in cluster["headGroupSpec"]
    (policy,) = policies
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    for name, template in pod_templates(job).items():  # the policy covers every pod of the job
        labels = template.get("metadata", {}).get("labels", {})
        assert selector.items() <= labels.items(), name
    for rule in policy["spec"]["ingress"]:
        peers = rule["from"]
        assert peers, "an ingress rule without 'from' admits everyone"
        for peer in peers:
            assert "ipBlock" not in peer
            if peer.get("podSelector", {}).get("matchLabels") == selector and "namespaceSelector" not in peer:
                continue  # the job's own pods
            assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "kuberay-operator"}, peer
            assert [p["port"] for p in rule["ports"]] == [8265]  # the operator: the dashboard port only


def test_kuberay_s3_secret_only_in_the_ray_containers():
    job, _ = kuberay()
    users = {}
    for pod, template in pod_templates(job).items():
        spec = template["spec"]
        assert not any("secret" in v for v in spec.get("volumes", [])), f"{pod} mounts a secret volume"
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            if "rootzone-s3" in secrets_used(c):
                users[f"{pod}/{c['name']}"] = c
    # the head (job driver: store, aggregation, EXP) and the workers (trials) need it; nothing else gets it
    assert set(users) == {"head/ray-head", "worker:gpu/ray-worker"}, set(users)
    for c in users.values():
        assert not c.get("envFrom"), "name the keys: the whole secret goes nowhere"


# ---------------------------------------------------------------------------------------------- docs
def test_docs_explain_submitting_with_a_token_through_a_tunnel():
    text = read(REPO / "docs" / "ray.md")
    assert "RAY_AUTH_MODE=token" in text
    assert "ray job submit --address http://127.0.0.1:8265" in text
    assert "ray dashboard cluster/aws-gpu.yaml" in text and "ssh -N" in text and "kubectl port-forward" in text
    assert "RAY_AUTH_TOKEN_PATH" in text and "chmod 600" in text


# ---------------------------------------------------------------------------------------------- local Ray
def test_private_token_file(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    from rootzone.ensemble.cluster import ensure_private_token

    monkeypatch.setenv("HOME", str(tmp_path))
    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(k, raising=False)
    path = ensure_private_token()
    if path is None:
        pytest.skip("this Ray has no token authentication (< 2.52)")
    assert path == tmp_path / ".ray" / "auth_token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert re.fullmatch(r"[0-9a-f]{64}", path.read_text())
    before = path.read_text()
    assert ensure_private_token() is None and path.read_text() == before  # an existing token is kept
    path.unlink()
    for k, v in (("RAY_AUTH_TOKEN", "x" * 64), ("RAY_AUTH_TOKEN_PATH", str(tmp_path / "t")),
                 ("RAY_AUTH_MODE", "disabled")):
        with monkeypatch.context() as m:
            m.setenv(k, v)
            assert ensure_private_token() is None and not path.exists(), k


def test_local_cluster_settings_are_undone(monkeypatch):
    pytest.importorskip("ray")
    from ray._private import ray_constants

    from rootzone.ensemble import cluster as ensemble_ray

    monkeypatch.delenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", raising=False)
    monkeypatch.setattr(ensemble_ray, "ensure_private_token", lambda: None)
    flag = ray_constants.ENABLE_RAY_CLUSTER
    with ensemble_ray.local_cluster_settings():
        assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0" and ray_constants.ENABLE_RAY_CLUSTER is False
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ and ray_constants.ENABLE_RAY_CLUSTER == flag
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # inside `ray job submit`: joins, starts nothing
    assert not ensemble_ray.starts_local_cluster(None)
    assert ensemble_ray.starts_local_cluster("local") and not ensemble_ray.starts_local_cluster("10.0.0.1:6379")


PROBE = r'''
import json, os, sys
from rootzone.ensemble.cluster import connect
import ray

def tree(root):
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, todo = set(), [root]
    while todo:
        p = todo.pop()
        out.add(p)
        todo += kids.get(p, [])
    return out

def socket_owners(pids):
    owners = {}
    for pid in pids:
        try:
            name = open(f"/proc/{pid}/comm").read().strip()
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    owners[link[8:-1]] = name
        except OSError:
            pass
    return owners

def decode(hexaddr):
    raw = bytes.fromhex(hexaddr)
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # /proc: 32-bit words, host order
    import socket
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)

connect(None)
try:
    @ray.remote
    def pid():
        return os.getpid()
    ray.get([pid.remote() for _ in range(2)])
    owners = socket_owners(tree(os.getpid()))
    listeners = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in open(table).read().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in owners:  # LISTEN
                host, port = f[1].split(":")
                listeners.append([decode(host), int(port, 16), owners[f[9]]])
    print("PROBE " + json.dumps({"listeners": listeners, "node_ip": ray.util.get_node_ip_address(),
                                 "single_machine_env": os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}))
finally:
    ray.shutdown()
'''


def is_loopback(host: str) -> bool:
    ip = ipaddress.ip_address(host)
    return ip.is_loopback or bool(getattr(ip, "ipv4_mapped", None) and ip.ipv4_mapped.is_loopback)


@pytest.mark.ray
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_local_ray_listens_on_loopback_only(tmp_path):
    """`rootzone ensemble` without --address: every listening socket of the Ray instance it starts (GCS,
    raylet, agents, metrics, driver and worker gRPC) is on 127.0.0.1, and its token file is mode 0600."""
    pytest.importorskip("ray")
    home = tmp_path / "home"
    home.mkdir()
    temp = tempfile.mkdtemp(prefix="rzsec", dir="/tmp")  # short: Ray's unix sockets live under it
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "PYTHONPATH",
                        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env.update(HOME=str(home), RAY_TMPDIR=temp, PYTHONPATH=str(REPO), RAY_USAGE_STATS_ENABLED="0",
               OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", PROBE], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        time.sleep(1)
        leftover = [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and _cmdline_has(d, temp)]
        for pid in leftover:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)
    assert proc.returncode == 0, err[-3000:]
    (line,) = [x for x in out.splitlines() if x.startswith("PROBE ")]
    probe = json.loads(line[len("PROBE "):])
    names = {name for _, _, name in probe["listeners"]}
    assert {"gcs_server", "raylet"} <= names, probe  # we did see the Ray processes
    exposed = [x for x in probe["listeners"] if not is_loopback(x[0])]
    assert not exposed, f"listening beyond 127.0.0.1: {exposed}"
    assert probe["node_ip"] == "127.0.0.1" and probe["single_machine_env"] is None
    token = home / ".ray" / "auth_token"
    if token.exists():  # Ray >= 2.52
        assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert leftover == [], "Ray processes left over"


def _cmdline_has(proc_dir: Path, text: str) -> bool:
    try:
        return text in (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
