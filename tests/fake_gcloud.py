"""A fake ``gcloud`` for tests: a simulated Cloud TPU slice made of local processes, and a bucket.

``FakeCloud(root).env()`` gives an environment whose ``gcloud`` is this file. Queued resources are JSON
files under ``root/qr``; each worker of a slice is a folder ``root/tpu/NAME/worker-I`` acting as its home.
``tpu-vm ssh --worker=all --command CMD`` runs CMD in one local ``bash`` per worker, in parallel, with the
worker's own environment: ``TPU_WORKER_ID``/``TPU_WORKER_HOSTNAMES`` as on a TPU VM, and SLURM's
variables so that ``jax.distributed.initialize()`` with no arguments finds the slice (a coordinator port
per created slice; CPU collectives through gloo). ``scp`` copies into the worker folders; ``storage``
reads and writes ``gs://`` on the GCS emulator when ``STORAGE_EMULATOR_HOST`` is set, else under
``root/gcs``. ``root/plan.json`` makes it misbehave: ``describe_failures`` (that many describes answer
UNAVAILABLE), ``create_exists`` (that many creates answer ALREADY_EXISTS), ``provision_polls`` (describes
that answer ACCEPTED/PROVISIONING before ACTIVE), ``workers``, ``create_fails`` (``{"code", "message"}``:
created requests end FAILED with that ``failedData``), ``ssh_fails`` (an ssh whose command contains this
text exits 1, as a failing install would), ``ssh_hangs`` (``[text, n]``: the next n such ssh calls never
return), ``account`` (what ``auth list`` prints; empty: logged out). ``FakeCloud.preempt`` is a Spot
preemption: SUSPENDING and SIGTERM to the workers' processes, SUSPENDED (and SIGKILL) ``grace`` s later;
``FakeCloud.kill`` is a crash: SIGKILL to the workers' processes with given words in their argv.
Every call is appended to ``root/calls.jsonl`` (made on a worker: ``root/calls-workers.jsonl``).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()


class FakeCloud:
    """The test's handle on the fake: its environment, its misbehaviour plan, preemption, the call log."""

    made: list[FakeCloud] = []  # every fake of this test session, for ``stop_all``

    def __init__(self, root: Path):
        self.root = Path(root)
        FakeCloud.made.append(self)
        (self.root / "bin").mkdir(parents=True, exist_ok=True)
        shim = self.root / "bin" / "gcloud"
        shim.write_text(f'#!/bin/sh\nexec {sys.executable} {HERE} "$@"\n')
        shim.chmod(0o755)
        uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
        if Path(uv).exists() and not (self.root / "bin" / "uv").exists():
            (self.root / "bin" / "uv").symlink_to(uv)  # the stock image's pip would fetch it; here it is
        self.plan()

    def env(self, base: dict | None = None) -> dict:
        env = dict(os.environ if base is None else base)
        env["PATH"] = f"{self.root / 'bin'}{os.pathsep}{env['PATH']}"
        env["FAKE_GCLOUD_ROOT"] = str(self.root)
        return env

    def plan(self, **settings) -> None:
        plan = {
            "describe_failures": 0,
            "create_exists": 0,
            "provision_polls": 0,
            "workers": 2,
            "create_fails": None,
            "ssh_fails": None,
            "ssh_hangs": None,
            "account": "you@example.com",
            **settings,
        }
        (self.root / "plan.json").write_text(json.dumps(plan))

    def calls(self, workers: bool = False) -> list[list[str]]:
        """The launcher's gcloud calls (``workers``: the calls made on the workers instead)."""
        path = self.root / ("calls-workers.jsonl" if workers else "calls.jsonl")
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def worker(self, name: str, i: int) -> Path:
        return self.root / "tpu" / name / f"worker-{i}"

    def kill(self, name: str, *words: str) -> int:
        """SIGKILL the slice's processes whose argv has ``words`` in a row (OOM, kill -9); how many."""
        killed, pattern = 0, b"\0".join([b"", *(w.encode() for w in words), b""])
        for pid in _worker_pids(self.root, name):
            try:
                if pattern in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
            except OSError:
                pass
        return killed

    @classmethod
    def stop_all(cls) -> None:
        """SIGKILL whatever the fakes' slices still run (a test's end is the end of its VMs)."""
        for fake in cls.made:
            for slice_dir in (fake.root / "tpu").glob("*"):
                _signal_workers(fake.root, slice_dir.name, signal.SIGKILL)
        cls.made.clear()

    def preempt(self, name: str, grace: float = 30.0) -> None:
        qr = _load_qr(self.root, name)
        qr.update(state="SUSPENDING", suspend_at=time.time() + grace)
        _save_qr(self.root, name, qr)
        _signal_workers(self.root, name, signal.SIGTERM)


