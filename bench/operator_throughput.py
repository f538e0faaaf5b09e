"""Operator throughput: N TrainingJobs whose Dataset already Succeeded → how fast do their Jobs appear?

Runs `kubeforge operator` as a subprocess against the test cluster (hack/test-cluster.sh up), creates N
TrainingJobs concurrently and times create → Job created per object two ways: create call returned → Job
seen by a watch (ms resolution), and, always, Job.creationTimestamp - TrainingJob.creationTimestamp from a
final list (server clock, 1 s resolution; immune to missed watch events). Completion is detected by the
watch or by listing Jobs every few seconds, whichever sees all N first. Reports p50/p95 latency, total
time, reconciles/s (from the operator's own kubeforge_reconcile_total) and the operator's peak RSS (VmHWM).

Also: API requests per object (the API server's own apiserver_request_total, minus the bench's creates
and watches), and `--restart` (stop the operator when half the Jobs exist, start a new one: every object
completes, no duplicate children). `--baseline DIR` runs the operator from another checkout (e.g. a
`git worktree` of the previous commit) for a before/after table in the same run.

First comes an *ideal operator* run (skip it with `--no-ideal`): no operator; the bench creates each
TrainingJob and right after it the Job the operator would create (the same pure builder). Its total and
latency are what this cluster and machine need for the objects, their Jobs and the pods those start, the
floor every operator sits on; the other runs report ratios against it (`vs_ideal`). The bench is a lean
client (raw watch lines, raw POSTs) so that its own CPU stays out of what it measures.

    python bench/operator_throughput.py --n 100 [--n 1000] [--quick] [--restart] [--baseline DIR] [--no-ideal]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GROUP, VERSION = "kubeforge.io", "v1alpha1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kubeconfig() -> str:
    out = subprocess.run(["bash", str(REPO / "hack" / "test-cluster.sh"), "kubeconfig"], capture_output=True,
                         text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


class Watcher:
    """Record when each object was first seen (client clock) through a watch. Lean: the raw stream, one
    json.loads per line, no client model objects (those cost the bench several CPU seconds per 1,000 Jobs,
    taken from the API server and the operator on a small machine)."""

    def __init__(self, list_fn: Any, *args: Any) -> None:
        self.seen: dict[str, float] = {}
        self.restarts = 0  # streams the API server ended early (resumed from the last resourceVersion)
        self.relisted = False  # a resume was refused (410 Gone): objects listed then got late first-seen times
        self._resp: Any = None
        self._stopped = False
        self._thread = threading.Thread(target=self._run, args=(list_fn, args), daemon=True)
        self._thread.start()

    def _run(self, list_fn: Any, args: tuple[Any, ...]) -> None:
        from kubernetes.watch.watch import iter_resp_lines

        rv = ""
        while not self._stopped:
            try:
                extra = {"resource_version": rv} if rv else {}
                self._resp = list_fn(*args, watch=True, timeout_seconds=3600, allow_watch_bookmarks=True,
                                     _preload_content=False, **extra)
                for line in iter_resp_lines(self._resp):
                    event = json.loads(line)
                    if event["type"] == "ERROR":  # 410: the revision is compacted; start over
                        rv, self.relisted = "", True
                        break
                    meta = event["object"]["metadata"]
                    rv = meta.get("resourceVersion") or rv
                    if event["type"] != "BOOKMARK":
                        self.seen.setdefault(meta["name"], time.monotonic())
            except Exception:  # stop() cuts the stream
                if self._stopped:
                    return
                time.sleep(0.2)
            if not self._stopped:
                self.restarts += 1

    def stop(self) -> None:
        self._stopped = True
        if self._resp is not None:
            self._resp.close()


def post(api: Any, path: str, body: dict[str, Any], method: str = "POST",
         content_type: str = "application/json") -> bytes:
    """POST a JSON body straight through the client's connection pool and return the raw answer: the bench
    is a lean client (the generated client walks every dict to sanitize it, several ms for a Job), so its
    CPU is not taken from the API server and the operator it measures."""
    headers = {"Content-Type": content_type, "Accept": "application/json"}
    api.update_params_for_auth(headers, None, ["BearerToken"], path, method, None)
    resp = api.rest_client.pool_manager.request(method, api.configuration.host + path, body=json.dumps(body),
                                                headers=headers)
    if resp.status >= 300:
        raise RuntimeError(f"{method} {path}: {resp.status} {resp.data[:300]!r}")
    return bytes(resp.data)


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process has used so far (/proc/PID/stat, clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(match.group(1)) / 1024 if match else float("nan")


def reconcile_total(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    pattern = r'^kubeforge_reconcile_total\{[^}]*kind="TrainingJob"[^}]*\} (\S+)'
    return sum(float(m.group(1)) for m in re.finditer(pattern, text, re.M))


def parse_ts(value: str) -> datetime:
    """RFC 3339 (as the API server writes creationTimestamp) → aware datetime."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def job_times(batch: Any, ns: str) -> dict[str, datetime]:
    """Job name → creationTimestamp (server clock) for every Job in the namespace."""
    items: list[Any] = batch.list_namespaced_job(ns).items
    return {str(j.metadata.name): j.metadata.creation_timestamp for j in items}


