"""Device mesh, the one logical-axis rules table, batch-size checks, and multi-host helpers.

Parameters carry ``logical_axes`` metadata (see ``model.py``). ``LOGICAL_AXIS_RULES`` maps each
logical name to mesh axes of a ``Mesh`` with axes ``('data', 'fsdp', 'tensor')``; everything that
places arrays (parameters, optimizer state, batches) derives its ``NamedSharding`` from here, so
one table decides the whole layout. A dimension that a mesh axis does not divide evenly is
replicated instead (e.g. a 250,002-row vocabulary on 4 tensor shards).

The device order comes from the hardware: inside a host, ``mesh_utils.create_device_mesh`` follows
the TPU's ICI torus; several hosts (a pod slice, or slices joined over DCN) are combined with
``create_hybrid_device_mesh`` one host per block, so that each host's rows of a global batch are one
contiguous block of the batch dimension — what ``BatchStream`` hands each process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from autext_jax.errors import AutextError

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis name -> mesh axis (or axes). Names absent here are replicated.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("mlp", "tensor"),
    ("embed_out", None),
    ("norm", None),
    ("head_mlp", None),
)


class MeshError(AutextError, ValueError):
    """A mesh shape that the available devices or the batch size cannot satisfy."""


@dataclass(frozen=True)
class MeshConfig:
    """Mesh shape; ``-1`` on one axis takes all the devices the other axes leave."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        """The concrete ``(data, fsdp, tensor)`` sizes for ``num_devices`` devices."""
        sizes = [self.data, self.fsdp, self.tensor]
        if sum(1 for s in sizes if s == -1) > 1:
            raise MeshError(f"mesh {sizes}: at most one axis may be -1")
        if any(s == 0 or s < -1 for s in sizes):
            raise MeshError(f"mesh {sizes}: sizes must be positive (or -1 for 'the rest')")
        fixed = int(np.prod([s for s in sizes if s != -1]))
        if -1 in sizes:
            if num_devices % fixed:
                raise MeshError(
                    f"mesh {dict(zip(MESH_AXES, sizes, strict=True))} does not divide {num_devices} devices; "
                    "set mesh.data/fsdp/tensor so their product divides the device count"
                )
            sizes[sizes.index(-1)] = num_devices // fixed
        if int(np.prod(sizes)) != num_devices:
            raise MeshError(
                f"mesh {dict(zip(MESH_AXES, sizes, strict=True))} needs {int(np.prod(sizes))} devices but "
                f"{num_devices} are available; set mesh.data=-1 to use them all"
            )
        return sizes[0], sizes[1], sizes[2]


def make_mesh(cfg: MeshConfig, devices: Sequence[Any] | None = None) -> Mesh:
    """A ``('data', 'fsdp', 'tensor')`` mesh over ``devices`` (default: every device of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(device_grid(cfg.resolve(len(devices)), devices), MESH_AXES)


def device_grid(shape: tuple[int, int, int], devices: Sequence[Any]) -> np.ndarray:
    """``devices`` arranged as a ``shape`` array: ICI-aware inside a host, one block per host across hosts."""
    by_process: dict[int, list[Any]] = {}
    for device in devices:
        by_process.setdefault(device.process_index, []).append(device)
    counts = {len(group) for group in by_process.values()}
    if len(counts) != 1:
        raise MeshError(f"processes hold different numbers of devices ({sorted(counts)}); no mesh fits")
    if len(by_process) == 1:
        return _host_grid(shape, devices)
    inner, outer = _split_over_hosts(shape, counts.pop(), len(by_process))
    grid = mesh_utils.create_hybrid_device_mesh(
        inner, outer, devices, process_is_granule=True, allow_split_physical_axes=True
    )
    check_host_layout(grid)
    return grid


def _host_grid(shape: tuple[int, int, int], devices: Sequence[Any]) -> np.ndarray:
    if devices[0].platform == "tpu":
        try:
            return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
        except (ValueError, NotImplementedError) as err:
            log.warning("no ICI-aware layout for mesh %s (%s); using device id order", shape, err)
    return np.array(sorted(devices, key=lambda d: d.id), dtype=object).reshape(shape)


def _split_over_hosts(
    shape: tuple[int, int, int], per_host: int, hosts: int
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``(inner, outer)``, ``inner × outer == shape``: ``inner`` one host's devices, ``outer`` the hosts.

    Tensor-parallel groups stay inside a host. Either a host holds whole fsdp groups (hosts split
    ``data``) or an fsdp group is made of whole hosts (hosts split ``data`` and ``fsdp``); both keep
    a host's batch rows contiguous.
    """
    data, fsdp, tensor = shape
    if per_host % tensor:
        raise MeshError(
            f"mesh.tensor={tensor} does not divide the {per_host} devices of a host; tensor-parallel "
            f"groups must stay inside a host (choose a divisor of {per_host})"
        )
    rows = per_host // tensor  # batch shards per host
    if rows % fsdp == 0:
        return (rows // fsdp, fsdp, tensor), (hosts, 1, 1)
    if fsdp % rows == 0:
        return (1, rows, tensor), (data, fsdp // rows, 1)
    raise MeshError(
        f"mesh.fsdp={fsdp} neither divides nor is a multiple of the {rows} batch shards of a host "
        f"({per_host} devices / tensor {tensor}); choose a power of two"
    )


def check_host_layout(grid: np.ndarray) -> None:
    """Each host's batch shards are one contiguous run, hosts in process order, and (multi-slice)
    no fsdp×tensor group crosses a slice boundary: what ``BatchStream`` and DCN assume."""
    data = grid.shape[0]
    flat = grid.reshape(-1, grid.shape[-1])  # (batch shards, tensor)
    owners = []
    for position, replicas in enumerate(flat):
        procs = {d.process_index for d in replicas}
        if len(procs) != 1:
            raise MeshError(f"batch shard {position} spans processes {sorted(procs)}; lower mesh.tensor")
        owners.append(procs.pop())
    if owners != sorted(owners):
        raise MeshError(f"hosts' batch shards are not contiguous in process order: {owners}")
    for row in grid.reshape(data, -1):
        slices = {getattr(d, "slice_index", 0) for d in row}
        if len(slices) > 1:
            raise MeshError(
                f"an fsdp×tensor group of {row.size} devices spans slices {sorted(slices)}: it would talk "
                "over the slow data-center network; keep mesh.fsdp×mesh.tensor within one slice"
            )


def _rules() -> dict[str, tuple[str, ...]]:
    table: dict[str, tuple[str, ...]] = {}
    for name, target in LOGICAL_AXIS_RULES:
        table[name] = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
    return table


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    """The ``PartitionSpec`` for an array with these logical axes, replicating dims that don't divide."""
    if len(logical_axes) != len(shape):
        raise MeshError(f"logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}")
    rules = _rules()
    used: set[str] = set()
    spec: list[str | tuple[str, ...] | None] = []
    for name, size in zip(logical_axes, shape, strict=True):
        axes = tuple(a for a in rules.get(name, ()) if name is not None and a not in used)
        axes = tuple(a for a in axes if mesh.shape[a] > 1)
        ways = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
        if not axes or size % ways:
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return PartitionSpec(*spec)


def tree_shardings(
    shapes: Mapping[str, tuple[int, ...]], logical_axes: Mapping[str, Sequence[str | None]], mesh: Mesh
) -> dict[str, NamedSharding]:
    """``NamedSharding`` for each named array from its logical axes (missing names: replicated)."""
    out = {}
    for name, shape in shapes.items():
        axes = logical_axes.get(name, (None,) * len(shape))
        out[name] = NamedSharding(mesh, logical_to_spec(axes, shape, mesh))
    return out


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (example) dimension split over ``('data', 'fsdp')``; the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(_rules()["batch"]))


def batch_shards(mesh: Mesh) -> int:
    """How many ways the batch dimension is split."""
    return int(np.prod([mesh.shape[a] for a in _rules()["batch"]]))


def global_batch_size(per_device: int, cfg: MeshConfig, num_devices: int) -> int:
    """The global batch for ``per_device`` rows on each batch shard (each device when tensor is 1)."""
    if per_device < 1:
        raise MeshError(f"--batch-per-device must be >= 1, got {per_device}")
    data, fsdp, _ = cfg.resolve(num_devices)
    return per_device * data * fsdp


def check_batch_size(global_batch_size: int, mesh: Mesh, what: str = "batch_size") -> None:
    """Fail early (one line) when the batch cannot be split evenly over devices and processes."""
    shards = batch_shards(mesh)
    if global_batch_size % shards:
        hint = " or give it per device with --batch-per-device N" if what == "batch_size" else ""
        suggest = -(-global_batch_size // shards) * shards  # the next multiple up
        raise MeshError(
            f"{what}={global_batch_size} does not split over the {shards} batch shards of mesh "
            f"data×fsdp = {mesh.shape['data']}×{mesh.shape['fsdp']} ({mesh.size} devices): use a multiple "
            f"of {shards}, e.g. --set {what}={suggest}{hint}"
        )
    processes = len({d.process_index for d in mesh.devices.flat})
    if global_batch_size % processes:
        raise MeshError(f"{what}={global_batch_size} is not divisible by the {processes} processes")


def global_batch(local: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """This process's rows → global arrays sharded over ``('data', 'fsdp')`` (multi-host safe)."""
    sharding = batch_sharding(mesh)
    procs = jax.process_count()
    out = {}
    for name, array in local.items():
        shape = (array.shape[0] * procs, *array.shape[1:])
        out[name] = jax.make_array_from_process_local_data(sharding, np.asarray(array), shape)
    return out


@dataclass(frozen=True)
class DistributedArgs:
    """How to join a multi-process run. ``auto`` (``--distributed auto``): ``jax.distributed.initialize()``
    with no arguments, which finds the cluster itself on Cloud TPU VMs (every worker runs the same
    command), SLURM and other supported launchers."""

    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    auto: bool = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DistributedArgs:
        """``AUTEXT_COORDINATOR`` / ``AUTEXT_NUM_PROCESSES`` / ``AUTEXT_PROCESS_ID`` (all or none)."""
        env = os.environ if environ is None else environ
        names = ("AUTEXT_COORDINATOR", "AUTEXT_NUM_PROCESSES", "AUTEXT_PROCESS_ID")
        present = [n for n in names if env.get(n)]
        if not present:
            return cls()
        if len(present) != len(names):
            raise MeshError(f"set all of {names} for a multi-process run (found only {present})")
        try:
            return cls(env[names[0]], int(env[names[1]]), int(env[names[2]]))
        except ValueError:
            raise MeshError(f"{names[1]} and {names[2]} must be integers") from None

    @property
    def enabled(self) -> bool:
        return self.auto or self.coordinator is not None


def initialize_distributed(args: DistributedArgs) -> bool:
    """Join the multi-process run described by ``args``; ``False`` (nothing done) for a single process.

    Must run before any other JAX call. CPU processes talk through gloo collectives.
    """
    if not args.enabled:
        return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args.auto:
        try:
            jax.distributed.initialize()
        except (ValueError, RuntimeError) as err:
            reason = " ".join(str(err).split())[:200]
            raise MeshError(
                f"--distributed auto found no cluster to join ({reason}); it works on Cloud TPU VMs "
                "(run it on every worker: --worker=all) and SLURM; elsewhere pass --coordinator HOST:PORT "
                "--num-processes N --process-id I"
            ) from None
    else:
        if args.num_processes is None or args.process_id is None:
            raise MeshError("a coordinator address needs num_processes and process_id too")
        if not 0 <= args.process_id < args.num_processes:
            raise MeshError(f"process_id {args.process_id} is outside [0, {args.num_processes})")
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    log.info("process %d of %d joined", jax.process_index(), jax.process_count())
    return True
