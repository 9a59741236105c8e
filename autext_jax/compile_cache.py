"""The persistent XLA compilation cache, shared by scoring and training, and counting its hits.

Scoring turns it on by default (``default_cache_dir``); training keeps it in the run directory
(``train_cache_dir``: ``WORKDIR/compile_cache``, so every relaunch of a run, on any VM, reuses what
the first compiled; ``gs://`` works). A local
cache that cannot be used never stops a run; a URL (``gs://``) is handed to JAX, which reads and
writes it itself. ``counting_hits`` attributes cache hits to whoever is compiling on this thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax

from autext_jax import paths

log = logging.getLogger(__name__)

COMPILE_CACHE_ENV = "AUTEXT_JAX_COMPILE_CACHE"
_CACHE_OFF = ("", "0", "off", "none", "false", "no")
_HIT_EVENT = "/jax/compilation_cache/cache_hits"


def is_off(value: str) -> bool:
    """Whether a user's cache setting (environment variable or flag) means "no cache"."""
    return value.strip().lower() in _CACHE_OFF


def default_cache_dir() -> Path | None:
    """``$AUTEXT_JAX_COMPILE_CACHE`` (``off``/``0``/empty: none), else ``$XDG_CACHE_HOME/autext-jax/xla``."""
    env = os.environ.get(COMPILE_CACHE_ENV)
    if env is not None:
        return None if is_off(env) else Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "autext-jax" / "xla"


TRAIN_CACHE_SUBDIR = "compile_cache"


def train_cache_dir(flag: str | None, workdir: str) -> str | None:
    """Where training keeps compiled steps: ``--compile-cache DIR`` (``off``: nowhere), else an explicit
    ``$AUTEXT_JAX_COMPILE_CACHE`` or ``$JAX_COMPILATION_CACHE_DIR``, else ``WORKDIR/compile_cache``."""
    if flag is not None:
        return None if is_off(flag) else flag
    env = os.environ.get(COMPILE_CACHE_ENV)
    if env is not None:
        return None if is_off(env) else env
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    return paths.join(workdir, TRAIN_CACHE_SUBDIR)


def enable_compile_cache(directory: str | Path) -> str | None:
    """Persist XLA executables in ``directory`` so later runs skip compiling the same shapes.

    A local cache that cannot be used (a file, a read-only folder) logs one warning and returns
    ``None``: the run goes on, compiling as usual. Unreadable entries are recompiled (JAX warns). A URL
    (``gs://``) is handed to JAX as it is: JAX reads and writes it itself.
    """
    if paths.is_url(directory):
        path = str(directory)
    else:
        local = Path(directory).expanduser().absolute()
        try:
            local.mkdir(parents=True, exist_ok=True)
            probe = local / f".autext-write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as err:
            log.warning("compile cache %s unusable (%s); compiling without it", local, err.strerror or err)
            return None
        path = str(local)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    _reset_jax_cache()
    _HITS.listen()
    return path


def _reset_jax_cache() -> None:
    """JAX decides once per process whether the cache is on; let a new directory take effect."""
    try:
        from jax._src import compilation_cache  # private: JAX has no public reset
    except ImportError:  # a JAX without the module: the directory still applies to a fresh process
        return
    reset = getattr(compilation_cache, "reset_cache", None)
    if reset is not None:
        reset()


class HitCount:
    """Cache hits seen while a ``counting_hits`` block of this thread was innermost."""

    def __init__(self) -> None:
        self.hits = 0


class _HitListener(threading.local):
    """One JAX event listener for the process; hits go to the innermost counter of the compiling thread."""

    registered = False

    def __init__(self) -> None:
        self.stack: list[HitCount] = []

    def listen(self) -> None:
        if not _HitListener.registered:
            jax.monitoring.register_event_listener(_on_event)
            _HitListener.registered = True


_HITS = _HitListener()


def _on_event(event: str, **_: Any) -> None:
    if event == _HIT_EVENT and _HITS.stack:
        _HITS.stack[-1].hits += 1


@contextlib.contextmanager
def counting_hits() -> Iterator[HitCount]:
    """Count the persistent-cache hits of the jitted calls made inside the block (on this thread)."""
    count = HitCount()
    _HITS.stack.append(count)
    try:
        yield count
    finally:
        _HITS.stack.pop()