def _qr_path(root: Path, name: str) -> Path:
    return root / "qr" / f"{name}.json"


def _load_qr(root: Path, name: str) -> dict | None:
    path = _qr_path(root, name)
    return json.loads(path.read_text()) if path.exists() else None


def _save_qr(root: Path, name: str, qr: dict) -> None:
    _qr_path(root, name).parent.mkdir(parents=True, exist_ok=True)
    _qr_path(root, name).write_text(json.dumps(qr))


def _worker_pids(root: Path, name: str) -> list[int]:
    """Processes started by this slice's ssh (they carry FAKE_GCLOUD_WORKER in their environment)."""
    marker = f"FAKE_GCLOUD_WORKER={root / 'tpu' / name}/".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if marker in (proc / "environ").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


def _signal_workers(root: Path, name: str, sig: int) -> None:
    for pid in _worker_pids(root, name):
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def _fail(message: str, code: int = 1) -> None:
    print(f"ERROR: (gcloud) {message}", file=sys.stderr)
    sys.exit(code)


def _flag(args: list[str], name: str) -> str | None:
    for a in args:
        if a.startswith(f"--{name}="):
            return a.split("=", 1)[1]
    return None


def _queued_resources(root: Path, plan: dict, verb: str, name: str, args: list[str]) -> None:
    qr = _load_qr(root, name)
    if verb == "create":
        if plan["create_exists"] > 0 or qr is not None:
            plan["create_exists"] = max(0, plan["create_exists"] - 1)
            _fail(f"ALREADY_EXISTS: queued resource '{name}' already exists")
        workers = plan["workers"]
        for i in range(workers):
            (root / "tpu" / name / f"worker-{i}").mkdir(parents=True, exist_ok=True)
        _save_qr(
            root,
            name,
            {
                "state": "ACCEPTED",
                "polls_left": plan["provision_polls"],
                "workers": workers,
                "accelerator": _flag(args, "accelerator-type"),
                "job": random.randrange(1, 4000),
                "failed": plan["create_fails"],
            },
        )
        return
    if verb == "describe" and plan["describe_failures"] > 0:
        plan["describe_failures"] -= 1
        _fail("UNAVAILABLE: The service is currently unavailable.")
    if qr is None:
        _fail(f"NOT_FOUND: Resource 'projects/fake/locations/zone/queuedResources/{name}' was not found")
    if verb == "delete":
        _signal_workers(root, name, signal.SIGKILL)
        shutil.rmtree(root / "tpu" / name, ignore_errors=True)
        _qr_path(root, name).unlink()
        return
    if qr["state"] in ("ACCEPTED", "PROVISIONING"):
        qr["state"] = "PROVISIONING" if qr["polls_left"] > 0 else "FAILED" if qr.get("failed") else "ACTIVE"
        qr["polls_left"] -= 1
    if qr["state"] == "SUSPENDING" and time.time() >= qr["suspend_at"]:
        _signal_workers(root, name, signal.SIGKILL)  # the VM stopped
        qr["state"] = "SUSPENDED"
    _save_qr(root, name, qr)
    state = {"state": qr["state"]}
    if qr["state"] == "FAILED" and qr.get("failed"):
        state["failedData"] = {"error": qr["failed"]}
    print(json.dumps({"state": state}))


