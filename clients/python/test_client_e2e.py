#!/usr/bin/env python3
"""End-to-end test of the Python client against a real coordinator and real workers (run by cluster/test.sh).

Starts `coordinator serve` on a temporary store and free loopback ports, submits the synthetic grid with the
Python CLI, follows it live from Python while two `worker serve` processes run its jobs, fetches the results,
and checks they match what the Swift CLI (`coordinator results --format json`, `coordinator status`) shows.
Then: a grid with field errors, a queued grid cancelled from Python, an envelope of another protocol version,
and CurveZMQ key files against a Python CURVE server.

Then the same with keys, against a real keyed Swift coordinator: `coordinator keys` makes the pairs, `serve` reads
them from $INTERVENE_SERVER_SECRET/$INTERVENE_WORKER_KEYS/$INTERVENE_CLIENT_KEYS (as the containers do), the two
workers present a worker key (one by its flags, one by $INTERVENE_CURVE_SECRET/$INTERVENE_SERVER_KEY), and the
Python client a client key: submit, follow the keyed update stream live, results identical to the Swift CLI's.
Peers without keys, with a key on no list or with a wrong server key get nothing through and are told why (at
once, not after hanging); a worker key may not submit (FORBIDDEN) nor read the update stream; a burst of bad
frames is answered LIMIT.

    python3 clients/python/test_client_e2e.py [--bin .build/debug]

Prints "SKIP: <reason>" and exits 0 when pyzmq or protobuf is missing (cluster/setup.sh installs them).
"""
import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

try:
    import zmq  # noqa: F401
    import google.protobuf  # noqa: F401
except ImportError as e:
    print(f"SKIP: python client end-to-end test: {e.name} is not installed (pip install pyzmq protobuf, "
          "or bash cluster/setup.sh)")
    sys.exit(0)

sys.path.insert(0, str(HERE))
import intervene_client as ic  # noqa: E402

CHECKS = 0


def check(cond, what):
    global CHECKS
    if not cond:
        raise AssertionError(what)
    CHECKS += 1


# Keys and addresses each process here is given explicitly: none may come from the caller's environment.
KEY_ENV = ("INTERVENE_SERVER_SECRET", "INTERVENE_WORKER_KEYS", "INTERVENE_CLIENT_KEYS", "INTERVENE_CURVE_SECRET",
           "INTERVENE_SERVER_KEY", "INTERVENE_COORDINATOR")
