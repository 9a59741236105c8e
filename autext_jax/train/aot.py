"""Ahead-of-time compilation: will this config fit that TPU? Answered on a laptop, without weights or data.

``python -m autext_jax.train --config C --workdir D --compile-only --topology v5e:2x4`` lowers the
real train and eval steps (``steps.TrainSteps``, the very functions training runs) for the devices of
a TPU topology described by libtpu (``jax.experimental.topologies``; ``pip install -e ".[tpu]"``,
which installs on a CPU machine), with abstract parameters, optimizer state and batches of the
longest bucket. It prints the HBM each chip needs (``compiled.memory_analysis()``) and the step's
FLOPs (``compiled.cost_analysis()``), and exits 1 when a step does not fit the chip's HBM. Without
``--topology`` it compiles for the attached devices instead.

Topologies: ``v5e:2x4``-style names (chips per ICI axis), or accelerator types as Cloud TPU spells
them (``v5e-8``/``v5litepod-8``, ``v4-32``: v4 and v5p count TensorCores, two per chip); ``2xv5e-16``
is two slices joined over DCN.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax

from autext_jax.config import (
    KNOWN_ENCODERS,
    PUBLISHED_CONFIG_JSON,
    ConfigError,
    EncoderConfig,
    ModelConfig,
    is_model_config,
    read_json_object,
)
from autext_jax.errors import EXIT_BAD_INPUT, AutextError, UsageError
from autext_jax.model import abstract_model, compute_dtype
from autext_jax.train import sharding as shd
from autext_jax.train.optim import build_optimizer
from autext_jax.train.steps import TrainSteps, describe_model
from autext_jax.train.throughput import peak_flops

log = logging.getLogger(__name__)

GIB = 1024**3
PUBLISHED_MODEL = "pandrei7/autextification-upb-mtl"
# Steps in the LR schedule when the config does not say: the schedule's length changes values, never
# shapes, memory or FLOPs.
PLACEHOLDER_STEPS = 1000


ADVICE = (
    "shard parameters and Adam moments (--set mesh.fsdp=N), lower the batch (--batch-per-device) or "
    "data.max_length, or use a chip with more HBM"
)


class DoesNotFit(AutextError):
    """A step needs more memory per chip than the chip has (exit 1)."""

    exit_code = EXIT_BAD_INPUT


@dataclass(frozen=True)
class Chip:
    """Public facts about one TPU generation."""

    name: str  # as in topology names: v5e:2x4
    libtpu_name: str  # what libtpu calls it in topology names (v5p is "v5")
    accelerator: str  # Cloud TPU accelerator-type prefix: v5litepod-8
    dims: int  # ICI torus dimensions
    cores_per_chip_in_name: int  # v4-8 counts TensorCores: 4 chips
    hbm_gib: float
    device_kind: str  # jax.Device.device_kind: its peak FLOP/s come from throughput.PEAK_FLOPS
    megacore: bool  # one JAX device per chip spanning its two TensorCores

    @property
    def peak_bf16_tflops(self) -> float | None:
        peak = peak_flops(self.device_kind)
        return None if peak is None else peak / 1e12


CHIPS = {
    "v4": Chip("v4", "v4", "v4", 3, 2, 32, "TPU v4", True),
    "v5e": Chip("v5e", "v5e", "v5litepod", 2, 1, 16, "TPU v5 lite", False),
    "v5p": Chip("v5p", "v5", "v5p", 3, 2, 95, "TPU v5", True),
    "v6e": Chip("v6e", "v6e", "v6e", 2, 1, 32, "TPU v6 lite", False),
}
_ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e"}


@dataclass(frozen=True)
class Topology:
    """A TPU slice shape (chips along each ICI axis) and how many such slices run together."""

    chip: Chip
    shape: tuple[int, ...]
    num_slices: int = 1

    @property
    def chips(self) -> int:
        return math.prod(self.shape) * self.num_slices

    @property
    def name(self) -> str:
        return f"{self.chip.name}:{'x'.join(map(str, self.shape))}"

    @property
    def libtpu_name(self) -> str:
        return f"{self.chip.libtpu_name}:{'x'.join(map(str, self.shape))}"

    @property
    def accelerator_type(self) -> str:
        return f"{self.chip.accelerator}-{math.prod(self.shape) * self.chip.cores_per_chip_in_name}"

    @property
    def chips_per_host_bounds(self) -> tuple[int, int, int]:
        """Chips of one host along x, y, z: v5e/v6e slices of up to 8 chips are a single host."""
        dims = (*self.shape, 1, 1)[:3]
        if self.chip.dims == 2 and math.prod(self.shape) <= 8:
            return dims
        return (min(2, dims[0]), min(2, dims[1]), 1)

    def __str__(self) -> str:
        prefix = f"{self.num_slices}×" if self.num_slices > 1 else ""
        return f"{prefix}{self.name} ({prefix}{self.accelerator_type}, {self.chips} chips)"


def parse_topology(text: str) -> Topology:
    """``v5e:2x4``, ``v4:2x2x4``, ``v5e-8``, ``v5litepod-16``, ``v4-32``, ``2xv5e-16`` → ``Topology``."""
    match = re.fullmatch(r"(?:(\d+)[x×*])?([a-z0-9]+)([:-])([0-9x]+)", text.strip().lower())
    chip = None
    if match:
        chip = CHIPS.get(_ALIASES.get(match.group(2), match.group(2)))
    if chip is None:
        raise UsageError(
            f"--topology {text!r}: expected e.g. v5e:2x4, v4:2x2x4, v5e-16 or v4-32 "
            f"(chips: {', '.join(CHIPS)}; 2xv5e-16 for two slices)"
        )
    slices = int(match.group(1) or 1)
    if slices < 1:
        raise UsageError(f"--topology {text!r}: the number of slices must be at least 1")
    if match.group(3) == ":":
        shape = tuple(int(s) for s in match.group(4).split("x") if s)
        if len(shape) != chip.dims or min(shape) < 1:
            raise UsageError(
                f"--topology {text!r}: {chip.name} slices have {chip.dims} axes, e.g. "
                f"{chip.name}:{'x'.join(['2'] * chip.dims)}"
            )
    else:
        count = int(match.group(4)) if match.group(4).isdigit() else 0
        shape = _shape_for(chip, count, text)
    return Topology(chip, shape, slices)


def _shape_for(chip: Chip, count: int, text: str) -> tuple[int, ...]:
    """The slice shape Cloud TPU gives an accelerator type: double the smallest axis, last first."""
    chips, rest = divmod(count, chip.cores_per_chip_in_name)
    smallest = 4 if chip.dims == 3 else 1
    if rest or chips < smallest or chips & (chips - 1):
        raise UsageError(
            f"--topology {text!r}: {chip.accelerator}-N needs N = {chip.cores_per_chip_in_name}×(a power "
            f"of two ≥ {smallest}); give other shapes as {chip.name}:AxB{'xC' if chip.dims == 3 else ''}"
        )
    shape = [2, 2, 1] if chip.dims == 3 else [1, 1]
    while math.prod(shape) < chips:
        low = min(shape)
        shape[max(i for i, s in enumerate(shape) if s == low)] *= 2
    return tuple(shape)


def topology_devices(topology: Topology) -> list[Any]:
    """Compile-only devices of ``topology`` from libtpu; the local accelerator is never touched."""
    try:
        import libtpu  # noqa: F401
    except ImportError:
        raise UsageError(
            '--topology needs libtpu: pip install -e ".[tpu]" (it installs on CPU-only machines too)'
        ) from None
    # Without a TPU VM around it, libtpu warns about its environment; tell it what it would look up.
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", topology.accelerator_type)
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    # Compile-only never opens a chip, so it need not hold libtpu's one-process lock (a training run
    # on this TPU VM, or another compile, may hold it).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    jax.config.update("jax_platforms", "cpu")  # the host-side work only; nothing runs on a TPU
    from jax.experimental import topologies

    options: dict[str, Any] = {"chips_per_host_bounds": topology.chips_per_host_bounds}
    if topology.chip.megacore:
        options["chip_config_name"] = "megacore"
    if topology.num_slices > 1:
        options["num_slices"] = topology.num_slices
    try:
        return list(topologies.get_topology_desc(topology.libtpu_name, "tpu", **options).devices)
    except Exception as err:  # libtpu reports bad shapes as assorted runtime errors
        raise UsageError(f"libtpu cannot describe {topology}: {' '.join(str(err).split())[:300]}") from None


def model_config_for(cfg) -> ModelConfig:
    """The model's shape without loading weights: from ``init``'s config.json, a known name, or the config."""
    init = cfg.init
    if init is None:
        return cfg.model
    if init == PUBLISHED_MODEL:
        return ModelConfig.from_published_json(PUBLISHED_CONFIG_JSON)
    if init in KNOWN_ENCODERS:
        return cfg.model.replace(encoder=KNOWN_ENCODERS[init])
    config_file = Path(init).expanduser() / "config.json"
    if config_file.is_file():
        data = read_json_object(config_file)
        if is_model_config(data):
            return ModelConfig.from_published_json(data, base_dir=config_file.parent)
        return cfg.model.replace(encoder=EncoderConfig.from_hf_config(data))
    raise ConfigError(
        f"--compile-only reads the model's shape without downloading: init {init!r} is neither a local "
        f"directory with config.json nor one of {[PUBLISHED_MODEL, *sorted(KNOWN_ENCODERS)]}"
    )


@dataclass(frozen=True)
class StepReport:
    """What one compiled step needs on each chip."""

    name: str
    rows: int
    length: int
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    code_bytes: int
    flops_per_chip: float
    chips: int

    @property
    def bytes_per_chip(self) -> int:
        """Peak device memory: inputs + outputs (less what reuses donated inputs) + scratch + code."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

    @property
    def flops(self) -> float:
        return self.flops_per_chip * self.chips

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.name,
            "rows": self.rows,
            "length": self.length,
            "bytes_per_chip": self.bytes_per_chip,
            "gib_per_chip": round(self.bytes_per_chip / GIB, 3),
            "argument_gib": round(self.argument_bytes / GIB, 3),
            "temp_gib": round(self.temp_bytes / GIB, 3),
            "flops_per_chip": self.flops_per_chip,
            "tflops_per_step": round(self.flops / 1e12, 3),
        }