def _worker_env(root: Path, name: str, qr: dict, i: int) -> dict:
    home = root / "tpu" / name / f"worker-{i}"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env.update(
        HOME=str(home),
        FAKE_GCLOUD_WORKER=f"{home}/",
        TPU_WORKER_ID=str(i),
        TPU_WORKER_HOSTNAMES=",".join(["localhost"] * qr["workers"]),
        SLURM_JOB_ID=str(qr["job"]),
        SLURM_NTASKS=str(qr["workers"]),
        SLURM_PROCID=str(i),
        SLURM_LOCALID="0",
        SLURM_STEP_NODELIST="localhost",
        JAX_PLATFORMS="cpu",
        JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
        UV_PYTHON_DOWNLOADS="never",
        # one download cache for all workers (each real VM has its own; sharing only saves time here)
        UV_CACHE_DIR=os.environ.get("UV_CACHE_DIR") or str(Path.home() / ".cache" / "uv"),
    )
    return env


def _workers(qr: dict, args: list[str]) -> list[int]:
    which = _flag(args, "worker") or "0"
    return list(range(qr["workers"])) if which == "all" else [int(which)]


def _tpu_vm(root: Path, plan: dict, verb: str, args: list[str]) -> None:
    if verb == "scp":
        local, target = args[0], args[1]
        name, remote = target.split(":", 1)
    else:
        name = args[0]
    qr = _load_qr(root, name)
    if qr is None or qr["state"] != "ACTIVE":
        _fail(f"TPU {name} is not ACTIVE ({qr and qr['state']})", 255)
    if verb == "describe":
        print(json.dumps({"networkEndpoints": [{"ipAddress": "127.0.0.1"}] * qr["workers"]}))
        return
    if verb == "scp":
        for i in _workers(qr, args):
            dest = root / "tpu" / name / f"worker-{i}" / remote.removeprefix("~/")
            shutil.copyfile(local, dest)
        return
    command = args[args.index("--command") + 1]
    if plan["ssh_fails"] and plan["ssh_fails"] in command:
        _fail(f"ssh: the command failed on worker 0 (it contains {plan['ssh_fails']!r})")
    hang = plan["ssh_hangs"]
    if hang and hang[1] > 0 and hang[0] in command:
        hang[1] -= 1
        _save_plan(root, plan)
        time.sleep(3600)  # a stalled ssh: only its caller's timeout ends it
    procs = [
        subprocess.Popen(
            ["bash", "-c", command],
            cwd=root / "tpu" / name / f"worker-{i}",
            env=_worker_env(root, name, qr, i),
        )
        for i in _workers(qr, args)
    ]
    sys.exit(max(p.wait() for p in procs))


class _Bucket:
    """gs:// objects: the emulator's JSON API through urllib (fast to start, unlike gcsfs) when
    ``STORAGE_EMULATOR_HOST`` is set, else files under ``root/gcs``."""

    def __init__(self):
        self.host = os.environ.get("STORAGE_EMULATOR_HOST", "").rstrip("/")
        self.local = Path(os.environ.get("FAKE_GCLOUD_ROOT", ".")) / "gcs"

    @staticmethod
    def _split(url: str) -> tuple[str, str]:
        bucket, _, name = url.removeprefix("gs://").partition("/")
        return bucket, name

    def read(self, url: str) -> bytes | None:
        if not self.host:
            path = self.local / url.removeprefix("gs://")
            return path.read_bytes() if path.is_file() else None
        import urllib.error
        import urllib.parse
        import urllib.request

        bucket, name = self._split(url)
        quoted = urllib.parse.quote(name, safe="")
        try:
            with urllib.request.urlopen(f"{self.host}/storage/v1/b/{bucket}/o/{quoted}?alt=media") as r:
                return r.read()
        except urllib.error.HTTPError as err:
            if err.code == 404:
                return None
            raise

    def list(self, prefix: str) -> list[str]:
        """Object names under ``prefix`` (a "folder" URL ending in /, or an object's own name)."""
        bucket, name = self._split(prefix)
        if not self.host:
            base = self.local / bucket
            found = (
                [str(p.relative_to(base)) for p in base.rglob("*") if p.is_file()] if base.exists() else []
            )
        else:
            import urllib.parse
            import urllib.request

            query = urllib.parse.urlencode({"prefix": name})
            with urllib.request.urlopen(f"{self.host}/storage/v1/b/{bucket}/o?{query}") as r:
                found = [item["name"] for item in json.loads(r.read()).get("items", [])]
        folder = name.rstrip("/") + "/"
        return sorted(n for n in found if n == name or n.startswith(folder) or not name)

    def remove(self, url: str) -> None:
        bucket, name = self._split(url)
        if not self.host:
            (self.local / bucket / name).unlink()
            return
        import urllib.parse
        import urllib.request

        quoted = urllib.parse.quote(name, safe="")
        urllib.request.urlopen(
            urllib.request.Request(f"{self.host}/storage/v1/b/{bucket}/o/{quoted}", method="DELETE")
        ).read()

    def write(self, url: str, data: bytes) -> None:
        if not self.host:
            path = self.local / url.removeprefix("gs://")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            return
        import urllib.parse
        import urllib.request

        bucket, name = self._split(url)
        query = urllib.parse.urlencode({"uploadType": "media", "name": name})
        req = urllib.request.Request(
            f"{self.host}/upload/storage/v1/b/{bucket}/o?{query}", data=data, method="POST"
        )
        urllib.request.urlopen(req).read()