for _k in KEY_ENV:
    os.environ.pop(_k, None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_bin(arg):
    cands = [Path(arg)] if arg else []
    if os.environ.get("INTERVENE_BIN"):
        cands.append(Path(os.environ["INTERVENE_BIN"]))
    cands += [ROOT / ".build" / "debug", ROOT / ".build" / "release"]
    have = [c for c in cands if (c / "coordinator").is_file() and (c / "worker").is_file()]
    if not have:
        sys.exit(f"FAIL: no built coordinator and worker in {', '.join(map(str, cands))} (swift build)")
    if arg or os.environ.get("INTERVENE_BIN"):
        return have[0]
    return max(have, key=lambda c: (c / "coordinator").stat().st_mtime)   # the newer build


class Cluster:
    """A coordinator on loopback and its workers; with `keys` (a folder from `coordinator keys coordinator
    worker alice ...`), everything is keyed: the coordinator admits worker.pub as a worker and alice.pub as a
    client, and the CLIs present alice's key unless told otherwise."""

    def __init__(self, bindir: Path, tmp: Path, keys: Path = None, serve_args=()):
        self.bin, self.tmp, self.keys, self.serve_args = bindir, tmp, keys, list(serve_args)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.router = f"tcp://127.0.0.1:{free_port()}"
        self.pub = f"tcp://127.0.0.1:{free_port()}"
        self.procs = []

    def client_keys(self, name="alice", server="coordinator"):
        """ic.CurveKeys of NAME.secret and SERVER.pub (None without keys)."""
        if self.keys is None:
            return None
        return ic.CurveKeys.from_files(str(self.keys / f"{name}.secret"), str(self.keys / f"{server}.pub"))

    def key_args(self, name="alice", server="coordinator"):
        """The Python CLI's key flags for NAME.secret and SERVER.pub ([] without keys or with name None)."""
        if self.keys is None or name is None:
            return []
        return ["--secret", str(self.keys / f"{name}.secret"), "--server-key", str(self.keys / f"{server}.pub")]

    def spawn(self, name, args, env=None):
        log = open(self.tmp / f"{name}.log", "w")
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self.procs.append((name, p))
        return p

    def coordinator(self):
        env = {}
        if self.keys:   # by the environment, as docker-compose.yml and the Kubernetes manifests give them
            env = {"INTERVENE_SERVER_SECRET": str(self.keys / "coordinator.secret"),
                   "INTERVENE_WORKER_KEYS": str(self.keys / "worker.pub"),
                   "INTERVENE_CLIENT_KEYS": str(self.keys / "alice.pub")}
        return self.spawn("coordinator", [str(self.bin / "coordinator"), "serve", "--store", str(self.tmp / "store"),
                                          "--bind", self.router, "--pub", self.pub, "--lease", "10",
                                          *self.serve_args], env=env)

    def worker(self, i, name="py-e2e"):
        env, args = {"INTERVENE_SYNTHETIC_STEP_MS": "4"}, []
        if self.keys and i % 2:    # odd workers: the flags; even ones: the environment
            args = ["--curve-secret", str(self.keys / "worker.secret"),
                    "--server-key", str(self.keys / "coordinator.pub")]
        elif self.keys:
            env.update(INTERVENE_CURVE_SECRET=str(self.keys / "worker.secret"),
                       INTERVENE_SERVER_KEY=str(self.keys / "coordinator.pub"))
        return self.spawn(f"worker-{i}", [str(self.bin / "worker"), "serve", "--connect", self.router, "--cpu",
                                          "--id", f"{name}-{i}", *args], env=env)

    def swift(self, *args):
        keys = []
        if self.keys:
            keys = ["--curve-secret", str(self.keys / "alice.secret"),
                    "--server-key", str(self.keys / "coordinator.pub")]
        r = subprocess.run([str(self.bin / "coordinator"), *args, "--coordinator", self.router, *keys],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise AssertionError(f"coordinator {' '.join(args)} failed ({r.returncode}): {r.stderr}")
        return r.stdout

    def py_args(self, args, key="alice", server="coordinator"):
        return [sys.executable, str(HERE / "intervene_client.py"), "--coordinator", self.router,
                *self.key_args(key, server), *args]

    def py(self, *args, timeout=120, stdin=None, key="alice", server="coordinator", env=None):
        return subprocess.run(self.py_args(args, key, server), input=stdin, capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, **(env or {})})

    def stop(self):
        for _, p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for name, p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def logs(self):
        for name, _ in self.procs:
            text = (self.tmp / f"{name}.log").read_text(errors="replace").splitlines()
            print(f"---- {self.tmp.name}/{name}.log (last 15 lines)")
            print("\n".join(text[-15:]))


def swift_protocol_version() -> int:
    text = (ROOT / "Sources" / "Protocol" / "Envelope.swift").read_text()
    m = re.search(r"PROTOCOL_VERSION:\s*UInt32\s*=\s*(\d+)", text)
    return int(m.group(1)) if m else -1


def wait_for(pred, seconds, what):
    end = time.time() + seconds
    while time.time() < end:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {seconds} s waiting for {what}")


def synthetic_grid(c: Cluster, name: str):
    """The synthetic grid renamed `name`, written under c.tmp: (grid, its path, its job count)."""
    grid = json.loads((ROOT / "cluster" / "grids" / "synthetic.json").read_text())
    grid["experiment"] = name
    grid_path = c.tmp / f"{name}.json"
    grid_path.write_text(json.dumps(grid))
    total = len(grid["tasks"]) * len(grid["layers"]) * len(grid["gamma"]) * len(grid["seeds"])
    return grid, grid_path, total


PARAM_FIELDS = {"model": "model", "task": "task", "method": "method", "layer": "layer", "lambda": "lambda",
                "gamma": "gamma", "seed": "seed", "train_size": "trainSize", "test_size": "testSize", "steps": "steps",
                "lr": "lr", "precision": "precision", "solver": "solver"}


def compare_results(c: Cluster, experiment: str, total: int) -> dict:
    """The Python CLI's `results --format json` against the Swift CLI's, job by job; returns the Python rows."""
    r = c.py("results", experiment, "--format", "json")
    check(r.returncode == 0, f"results failed: {r.stderr}")
    mine = {row["job_id"]: row for row in json.loads(r.stdout)}
    theirs = {row["job_id"]: row for row in json.loads(c.swift("results", experiment, "--format", "json"))}
    check(len(mine) == total and set(mine) == set(theirs), "the two clients list different jobs")
    for jid, a in mine.items():
        b = theirs[jid]
        for k in ("state", "attempts", "artefact_path", "artefact_sha256", "worker", "error"):
            check(a[k] == b[k], f"{jid} {k}: python {a[k]!r}, swift {b[k]!r}")
        check(a["metrics"] == b["metrics"], f"{jid} metrics differ: {a['metrics']} vs {b['metrics']}")
        for mk, sk in PARAM_FIELDS.items():
            check(a["params"][mk] == b["params"].get(sk, a["params"][mk]),
                  f"{jid} params.{mk}: python {a['params'][mk]!r}, swift {b['params'].get(sk)!r}")
        check(a["state"] == "done" and a["artefact_sha256"] and Path(a["artefact_path"]).is_file(),
              f"{jid}: not done or no artefact")
    return mine


def test_against_coordinator(c: Cluster):
    client = ic.Client(c.router, timeout=10)
    grid, grid_path, total = synthetic_grid(c, "py-e2e")

    # submit through the CLI, before any worker is connected
    r = c.py("submit", str(grid_path), "--dry-run")
    check(r.returncode == 0 and f": {total} jobs ({total} new" in r.stdout, f"dry run: {r.stdout}{r.stderr}")
    r = c.py("submit", str(grid_path))
    check(r.returncode == 0, f"submit failed: {r.stderr}")
    check(f"experiment py-e2e submitted: {total} jobs ({total} new, 0 reused" in r.stdout, f"submit said {r.stdout}")

    # follow it live, in this process and with the CLI, while two workers run the jobs
    follower = ic.Follower(client, "py-e2e")
    events = []
    follower.start()
    check(len(follower.state.order) == total and follower.state.counts()["queued"] == total,
          f"snapshot: {follower.state.counts()}")
    cli_tail = subprocess.Popen([sys.executable, str(HERE / "intervene_client.py"), "--coordinator", c.router,
                                 "tail", "py-e2e", "--limit", "120"], stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    started = time.time()
    c.worker(1)
    c.worker(2)
    while not follower.finished:
        check(time.time() - started < 120, "the experiment did not finish within 120 s")
        events += follower.poll(0.5)
    changed = [e for e in events if e[0] == "changed"]
    progress = [e for e in events if e[0] == "progress"]
    done_events = {e[1].job_id for e in changed if e[1].state == "done"}
    print(f"  followed live: {follower.updates} updates, {len(changed)} state changes, {len(progress)} progress, "
          f"{follower.gaps} gaps, {follower.snapshots} snapshots, {time.time() - started:.1f} s")
    check(follower.all_done, f"not all done: {follower.state.counts()}")
    check(follower.gaps == 0, f"{follower.gaps} sequence gaps on loopback")
    check(len(done_events) == total, f"saw {len(done_events)} of {total} jobs finish on the update stream")
    check(any(e[1].state == "running" for e in changed), "no running state change seen")
    out, _ = cli_tail.communicate(timeout=120)
    check(cli_tail.returncode == 0, f"tail exited {cli_tail.returncode}: {out}")
    tail_done = [ln for ln in out.splitlines() if " done " in ln]
    check(f"{total} jobs, 0 queued, 0 running, {total} done, 0 failed, 0 cancelled" in out, f"tail said: {out}")
    print(f"  CLI tail: {len(tail_done)} done lines; last: {out.strip().splitlines()[-1]}")

    # results: Python CLI vs the Swift CLI, job by job
    mine = compare_results(c, "py-e2e", total)
    # the follower's final view is the snapshot's
    for jid, rec in follower.state.jobs.items():
        check(rec.state == mine[jid]["state"] and dict(rec.metrics) == mine[jid]["metrics"],
              f"{jid}: the live view differs from the results")
    follower.close()
    r = c.py("results", "py-e2e", "--format", "csv")
    check(r.returncode == 0 and len(r.stdout.strip().splitlines()) == total + 1, "csv: one row per job")
    print(f"  results: {total} jobs match `coordinator results --format json` (state, attempts, metrics, params, "
          "artefact, worker)")

    # status: Python vs the Swift table
    st = client.status("py-e2e")
    e = st.experiments[0]
    row = next(ln.split() for ln in c.swift("status", "py-e2e").splitlines() if ln.startswith("py-e2e "))
    check([e.total, e.done, e.running, e.queued, e.failed, e.cancelled] == [int(x) for x in row[1:7]],
          f"status differs: python {e}, swift {row}")
    check({w.worker_id for w in st.workers} >= {"py-e2e-1", "py-e2e-2"}, f"workers: {st.workers}")
    r = c.py("status")
    check(r.returncode == 0 and json.loads(r.stdout)["experiments"][0]["done"] == total, "status CLI")
    print(f"  status: {e.total} jobs, {e.done} done, as `coordinator status`; workers "
          f"{sorted(w.worker_id for w in st.workers)}")

    # resubmitting reuses every job
    r = client.submit(grid_path.read_text())
    check(r.ok and r.jobs_reused == total and r.jobs_new == 0, f"resubmit: {r}")

    # a grid with errors: nothing queued, the field errors come back
    bad = dict(grid, experiment="py-bad", layers="two", tasks=[])
    r = client.submit(json.dumps(bad))
    check(not r.ok and len(r.errors) >= 1, f"a bad grid was accepted: {r}")
    r = c.py("submit", "-", stdin=json.dumps(bad))
    check(r.returncode == 1 and "error: layers" in r.stderr, f"CLI on a bad grid: {r.returncode} {r.stderr}")
    print(f"  bad grid refused: {r.stderr.strip().splitlines()[0]}")

    # a grid no worker can run (gpu) waits with a reason, and is cancelled from Python
    gpu = dict(grid, experiment="py-gpu", device="gpu", seeds=[100, 101])
    r = client.submit(json.dumps(gpu))
    check(r.ok and r.jobs_new == r.jobs_total == total // 3 * 2, f"gpu grid: {r}")
    rows = [ic.job_row(j) for j in client.query("py-gpu").jobs]
    check(all(x["state"] == "queued" and x.get("pending_reason") for x in rows), f"gpu rows: {rows[:2]}")
    r = c.py("cancel", "py-gpu")
    check(r.returncode == 0 and f"{total // 3 * 2} jobs cancelled" in r.stdout, f"cancel: {r.stdout}{r.stderr}")
    r = c.py("tail", "py-gpu", "--limit", "20")
    check(r.returncode == 1 and f"{total // 3 * 2} cancelled" in r.stdout, f"tail of a cancelled grid: {r.stdout}")
    print(f"  gpu grid: queued ({rows[0]['pending_reason']}), then {total // 3 * 2} cancelled")

    # errors from the coordinator
    try:
        client.query("no-such-experiment")
        check(False, "query of an unknown experiment succeeded")
    except ic.ClientError as err:
        check("no experiment named" in str(err), f"unknown experiment: {err}")
    other = ic.encode("status_request", ic.pb.StatusRequest(), version=ic.PROTOCOL_VERSION + 96)
    try:
        client.send_raw([other])
        check(False, "an envelope of another version was answered")
    except ic.RemoteError as err:
        check(err.code == ic.pb.Error.VERSION_MISMATCH and err.supported_version == ic.PROTOCOL_VERSION, str(err))
        print(f"  version {ic.PROTOCOL_VERSION + 96} refused: {err}")
    check(client.status().pub_endpoint == c.pub, "the client still works after an error")
    client.close()


def test_curve(tmp: Path):
    """Key files and CURVE against a Python ROUTER without a ZAP handler (any client key gets through)."""
    if not zmq.has("curve"):
        print("  curve: SKIP (this libzmq has no CURVE)")
        return
    server_pub, server_sec = zmq.curve_keypair()
    client_pub, client_sec = zmq.curve_keypair()
    (tmp / "coordinator.pub").write_text(server_pub.decode() + "\n")
    (tmp / "alice.secret").write_text(f"public {client_pub.decode()}\nsecret {client_sec.decode()}\n")
    keys = ic.CurveKeys.from_files(str(tmp / "alice.secret"), str(tmp / "coordinator.pub"))
    check(keys.public == client_pub and keys.secret == client_sec and keys.server == server_pub, "key files")
    for bad, text in (("short.pub", "abc\n"), ("three.secret", "public x\nsecret y\nother z\n")):
        (tmp / bad).write_text(text)
        try:
            ic.read_key_file(str(tmp / bad))
            check(False, f"{bad} accepted")
        except ValueError:
            check(True, "")

    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.curve_server = True
    router.curve_secretkey = server_sec
    router.curve_publickey = server_pub
    port = router.bind_to_random_port("tcp://127.0.0.1")
    seen = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            if router.poll(100):
                ident, data = router.recv_multipart()
                env = ic.pb.Envelope()
                env.ParseFromString(data)
                seen.append(env.WhichOneof("body"))
                reply = ic.pb.StatusReply(pub_endpoint="tcp://127.0.0.1:1")
                router.send_multipart([ident, ic.encode("status_reply", reply)])

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        endpoint = f"tcp://127.0.0.1:{port}"
        with ic.Client(endpoint, timeout=3, keys=keys) as cl:
            check(cl.status().pub_endpoint == "tcp://127.0.0.1:1", "curve request")
        for label, k in (("no keys", None),
                         ("a wrong server key", ic.CurveKeys(client_pub, client_sec, zmq.curve_keypair()[0]))):
            with ic.Client(endpoint, timeout=1, keys=k) as cl:
                try:
                    cl.status()
                    check(False, f"a client with {label} got through")
                except ic.NoReply as err:
                    check("keys" in str(err) or "--server-key" in str(err), f"{label}: {err}")
        check(seen == ["status_request"], f"the server saw {seen}")
        print("  curve: key files read; with keys 1 reply, with no keys / a wrong server key nothing got through "
              "(Python CURVE server)")
    finally:
        stop.set()
        t.join()
        router.close(0)


def make_keys(bindir: Path, folder: Path):
    """Key pairs from `coordinator keys`, as an operator makes them; checks their format and that a second run
    refuses to overwrite them (what the compose file's one-shot `keys` service relies on)."""
    names = ["coordinator", "worker", "alice", "stranger"]
    r = subprocess.run([str(bindir / "coordinator"), "keys", *names, "--out", str(folder)],
                       capture_output=True, text=True, timeout=30)
    check(r.returncode == 0, f"coordinator keys failed ({r.returncode}): {r.stderr}")
    for n in names:
        pub = (folder / f"{n}.pub").read_text().splitlines()
        check(len(pub) == 1 and len(pub[0]) == 40, f"{n}.pub: {pub}")
        check((folder / f"{n}.secret").stat().st_mode & 0o777 == 0o600, f"{n}.secret is not 0600")
        pair = ic.read_key_file(str(folder / f"{n}.secret"))
        check(pair["public"].decode() == pub[0] and len(pair["secret"]) == 40, f"{n}.secret: not {n}.pub's pair")
    again = subprocess.run([str(bindir / "coordinator"), "keys", "worker", "--out", str(folder)],
                           capture_output=True, text=True, timeout=30)
    check(again.returncode != 0 and "--force" in again.stderr, f"keys overwrote a pair: {again.returncode}")
    print(f"  keys: {', '.join(names)} made by `coordinator keys`; a second run refuses to overwrite")


def test_keyed_coordinator(bindir: Path, tmp: Path):
    """The Python client against a real Swift coordinator with CurveZMQ keys, and real keyed workers."""
    if not zmq.has("curve"):
        print("  keyed coordinator: SKIP (this libzmq has no CURVE)")
        return
    keys = tmp / "keys"
    make_keys(bindir, keys)
    c = Cluster(bindir, tmp / "keyed", keys=keys, serve_args=["--max-bad-frames", "20"])
    ok = False
    try:
        c.coordinator()
        wait_for(lambda: _answers(c.router, c.client_keys()), 20, "the keyed coordinator to answer")
        _keyed_checks(c)
        ok = True
    finally:
        c.stop()
        if not ok:
            c.logs()


def _keyed_checks(c: Cluster):
    grid, grid_path, total = synthetic_grid(c, "py-keyed")
    intruder = dict(grid, experiment="py-intruder")

    # peers the coordinator does not admit get nothing through and are told why, without hanging
    for label, key, server, expect, most in (
            ("no keys", None, None, "the coordinator requires keys", 5),
            ("a key on no list", "stranger", "coordinator", "refused this client's key", 5),
            ("a wrong server key", "alice", "stranger", "is --server-key its public key", 8)):
        t0 = time.time()
        r = c.py("--timeout", "3", "submit", "-", stdin=json.dumps(intruder), key=key, server=server, timeout=30)
        took = time.time() - t0
        check(r.returncode == 1 and expect in r.stderr, f"{label}: {r.returncode} {r.stdout}{r.stderr}")
        check(took < most, f"{label}: took {took:.1f} s")
        print(f"  {label}: refused in {took:.1f} s: {r.stderr.strip()}")
    stranger = c.client_keys("stranger")
    check(stranger.public.decode() in c.py("status", key="stranger").stderr, "the refusal names the key")
    with ic.Client(c.router, timeout=10) as cl:   # in process: Refused at once, well before the timeout
        t0 = time.time()
        try:
            cl.status()
            check(False, "a client without keys got an answer")
        except ic.Refused as err:
            check(time.time() - t0 < 5 and "requires keys" in str(err), f"no keys, in process: {err}")
    # a worker key may read but not submit, nor follow the update stream
    r = c.py("submit", "-", stdin=json.dumps(intruder), key="worker")
    check(r.returncode == 1 and "(FORBIDDEN" in r.stderr and "--client-keys" in r.stderr,
          f"a worker key submitting: {r.returncode} {r.stderr}")
    print(f"  a worker key submitting: {r.stderr.strip()}")
    r = c.py("status", key="worker")
    check(r.returncode == 0 and json.loads(r.stdout)["pub_endpoint"] == c.pub, f"worker key status: {r.stderr}")
    # a client key may not speak for a worker
    with ic.Client(c.router, timeout=10, keys=c.client_keys()) as cl:
        try:
            cl.send_raw([ic.encode("hello", ic.pb.Hello(worker_id="forged"))])
            check(False, "a client key's Hello was answered")
        except ic.RemoteError as err:
            check(err.code == ic.pb.Error.FORBIDDEN and err.name == "FORBIDDEN", f"hello from a client: {err}")
    # nothing the intruders sent was queued
    alice = ic.Client(c.router, timeout=10, keys=c.client_keys())
    check(not [e for e in alice.status().experiments if e.experiment == "py-intruder"], "an intruder's grid queued")

    # submit, follow the keyed update stream live (in process and with the CLI), run on two keyed workers
    r = c.py("submit", str(grid_path))
    check(r.returncode == 0 and f"{total} jobs ({total} new" in r.stdout, f"keyed submit: {r.stdout}{r.stderr}")
    r = c.py("tail", "py-keyed", "--limit", "20", key="worker")
    check(r.returncode == 1 and "update stream refused this key" in r.stderr, f"worker-key tail: {r.stderr}")
    print(f"  a worker key following updates: {r.stderr.strip()}")
    r = c.py("--plain-updates", "tail", "py-keyed", "--limit", "20")
    check(r.returncode == 1 and "drop --plain-updates" in r.stderr, f"plain tail: {r.stderr}")
    follower = ic.Follower(alice, "py-keyed")
    follower.start()
    cli_tail = subprocess.Popen(c.py_args(["tail", "py-keyed", "--limit", "120"]), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    started = time.time()
    c.worker(1, "py-keyed")
    c.worker(2, "py-keyed")
    events = []
    while not follower.finished:
        check(time.time() - started < 120, "the keyed experiment did not finish within 120 s")
        events += follower.poll(0.5)
    done_events = {e[1].job_id for e in events if e[0] == "changed" and e[1].state == "done"}
    print(f"  keyed, followed live: {follower.updates} updates, {follower.gaps} gaps, {follower.snapshots} "
          f"snapshots, {time.time() - started:.1f} s")
    check(follower.all_done and follower.gaps == 0 and follower.snapshots == 1,
          f"keyed follow: {follower.state.counts()}, {follower.gaps} gaps, {follower.snapshots} snapshots")
    check(len(done_events) == total, f"saw {len(done_events)} of {total} jobs finish on the keyed update stream")
    follower.close()
    out, err = cli_tail.communicate(timeout=120)
    check(cli_tail.returncode == 0 and f"{total} done, 0 failed" in out and " 0 gaps" in out,
          f"keyed CLI tail exited {cli_tail.returncode}: {out}{err}")
    print(f"  keyed CLI tail: {out.strip().splitlines()[-1]}")

    # results and status through the keys, as the Swift CLI (with the same client key) sees them
    compare_results(c, "py-keyed", total)
    st = alice.status("py-keyed")
    check({w.worker_id for w in st.workers} == {"py-keyed-1", "py-keyed-2"}, f"keyed workers: {st.workers}")
    print(f"  keyed results: {total} jobs match `coordinator results` (Swift CLI, same client key); workers "
          f"{sorted(w.worker_id for w in st.workers)} (one keyed by flags, one by the environment)")

    # a burst of bad frames from one connection: answered, then LIMIT (serve --max-bad-frames 20)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    c.client_keys().apply(sock)
    sock.connect(c.router)
    bad = ic.encode("status_request", ic.pb.StatusRequest(), version=ic.PROTOCOL_VERSION + 96)
    for _ in range(60):
        sock.send(bad)
    codes = []
    end = time.time() + 5
    while time.time() < end and sock.poll(500):
        kind, body = ic.decode(sock.recv_multipart()[-1])
        codes.append(ic.RemoteError(body.code, body.message, body.supported_version))
    sock.close(0)
    limit = [e for e in codes if e.name == "LIMIT"]
    check(len(limit) == 1 and "(LIMIT: " in str(limit[0]) and "--max-bad-frames" in str(limit[0]),
          f"no LIMIT after 60 bad frames: {[str(e) for e in codes[-3:]]}")
    print(f"  60 bad frames: {len(codes) - 1} answered VERSION_MISMATCH, then {limit[0]}")

    counters = alice.status().counters
    # the keyless client's greeting crosses the coordinator's: counted as no_keys, or as hung_up when
    # it saw the mismatch first (any handshake failure that is not a ZAP refusal)
    keyless = counters.get("handshakes_failed", 0) - counters.get("handshakes_failed_key_refused", 0)
    check(keyless >= 1 and counters["handshakes_failed_key_refused"] >= 1
          and counters["forbidden"] >= 2, f"counters: {dict(counters)}")
    print("  coordinator counters: " + ", ".join(f"{k} {counters.get(k, 0)}" for k in (
        "handshakes_failed", "handshakes_failed_no_keys", "handshakes_failed_hung_up",
        "handshakes_failed_key_refused", "forbidden", "peers_blocked")))
    alice.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", help="folder with the built coordinator and worker (default: the newer of "
                    ".build/debug and .build/release)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    a = ap.parse_args()
    bindir = find_bin(a.bin)
    v = swift_protocol_version()
    check(v == ic.PROTOCOL_VERSION, f"Envelope.swift says PROTOCOL_VERSION {v}, intervene_client.py says "
          f"{ic.PROTOCOL_VERSION}: update clients/python/intervene_client.py")
    tmp = Path(tempfile.mkdtemp(prefix="intervene-py-e2e-"))
    c = Cluster(bindir, tmp)
    t0 = time.time()
    ok = False
    print(f"python client e2e: {bindir}, coordinator {c.router} / {c.pub}, protocol v{v}, "
          f"pyzmq {zmq.__version__} (libzmq {zmq.zmq_version()}), protobuf {google.protobuf.__version__}")
    try:
        c.coordinator()
        wait_for(lambda: _answers(c.router), 20, "the coordinator to answer")
        test_against_coordinator(c)
        test_curve(tmp)
        c.stop()
        print("python client e2e, keyed: a Swift coordinator with CurveZMQ keys")
        test_keyed_coordinator(bindir, tmp)
        ok = True
    finally:
        c.stop()
        if not ok:
            c.logs()
        if ok and not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        elif a.keep or not ok:
            print(f"kept {tmp}")
    print(f"python client e2e: OK, {CHECKS} checks in {time.time() - t0:.1f} s")


def _answers(endpoint, keys=None):
    try:
        with ic.Client(endpoint, timeout=0.5, keys=keys) as cl:
            cl.status()
        return True
    except ic.ClientError:
        return False


if __name__ == "__main__":
    main()