def apiserver_requests(api: Any) -> dict[tuple[str, str], float]:
    """(verb, resource) -> requests served so far, from the API server's /metrics."""
    headers = {"Accept": "text/plain"}
    api.update_params_for_auth(headers, None, ["BearerToken"], "/metrics", "GET", None)
    resp = api.call_api("GET", api.configuration.host + "/metrics", header_params=headers)
    text = resp.read().decode()
    out: dict[tuple[str, str], float] = {}
    for m in re.finditer(r'^apiserver_request_total\{([^}]*)\} (\S+)', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        key = (labels.get("verb", ""), labels.get("resource", ""))
        out[key] = out.get(key, 0.0) + float(m.group(2))
    return out


def operator_requests(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float], by: dict[str, float] | None = None
) -> float:
    """Requests made between two scrapes, without the bench's own (creates of TrainingJobs, Job lists,
    watches) and the control plane's (leases, pods, nodes, endpoints: KWOK and controllers); `by` gets the
    count per `VERB resource`."""
    mine = {("POST", "trainingjobs"), ("LIST", "jobs"), ("WATCH", "jobs"), ("WATCH", "trainingjobs")}
    other = {"leases", "pods", "nodes", "endpoints", "endpointslices", "replicasets", "serviceaccounts",
             "namespaces", "resourcequotas", "limitranges"}
    total = 0.0
    for key, value in after.items():
        if key in mine or key[1] in other or key[0] == "WATCH":
            continue
        total += value - before.get(key, 0.0)
        if by is not None and value > before.get(key, 0.0):
            by[f"{key[0]} {key[1]}"] = value - before.get(key, 0.0)
    return total


def start_operator(ns: str, env: dict[str, str], lport: int, log: Any) -> subprocess.Popen[bytes]:
    """`kubeforge operator` for one namespace; returns once its liveness endpoint answers."""
    proc = subprocess.Popen([sys.executable, "-m", "kubeforge", "operator", "-n", ns, "--liveness",
                             f"http://127.0.0.1:{lport}/healthz"], env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{lport}/healthz", timeout=2).close()
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"operator did not start; see /tmp/{ns}-operator.log") from None
            time.sleep(0.3)


