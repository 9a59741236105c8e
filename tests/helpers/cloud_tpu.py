"""Helpers for the launcher's tests on the simulated slice (``tests/fake_gcloud.py``): the tool as a
subprocess, and a small stand-in project whose ``autext_jax.train`` reports as training does.

The stand-in follows a script in its flags (``--script "crash@10 finish@20"``): launch k does the k-th
action (the last one repeats). ``crash@S``: running at step S, then failed (exit 1); ``finish@S``:
export, then finished (exit 0); ``beat@S``: running at step S with a heartbeat every 0.3 s until
killed; ``gatedfinish@S``/``gatedcrash@S``: heartbeats until the test writes ``WORKDIR/go``, then
finishes/crashes; ``slowexport@S``: writes the export, heartbeats for 3 s (calibration and the rest of
the export), then finished; ``importerror@0``: exits 1 before any status. ``--skew S`` offsets its
clock (the ``updated`` it writes). Each launch appends ``stand-in launch K: ACTION`` to its log, and
every worker records what it saw in ``WORKDIR/seen-I.json``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.fake_gcloud import FakeCloud

REPO = Path(__file__).resolve().parents[2]
WHERE = ["--name", "upb", "--zone", "us-west4-a"]

STAND_IN_TRAIN = '''"""Stand-in for training: reports as training does, following --script."""
import json, os, subprocess, sys, time
a = sys.argv[1:]
workdir, script = a[a.index("--workdir") + 1], a[a.index("--script") + 1].split()
skew = float(a[a.index("--skew") + 1]) if "--skew" in a else 0.0  # this VM's clock is off by that much
def put(name, text):
    subprocess.run(["gcloud", "storage", "cp", "-", f"{workdir}/{name}"], input=text.encode(), check=True)
def get(name):
    p = subprocess.run(["gcloud", "storage", "cat", f"{workdir}/{name}"], capture_output=True, text=True)
    return p.stdout if p.returncode == 0 else None
worker = os.environ["TPU_WORKER_ID"]
put(f"seen-{worker}.json", json.dumps({"argv": a, "commit": os.environ.get("AUTEXT_JAX_SOURCE_COMMIT"),
    "python": sys.version_info[:2], "exe": sys.executable}))
if worker != "0":
    sys.exit(0)
launch = int(get("launches") or 0) + 1
put("launches", str(launch))
action, step = script[min(launch, len(script)) - 1].split("@")
if action == "importerror":
    sys.exit("ImportError: the shipped code cannot start")
print(f"stand-in launch {launch}: {action}", flush=True)
beat = 0
def status(state, code=None):
    global beat
    beat += 1
    put("run_status.json", json.dumps({"state": state, "exit_code": code, "step": int(step),
        "updated": time.time() + skew, "beat": beat, "host": "w0",
        "commit": os.environ.get("AUTEXT_JAX_SOURCE_COMMIT"), "export": None}))
def beats(seconds):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        status("running")
        time.sleep(0.3)
status("running")
if action == "gatedcrash":
    while get("go") is None:
        beats(0.3)
if action in ("crash", "gatedcrash"):
    status("failed", 1)
    sys.exit(1)
if action == "beat":
    beats(10**9)
if action == "gatedfinish":
    while get("go") is None:
        beats(0.3)
put("export/config.json", "{}")
if action == "slowexport":
    beats(3)
status("finished", 0)
'''


def make_stand_in(root: Path) -> Path:
    """A git checkout of a dependency-free project whose ``autext_jax.train`` is the stand-in above."""
    (root / "autext_jax" / "train").mkdir(parents=True)
    (root / "configs").mkdir()
    (root / "configs" / "upb_mtl.py").write_text("# the stand-in's config\n")
    (root / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "stand-in"\nversion = "0"\n[project.optional-dependencies]\ntpu = []\n'
        '[tool.setuptools.packages.find]\ninclude = ["autext_jax*"]\n'
    )
    (root / "autext_jax" / "__init__.py").write_text("")
    (root / "autext_jax" / "train" / "__init__.py").write_text("")
    (root / "autext_jax" / "train" / "__main__.py").write_text(STAND_IN_TRAIN)
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "stand-in"], check=True)
    return root


def tool(*args: str, env: dict, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(env, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "tools.cloud_tpu", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


def watch_argv(stand_in: Path, *extra: str, script: str = "finish@10", skew: float = 0.0) -> list[str]:
    """``watch`` on the fake slice, fast: polls of 0.2 s, heartbeats judged over 4 s."""
    return [
        "watch",
        *WHERE,
        "--poll",
        "0.2",
        "--backoff",
        "0.1",
        "--accelerator-type",
        "v5litepod-16",
        "--spot",
        "--source",
        str(stand_in),
        "--workdir",
        "gs://bkt/run",
        "--start-timeout",
        "20",
        "--stale-after",
        "4",
        *extra,
        "--",
        "--script",
        script,
        "--skew",
        str(skew),
    ]


def watch(fake: FakeCloud, stand_in: Path, *extra: str, script: str = "finish@10", timeout: float = 240):
    return tool(*watch_argv(stand_in, *extra, script=script), env=fake.env(), timeout=timeout)


def verbs(fake: FakeCloud) -> list[str]:
    """The launcher's gcloud verbs, in order (the workers' own calls left out)."""
    out = []
    for call in fake.calls():
        if call[:2] == ["compute", "tpus"]:
            out.append(call[3])
        elif call[0] == "storage":
            out.append(f"storage-{call[1]}")
        else:
            out.append(" ".join(call[:2]))
    return out


def gcs(fake: FakeCloud, name: str) -> str:
    return (fake.root / "gcs" / "bkt" / "run" / name).read_text()


def status(fake: FakeCloud) -> dict:
    return json.loads(gcs(fake, "run_status.json"))


def put_status(fake: FakeCloud, **record) -> None:
    path = fake.root / "gcs" / "bkt" / "run" / "run_status.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
