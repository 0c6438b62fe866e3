#!/usr/bin/env python3
"""End-to-end test of the Python client against a real coordinator and real workers (run by cluster/test.sh).

Starts `coordinator serve` on a temporary store and free loopback ports, submits the synthetic grid with the
Python CLI, follows it live from Python while two `worker serve` processes run its jobs, fetches the results,
and checks they match what the Swift CLI (`coordinator results --format json`, `coordinator status`) shows.
Then: a grid with field errors, a queued grid cancelled from Python, an envelope of another protocol version,
and CurveZMQ key files against a Python CURVE server (the Swift coordinator has no CURVE yet).

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
    def __init__(self, bindir: Path, tmp: Path):
        self.bin, self.tmp = bindir, tmp
        self.router = f"tcp://127.0.0.1:{free_port()}"
        self.pub = f"tcp://127.0.0.1:{free_port()}"
        self.procs = []

    def spawn(self, name, args, env=None):
        log = open(self.tmp / f"{name}.log", "w")
        p = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        self.procs.append((name, p))
        return p

    def coordinator(self):
        return self.spawn("coordinator", [str(self.bin / "coordinator"), "serve", "--store", str(self.tmp / "store"),
                                          "--bind", self.router, "--pub", self.pub, "--lease", "10"])

    def worker(self, i):
        return self.spawn(f"worker-{i}", [str(self.bin / "worker"), "serve", "--connect", self.router, "--cpu",
                                          "--id", f"py-e2e-{i}"], env={"INTERVENE_SYNTHETIC_STEP_MS": "4"})

    def swift(self, *args):
        r = subprocess.run([str(self.bin / "coordinator"), *args, "--coordinator", self.router],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise AssertionError(f"coordinator {' '.join(args)} failed ({r.returncode}): {r.stderr}")
        return r.stdout

    def py(self, *args, timeout=120, stdin=None):
        return subprocess.run([sys.executable, str(HERE / "intervene_client.py"), "--coordinator", self.router, *args],
                              input=stdin, capture_output=True, text=True, timeout=timeout)

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
            print(f"---- {name}.log (last 15 lines)")
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


def test_against_coordinator(c: Cluster):
    client = ic.Client(c.router, timeout=10)
    grid = json.loads((ROOT / "cluster" / "grids" / "synthetic.json").read_text())
    grid["experiment"] = "py-e2e"
    grid_path = c.tmp / "py-e2e.json"
    grid_path.write_text(json.dumps(grid))
    total = len(grid["tasks"]) * len(grid["layers"]) * len(grid["gamma"]) * len(grid["seeds"])

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
    r = c.py("results", "py-e2e", "--format", "json")
    check(r.returncode == 0, f"results failed: {r.stderr}")
    mine = {row["job_id"]: row for row in json.loads(r.stdout)}
    theirs = {row["job_id"]: row for row in json.loads(c.swift("results", "py-e2e", "--format", "json"))}
    check(len(mine) == total and set(mine) == set(theirs), "the two clients list different jobs")
    fields = {"model": "model", "task": "task", "method": "method", "layer": "layer", "lambda": "lambda",
              "gamma": "gamma", "seed": "seed", "train_size": "trainSize", "test_size": "testSize", "steps": "steps",
              "lr": "lr", "precision": "precision", "solver": "solver"}
    for jid, a in mine.items():
        b = theirs[jid]
        for k in ("state", "attempts", "artefact_path", "artefact_sha256", "worker", "error"):
            check(a[k] == b[k], f"{jid} {k}: python {a[k]!r}, swift {b[k]!r}")
        check(a["metrics"] == b["metrics"], f"{jid} metrics differ: {a['metrics']} vs {b['metrics']}")
        for mk, sk in fields.items():
            check(a["params"][mk] == b["params"].get(sk, a["params"][mk]),
                  f"{jid} params.{mk}: python {a['params'][mk]!r}, swift {b['params'].get(sk)!r}")
        check(a["state"] == "done" and a["artefact_sha256"] and Path(a["artefact_path"]).is_file(),
              f"{jid}: not done or no artefact")
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
    """Key files and CURVE against a Python ROUTER (a stand-in: the Swift coordinator has no CURVE yet)."""
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
                except ic.NoReply:
                    check(True, "")
        check(seen == ["status_request"], f"the server saw {seen}")
        print("  curve: key files read; with keys 1 reply, with no keys / a wrong server key nothing got through "
              "(Python CURVE server, not the Swift coordinator)")
    finally:
        stop.set()
        t.join()
        router.close(0)


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


def _answers(endpoint):
    try:
        with ic.Client(endpoint, timeout=0.5) as cl:
            cl.status()
        return True
    except ic.ClientError:
        return False


if __name__ == "__main__":
    main()