def _storage(verb: str, args: list[str]) -> None:
    bucket = _Bucket()
    if verb == "cat":
        data = bucket.read(args[0])
        if data is None:
            _fail("One or more URLs matched no objects.")
        sys.stdout.write(data.decode())
        return
    if verb == "ls":  # as gcloud lists: an object as itself, a folder as its children (sub-folders with /)
        bucket_name, name = bucket._split(args[0])
        names = bucket.list(args[0])
        if not names:
            _fail("One or more URLs matched no objects.")
        if names == [name]:
            print(args[0])
            return
        folder = name.rstrip("/") + "/"
        children = sorted(
            {n[len(folder) :].split("/")[0] + ("/" if "/" in n[len(folder) :] else "") for n in names}
        )
        for child in children:
            print(f"gs://{bucket_name}/{folder}{child}")
        return
    if verb == "rm":
        if bucket.read(args[0]) is None:
            _fail("One or more URLs matched no objects.")
        bucket.remove(args[0])
        return
    if verb == "cp":
        src, dst = [a for a in args if not a.startswith("-") or a == "-"][-2:]
        if src == "-":
            bucket.write(dst, sys.stdin.buffer.read())
            return
        if Path(src).is_file():
            bucket.write(dst, Path(src).read_bytes())
            return
        base = Path(src.removesuffix("/*"))
        for file in sorted(p for p in base.rglob("*") if p.is_file()):
            bucket.write(f"{dst.rstrip('/')}/{file.relative_to(base)}", file.read_bytes())
        return
    _fail(f"the fake gcloud has no `storage {verb}`", 2)


def main(argv: list[str]) -> None:
    root = Path(os.environ["FAKE_GCLOUD_ROOT"])
    on_worker = "FAKE_GCLOUD_WORKER" in os.environ
    with open(root / ("calls-workers.jsonl" if on_worker else "calls.jsonl"), "a") as calls:
        calls.write(json.dumps(argv) + "\n")
    plan = json.loads((root / "plan.json").read_text())
    try:
        if argv[:3] == ["compute", "tpus", "queued-resources"]:
            _queued_resources(root, plan, argv[3], argv[4], argv[5:])
        elif argv[:3] == ["compute", "tpus", "tpu-vm"]:
            _tpu_vm(root, plan, argv[3], argv[4:])
        elif argv[:1] == ["storage"]:
            _storage(argv[1], argv[2:])
        elif argv[:2] == ["auth", "list"]:
            print(plan["account"])
        else:
            _fail(f"the fake gcloud does not know {' '.join(argv[:4])}", 2)
    finally:
        _save_plan(root, plan)


def _save_plan(root: Path, plan: dict) -> None:
    tmp = root / f"plan.json.{os.getpid()}"
    tmp.write_text(json.dumps(plan))
    tmp.replace(root / "plan.json")


if __name__ == "__main__":
    main(sys.argv[1:])