def report_from_compiled(name: str, compiled, rows: int, length: int, chips: int) -> StepReport:
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    if isinstance(cost, list):  # older jax: one dict per program
        cost = cost[0]
    return StepReport(
        name,
        rows,
        length,
        int(mem.argument_size_in_bytes),
        int(mem.output_size_in_bytes),
        int(mem.alias_size_in_bytes),
        int(mem.temp_size_in_bytes),
        int(mem.generated_code_size_in_bytes),
        float((cost or {}).get("flops", 0.0)),
        chips,
    )


def compile_steps(cfg, devices: list[Any]) -> list[StepReport]:
    """Lower and compile the real train and eval steps of ``cfg`` for ``devices`` (abstract inputs only)."""
    model_cfg = model_config_for(cfg)
    layout, _ = describe_model(abstract_model(model_cfg, dtype=compute_dtype(cfg.dtype)))
    mesh = shd.make_mesh(cfg.mesh, devices)
    shd.check_batch_size(cfg.batch_size, mesh)
    shd.check_batch_size(cfg.eval.batch_size, mesh, what="eval.batch_size")
    total = cfg.max_steps or PLACEHOLDER_STEPS
    tx = build_optimizer(cfg.optimizer, layout.names, model_cfg.encoder.num_layers, total)
    steps = TrainSteps(layout, tx, mesh, lang_loss_weight=cfg.lang_loss_weight)
    length = max(cfg.data.buckets)  # the longest bucket needs the most memory and FLOPs
    state = steps.abstract_state()
    log.info("compiling for %d devices, mesh %s, %d-token batches", mesh.size, dict(mesh.shape), length)
    train_rows, eval_rows = cfg.batch_size, cfg.eval.batch_size
    train_batch = steps.abstract_batch(train_rows, length)
    train = _compile("train", steps.train_step.lower(state, train_batch, steps.abstract_dropout_key()))
    evaluate = _compile(
        "eval", steps.eval_step.lower(state["params"], steps.abstract_batch(eval_rows, length))
    )
    return [
        report_from_compiled("train", train, train_rows, length, mesh.size),
        report_from_compiled("eval", evaluate, eval_rows, length, mesh.size),
    ]