def stop_operator(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[idx]


def wait_for_earlier_namespaces(core: Any, limit_s: float = 600) -> float:
    """Wait until the namespaces of earlier runs are gone: their garbage collection (1,000 Jobs, pods and
    the controllers' refused Events) would load the API server during this run and bias a before/after
    comparison against whichever runs second. Returns the seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < limit_s:
        left = [n.metadata.name for n in core.list_namespace().items if n.metadata.name.startswith("kf-bench-")]
        if not left:
            break
        time.sleep(2)
    return time.monotonic() - start


@functools.cache
def _ideal_settings() -> Any:
    """The operator's settings, read once (as the operator does at startup)."""
    from kubeforge.settings import OperatorSettings

    return OperatorSettings.from_env({**os.environ, "KUBEFORGE_STORE_ROOT": "s3://bench/store"})


def ideal_children(created: dict[str, Any]) -> list[dict[str, Any]]:
    """The children the operator would create for this TrainingJob, from the same pure builder (kinds.py)
    with its input resolved as the operator resolves it: what a zero-cost operator would send."""
    from kubeforge import kinds
    from kubeforge.stage import ResolvedInput

    meaning = kinds.of("TrainingJob")
    resource: Any = meaning.model.model_validate(created)
    inputs = {"dataset": ResolvedInput(kind="Dataset", name="corpus", uri="s3://bench/corpus", digest="sha256:0")}
    return list(meaning.children(resource, inputs, _ideal_settings(), 0))


def operator_writes(created: dict[str, Any], job_name: str) -> list[tuple[str, str, str, dict[str, Any]]]:
    """What the operator writes besides the Job when it creates one: the status merge patch (jobName, times,
    lineage, JobCreated=True and Succeeded=Unknown/Running) and the pass's Event. (method, path, content
    type, body), for the ideal run with `writes`."""
    meta = created["metadata"]
    ns, name, gen = meta["namespace"], meta["name"], meta.get("generation", 1)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    conditions = [{"type": t, "status": s, "reason": r, "message": m, "observedGeneration": gen,
                   "lastTransitionTime": now}
                  for t, s, r, m in (("JobCreated", "True", "JobCreated", f"Job {job_name} created"),
                                     ("Succeeded", "Unknown", "Running", f"Job {job_name} is running"))]
    status = {"status": {"observedGeneration": gen, "jobName": job_name, "startTime": now, "inputRevision": 0,
                         "lineage": [{"kind": "Dataset", "name": "corpus", "uri": "s3://bench/corpus",
                                      "digest": "sha256:0"}], "conditions": conditions}}
    event = {"metadata": {"generateName": "kubeforge-", "namespace": ns},
             "involvedObject": {"apiVersion": created["apiVersion"], "kind": "TrainingJob", "name": name,
                                "namespace": ns, "uid": meta["uid"]},
             "reason": "JobCreated", "message": f"Job {job_name} created", "type": "Normal",
             "source": {"component": "kubeforge-operator"}, "reportingComponent": "kubeforge-operator",
             "firstTimestamp": now, "lastTimestamp": now, "count": 1}
    base = f"/apis/{created['apiVersion']}/namespaces/{ns}/trainingjobs/{name}/status"
    return [("PATCH", base, "application/merge-patch+json", status),
            ("POST", f"/api/v1/namespaces/{ns}/events", "application/json", event)]


def run(n: int, kcfg: str, timeout: float, baseline: Path | None = None, restart: bool = False,
        ideal: bool = False, writes: bool = False) -> dict[str, Any]:
    """One measured run. `ideal`: no operator; the bench creates each TrainingJob and right after it the Job
    the operator would (same builder), so the run measures what this cluster and machine need for the
    objects, their Jobs and the pods the Jobs start: the floor any operator's total and latency sit on.
    `writes` (with `ideal`): the bench also writes, after each Job, the status patch and the Event the
    operator writes, so the floor includes the API server's work for them (without any operator CPU)."""
    from kubernetes import client, config

    config.load_kube_config(config_file=kcfg)
    core, custom, batch = client.CoreV1Api(), client.CustomObjectsApi(), client.BatchV1Api()
    waited = wait_for_earlier_namespaces(core)
    ns = f"kf-bench-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": ns, "labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})
    for _ in range(120):
        try:
            core.read_namespaced_service_account("default", ns)
            break
        except client.ApiException:
            time.sleep(0.5)
    # The input Dataset, already Succeeded (status written before the operator starts, so it is settled).
    ds = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Dataset", "metadata": {"name": "corpus", "namespace": ns},
          "spec": {"task": "instruction", "source": {"uris": ["s3://bench/raw.jsonl"]}}}
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, "datasets", ds)
    status = {"status": {"observedGeneration": 1, "artifactUri": "s3://bench/corpus", "digest": "sha256:0",
                         "conditions": [{"type": "Succeeded", "status": "True", "reason": "Completed", "message": "",
                                         "observedGeneration": 1, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}}
    custom.patch_namespaced_custom_object_status(GROUP, VERSION, ns, "datasets", "corpus", status)

    mport, lport = free_port(), free_port()
    env = {**os.environ, "KUBECONFIG": kcfg, "KUBEFORGE_METRICS_PORT": str(mport),
           "KUBEFORGE_STORE_ROOT": "s3://bench/store"}
    log = open(f"/tmp/{ns}-operator.log", "w")  # noqa: SIM115
    if baseline is not None:
        env["PYTHONPATH"] = str(baseline / "operator")  # ahead of the editable install of this checkout
    rss_before = cpu_used = cpu_mark = 0.0
    restarted = False
    proc = None if ideal else start_operator(ns, env, lport, log)
    if ideal:  # import the builders before the clock starts (the operator, too, has them loaded)
        from kubeforge import kinds  # noqa: F401
    try:
        api_before = apiserver_requests(custom.api_client)
        cpu_mark = 0.0 if proc is None else cpu_seconds(proc.pid)
        base = 0.0 if proc is None else reconcile_total(mport)
        job_watch = Watcher(batch.list_namespaced_job, ns)
        time.sleep(1)
        created_at: dict[str, float] = {}

        def make(i: int) -> None:
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "TrainingJob",
                    "metadata": {"name": f"tj-{i:05d}", "namespace": ns},
                    "spec": {"method": "sft", "model": {"uri": "hf://org/tiny"}, "dataset": {"name": "corpus"},
                             "resources": {"cpu": "100m", "memory": "128Mi"}}}
            created = post(custom.api_client, f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/trainingjobs", body)
            created_at[body["metadata"]["name"]] = time.monotonic()  # the API server has stored it
            if ideal:
                obj = json.loads(created)
                children = ideal_children(obj)
                for child in children:
                    post(custom.api_client, f"/apis/batch/v1/namespaces/{ns}/jobs", child)
                extra = operator_writes(obj, children[0]["metadata"]["name"]) if writes else []
                for method, path, ctype, payload in extra:
                    post(custom.api_client, path, payload, method, ctype)

        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(make, range(n)))
        t_created = time.monotonic() - t0
        want = {f"tj-{i:05d}-sft-g1" for i in range(n)}
        listed: set[str] = set()
        next_list = time.monotonic() + 3
        while not (want <= job_watch.seen.keys() or want <= listed):
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"only {len(want & (job_watch.seen.keys() | listed))}/{n} Jobs after {timeout}s")
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"operator exited; see /tmp/{ns}-operator.log")
            if proc is not None and restart and not restarted and len(job_watch.seen) >= n // 2:
                rss_before, cpu_used = peak_rss_mib(proc.pid), cpu_used + cpu_seconds(proc.pid) - cpu_mark
                stop_operator(proc)
                proc = start_operator(ns, env, lport, log)
                cpu_mark = cpu_seconds(proc.pid)
                base, restarted = 0.0, True
            if time.monotonic() >= next_list:  # a missed watch event must not stall the run
                listed = set(job_times(batch, ns))
                next_list = time.monotonic() + 3
            time.sleep(0.2)
        total = time.monotonic() - t0
        reconciles = 0.0 if proc is None else reconcile_total(mport) - base
        rss = 0.0 if proc is None else max(rss_before, peak_rss_mib(proc.pid))
        cpu = 0.0 if proc is None else cpu_used + cpu_seconds(proc.pid) - cpu_mark  # not counting imports
        by_request: dict[str, float] = {}
        requests = operator_requests(api_before, apiserver_requests(custom.api_client), by_request)
        job_watch.stop()
        watched = [job_watch.seen[f"tj-{i:05d}-sft-g1"] - created_at[f"tj-{i:05d}"] for i in range(n)
                   if f"tj-{i:05d}-sft-g1" in job_watch.seen]
        job_ts = job_times(batch, ns)
        listing: Any = custom.list_namespaced_custom_object(GROUP, VERSION, ns, "trainingjobs")
        tjs: list[dict[str, Any]] = listing["items"]
        stamped = [
            (job_ts[f"{t['metadata']['name']}-sft-g1"] - parse_ts(t["metadata"]["creationTimestamp"])).total_seconds()
            for t in tjs if f"{t['metadata']['name']}-sft-g1" in job_ts
        ]
        extra = sorted(set(job_times(batch, ns)) - want)
        events: dict[str, int] = {}
        for ev in core.list_namespaced_event(ns).items:  # who posts how many (count: repeats folded in)
            who = ev.reporting_component or (ev.source.component if ev.source else "") or "?"
            events[f"{who} {ev.reason}"] = events.get(f"{who} {ev.reason}", 0) + int(ev.count or 1)
    finally:
        if proc is not None:
            stop_operator(proc)
        log.close()
        core.delete_namespace(ns)
    return {
        "operator": ("ideal+writes" if writes else "ideal") if ideal
        else "baseline" if baseline is not None else "this checkout",
        "n": n,
        "restarted": restarted,
        "duplicate_or_extra_jobs": len(extra),
        "api_requests_per_object": round(requests / n, 1),
        "api_requests_per_object_by_verb": {k: round(v / n, 2) for k, v in sorted(by_request.items())},
        "events_per_object": {k: round(v / n, 2) for k, v in sorted(events.items())},
        "waited_for_earlier_namespaces_s": round(waited, 1),
        "create_seconds": round(t_created, 2),
        "total_seconds": round(total, 2),
        # Watch timing when the watch saw every Job, else the server-side timestamps.
        "latency_source": "watch" if len(watched) == n else "creationTimestamp",
        "latency_p50_s": round(statistics.median(watched if len(watched) == n else stamped), 3),
        "latency_p95_s": round(percentile(watched if len(watched) == n else stamped, 95), 3),
        "latency_max_s": round(max(watched if len(watched) == n else stamped), 3),
        "watch_saw": len(watched),
        "watch_restarts": job_watch.restarts,
        "watch_relisted": job_watch.relisted,
        "ts_latency_p50_s": round(statistics.median(stamped), 1),
        "ts_latency_p95_s": round(percentile(stamped, 95), 1),
        "jobs_per_second": round(n / total, 1),
        "reconciles": int(reconciles),
        "reconciles_per_second": round(reconciles / total, 1),
        "operator_cpu_ms_per_object": round(1000 * cpu / n, 2),
        "operator_peak_rss_mib": round(rss, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, action="append", help="TrainingJobs per run (repeatable; default 100).")
    parser.add_argument("--quick", action="store_true", help="One small run (N=20).")
    parser.add_argument("--timeout", type=float, default=900, help="Seconds to wait for all Jobs.")
    parser.add_argument("--json", type=Path, help="Also write the results here.")
    parser.add_argument("--kubeconfig", default=os.environ.get("KUBEFORGE_BENCH_KUBECONFIG"))
    parser.add_argument("--baseline", type=Path, help="Also run the operator of this checkout first (before/after).")
    parser.add_argument("--restart", action="store_true", help="Restart the operator when half the Jobs exist.")
    parser.add_argument("--no-ideal", dest="ideal", action="store_false",
                        help="Skip the ideal-operator run (the bench creates each Job itself) that comes first.")
    parser.add_argument("--ideal-writes", action="store_true",
                        help="Also run the ideal with the operator's status patch and Event per object (the floor "
                             "for an operator that writes what this one writes).")
    args = parser.parse_args()
    sizes = [20] if args.quick else (args.n or [100])
    kcfg = args.kubeconfig or kubeconfig()
    results = []
    for n in sizes:
        if args.ideal:
            results.append(run(n, kcfg, args.timeout, ideal=True))
            print(json.dumps(results[-1]), flush=True)
        if args.ideal_writes:
            results.append(run(n, kcfg, args.timeout, ideal=True, writes=True))
            print(json.dumps(results[-1]), flush=True)
        for source in ([args.baseline] if args.baseline else []) + [None]:
            results.append(run(n, kcfg, args.timeout, source, args.restart))
            print(json.dumps(results[-1]), flush=True)
    print(f"\n{'operator':>13} {'N':>5} {'create s':>8} {'total s':>8} {'p50 s':>7} {'p95 s':>7} {'jobs/s':>7} "
          f"{'req/obj':>7} {'CPU ms/obj':>10} {'RSS MiB':>8} {'extra':>5}")
    for r in results:
        print(f"{r['operator']:>13} {r['n']:>5} {r['create_seconds']:>8} {r['total_seconds']:>8} "
              f"{r['latency_p50_s']:>7} {r['latency_p95_s']:>7} {r['jobs_per_second']:>7} "
              f"{r['api_requests_per_object']:>7} {r['operator_cpu_ms_per_object']:>10} "
              f"{r['operator_peak_rss_mib']:>8} {r['duplicate_or_extra_jobs']:>5}")
    for r in results:  # ratios against the ideal operator of the same size, same run
        floor = next((f for f in results if f["operator"] == "ideal" and f["n"] == r["n"]), None)
        if floor is not None and r is not floor:
            r["vs_ideal"] = {"total_x": round(r["total_seconds"] / floor["total_seconds"], 2),
                             "p50_plus_s": round(r["latency_p50_s"] - floor["latency_p50_s"], 3),
                             "p95_plus_s": round(r["latency_p95_s"] - floor["latency_p95_s"], 3)}
            print(f"{r['operator']:>13} {r['n']:>5} vs ideal: total x{r['vs_ideal']['total_x']}, "
                  f"p50 +{r['vs_ideal']['p50_plus_s']} s, p95 +{r['vs_ideal']['p95_plus_s']} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