def _compile(name: str, lowered):
    """``lowered.compile()``; the TPU compiler itself refuses programs whose temporaries exceed HBM."""
    try:
        return lowered.compile()
    except jax.errors.JaxRuntimeError as err:
        text = " ".join(str(err).split())
        if "RESOURCE_EXHAUSTED" not in text:
            raise
        raise DoesNotFit(f"the {name} step does not fit: {text[:240].rstrip('. ')}; {ADVICE}") from None


def hbm_limit(devices: list[Any], topology: Topology | None) -> tuple[int | None, str]:
    """``(bytes per chip, chip name)``: the generation's HBM for a topology, the runtime's limit otherwise."""
    if topology is not None:
        return int(topology.chip.hbm_gib * GIB), f"TPU {topology.chip.name}"
    try:
        stats = devices[0].memory_stats() or {}
    except Exception:  # CPU and compile-only devices keep no statistics
        stats = {}
    limit = stats.get("bytes_limit")
    return (int(limit) if limit else None), devices[0].device_kind


def check_fits(reports: list[StepReport], limit: int | None, chip: str) -> None:
    over = [r for r in reports if limit is not None and r.bytes_per_chip > limit]
    if over:
        worst = max(over, key=lambda r: r.bytes_per_chip)
        raise DoesNotFit(
            f"the {worst.name} step needs {worst.bytes_per_chip / GIB:.2f} GiB per chip but a {chip} chip "
            f"has {limit / GIB:.0f} GiB; {ADVICE}"
        )


def format_table(reports: list[StepReport], limit: int | None, chip: str, peak_tflops: float | None) -> str:
    lines = [
        f"{'step':<6} {'batch':>11} {'GiB/chip':>9} {'of which args':>13} {'temp':>6} {'TFLOP/step':>11}"
        + ("  ms at peak" if peak_tflops else "")
    ]
    for r in reports:
        line = (
            f"{r.name:<6} {f'{r.rows}×{r.length}':>11} {r.bytes_per_chip / GIB:>9.2f} "
            f"{r.argument_bytes / GIB:>13.2f} {r.temp_bytes / GIB:>6.2f} {r.flops / 1e12:>11.2f}"
        )
        if peak_tflops:
            line += f"  {r.flops_per_chip / (peak_tflops * 1e12) * 1e3:>11.1f}"
        lines.append(line)
    if limit is not None:
        lines.append(f"{chip}: {limit / GIB:.1f} GiB HBM per chip")
    return "\n".join(lines)


def run(cfg, topology_text: str | None, batch_per_device: int | None = None) -> dict[str, Any]:
    """``--compile-only``: compile, log the table, raise ``DoesNotFit`` (exit 1) when a step is too big."""
    topology = parse_topology(topology_text) if topology_text else None
    devices = topology_devices(topology) if topology else jax.devices()
    if batch_per_device is not None:
        cfg = cfg.replace(batch_size=shd.global_batch_size(batch_per_device, cfg.mesh, len(devices)))
    reports = compile_steps(cfg, devices)
    limit, chip = hbm_limit(devices, topology)
    peak = topology.chip.peak_bf16_tflops if topology else None
    where = str(topology) if topology else f"{len(devices)} × {devices[0].device_kind}"
    log.info("compiled for %s:\n%s", where, format_table(reports, limit, chip, peak))
    check_fits(reports, limit, chip)
    return {
        "topology": topology.name if topology else None,
        "num_slices": topology.num_slices if topology else 1,
        "devices": len(devices),
        "batch_size": cfg.batch_size,
        "hbm_gib_per_chip": round(limit / GIB, 2) if limit else None,
        "steps": [r.to_json() for r in reports],
        "fits": True,
    }
