"""The jitted train and eval steps, the multi-task loss, and the sharded training state.

The training state is a plain pytree ``{"params", "opt_state"}`` where ``params`` is a flat
``{"encoder/layers/0/attention/query/kernel": array}`` dict: flat string keys keep Orbax, Optax masks
and sharding tables simple. The NNX module is rebuilt inside the traced function from the static
``ModelLayout``. The dropout key is an argument of each step (``dropout_key(seed, step)``), not
state, so a resumed run draws exactly the masks an uninterrupted one would have.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from autext_jax.model import MultiTaskModel
from autext_jax.scores import bce_with_logits
from autext_jax.train import sharding as shd

# What a train/eval step reads from a batch (``BatchStream`` also yields ``weight``/``index``).
BATCH_KEYS = ("input_ids", "attention_mask", "bot", "english", "bot_mask", "english_mask")
TOKEN_KEYS = ("input_ids", "attention_mask")  # (rows, length) int32; the others are (rows,) float32

Params = dict[str, jax.Array]
State = dict[str, Any]


def dropout_key(seed: int, step: int) -> np.ndarray:
    """Raw key data of the dropout key for batch ``step`` (a pure function of the seed and the step)."""
    return np.asarray(jax.random.key_data(jax.random.fold_in(jax.random.key(seed), step)))


def flat_name(path: tuple) -> str:
    return "/".join(str(p) for p in path)


@dataclass(frozen=True)
class ModelLayout:
    """Everything static about a model: how to rebuild it from flat arrays and how to shard them."""

    graphdef_train: Any
    graphdef_eval: Any
    param_paths: dict[str, tuple]
    rest_paths: dict[str, tuple]
    rest_template: dict[str, np.ndarray]  # RNG-stream state as host arrays (keys as raw key data)
    rest_is_key: frozenset[str]
    logical_axes: dict[str, tuple]
    shapes: dict[str, tuple[int, ...]]

    @property
    def names(self) -> list[str]:
        return list(self.param_paths)


def describe_model(model: MultiTaskModel) -> tuple[ModelLayout, dict[str, Any]]:
    """``(layout, params)``: the static layout and the model's parameter values (or shape structs)."""
    model.eval()
    graphdef_eval = nnx.graphdef(model)
    model.train()
    graphdef_train, params, rest = nnx.split(model, nnx.Param, ...)
    param_paths, values, axes, shapes = {}, {}, {}, {}
    for path, var in nnx.to_flat_state(params):
        name = flat_name(path)
        param_paths[name] = path
        values[name] = var.get_value()
        meta = var.get_metadata()
        shapes[name] = tuple(values[name].shape)
        axes[name] = tuple(meta.get("logical_axes", (None,) * len(shapes[name])))
    rest_paths, template, is_key = {}, {}, set()
    for path, var in nnx.to_flat_state(rest):
        name = flat_name(path)
        rest_paths[name] = path
        value = var.get_value()
        if jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
            is_key.add(name)
            value = jax.eval_shape(jax.random.key_data, value)
        # The values never matter: every step reseeds the dropout streams. Shapes and dtypes do.
        template[name] = np.zeros(value.shape, value.dtype)
    layout = ModelLayout(
        graphdef_train, graphdef_eval, param_paths, rest_paths, template, frozenset(is_key), axes, shapes
    )
    return layout, values


def merge_model(layout: ModelLayout, params: Mapping[str, Any], *, train: bool) -> MultiTaskModel:
    """Rebuild the NNX module from flat parameters (inside or outside ``jit``)."""
    state = nnx.from_flat_state({layout.param_paths[n]: v for n, v in params.items()})
    rest = {}
    for name, value in layout.rest_template.items():
        value = jnp.asarray(value)
        rest[layout.rest_paths[name]] = (
            jax.random.wrap_key_data(value) if name in layout.rest_is_key else value
        )
    graphdef = layout.graphdef_train if train else layout.graphdef_eval
    return nnx.merge(graphdef, state, nnx.from_flat_state(rest))


def masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def multitask_loss(
    logits: Mapping[str, jax.Array], batch: Mapping[str, jax.Array], lang_loss_weight: float
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``BCE(bot) + λ·BCE(english)``, each averaged over the rows that carry that label."""
    bot = masked_mean(bce_with_logits(logits["bot"], batch["bot"]), batch["bot_mask"])
    english = masked_mean(bce_with_logits(logits["english"], batch["english"]), batch["english_mask"])
    return bot + lang_loss_weight * english, {"bot_loss": bot, "english_loss": english}


def _place(value: Any, sharding: NamedSharding) -> jax.Array:
    """Host (or single-device) data → a global array in ``sharding``; works across processes."""
    host = np.asarray(jax.device_get(value))
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


class TrainSteps:
    """Jitted, sharded ``train_step``/``eval_step`` for one model layout, optimizer and mesh."""

    def __init__(
        self,
        layout: ModelLayout,
        optimizer: optax.GradientTransformation,
        mesh: Mesh,
        *,
        lang_loss_weight: float = 1.0,
    ):
        self.layout, self.optimizer, self.mesh = layout, optimizer, mesh
        self.lang_loss_weight = float(lang_loss_weight)
        self.param_shardings = shd.tree_shardings(layout.shapes, layout.logical_axes, mesh)
        self.replicated = shd.replicated(mesh)
        self.batch_shardings = {k: shd.batch_sharding(mesh) for k in BATCH_KEYS}
        self.abstract_opt = jax.eval_shape(optimizer.init, self._abstract_params())
        # Leaves that mirror a parameter (moments, accumulators) take its sharding; the rest (counts) is
        # replicated. Optax knows which is which; names and shapes would only guess.
        opt_shardings = optax.tree_map_params(
            optimizer,
            lambda _, sharding: sharding,
            self.abstract_opt,
            self.param_shardings,
            transform_non_params=lambda _: self.replicated,
        )
        self.state_shardings = {"params": self.param_shardings, "opt_state": opt_shardings}
        self.train_step = jax.jit(
            self._train_step,
            in_shardings=(self.state_shardings, self.batch_shardings, self.replicated),
            out_shardings=(self.state_shardings, self.replicated),
            donate_argnums=(0,),
        )
        self.eval_step = jax.jit(
            self._eval_step,
            in_shardings=(self.param_shardings, self.batch_shardings),
            out_shardings=shd.batch_sharding(mesh),
        )

    def _abstract_params(self) -> dict[str, jax.ShapeDtypeStruct]:
        """Parameters are float32 whatever the compute dtype (bf16 compute casts them per op)."""
        return {
            n: jax.ShapeDtypeStruct(s, jnp.float32, sharding=self.param_shardings[n])
            for n, s in self.layout.shapes.items()
        }

    # ---- state ---------------------------------------------------------------------------------

    def init_params(self, cfg, *, seed: int, dtype=None) -> Params:
        """Random parameters created directly in their shardings (no host copy)."""
        from autext_jax.model import create_model

        def build():
            _, params, _ = nnx.split(create_model(cfg, seed=seed, dtype=dtype), nnx.Param, ...)
            return {flat_name(p): v.get_value() for p, v in nnx.to_flat_state(params)}

        return jax.jit(build, out_shardings=self.param_shardings)()

    def place_params(self, params: Mapping[str, Any]) -> Params:
        """Loaded parameter values → global arrays in their shardings."""
        missing = sorted(set(self.layout.shapes) - set(params))
        if missing:
            raise ValueError(f"parameters missing: {missing[:5]}")
        return {
            n: _place(np.asarray(jax.device_get(params[n]), np.float32), self.param_shardings[n])
            for n in self.layout.shapes
        }

    def init_state(self, params: Params) -> State:
        """Parameters with a fresh optimizer state (sharded like the parameters)."""
        opt_state = jax.jit(self.optimizer.init, out_shardings=self.state_shardings["opt_state"])(params)
        return {"params": params, "opt_state": opt_state}

    def abstract_state(self) -> State:
        """Shapes, dtypes and shardings of the state: the target for restoring a checkpoint."""
        opt = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
            self.abstract_opt,
            self.state_shardings["opt_state"],
        )
        return {"params": self._abstract_params(), "opt_state": opt}

    def dropout_key(self, seed: int, step: int) -> jax.Array:
        """The replicated dropout key argument of ``train_step`` for batch ``step``."""
        return _place(dropout_key(seed, step), self.replicated)

    def abstract_dropout_key(self) -> jax.ShapeDtypeStruct:
        """The dropout key argument's shape, dtype and sharding: to lower ``train_step`` (``aot``)."""
        data = dropout_key(0, 0)  # a few bytes on the host; only its shape and dtype are kept
        return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=self.replicated)

    def abstract_batch(self, rows: int, length: int) -> dict[str, jax.ShapeDtypeStruct]:
        """A global batch's shapes as ``BatchStream`` yields it: to lower the steps without data (``aot``)."""
        return {
            k: jax.ShapeDtypeStruct(
                (rows, length) if k in TOKEN_KEYS else (rows,),
                jnp.int32 if k in TOKEN_KEYS else jnp.float32,
                sharding=self.batch_shardings[k],
            )
            for k in BATCH_KEYS
        }

    def global_batch(self, local: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows of a ``BatchStream`` batch → the global, batch-sharded step input."""
        return shd.global_batch({k: local[k] for k in BATCH_KEYS}, self.mesh)

    # ---- steps ---------------------------------------------------------------------------------

    def _train_step(
        self, state: State, batch: Mapping[str, jax.Array], key_data: jax.Array
    ) -> tuple[State, dict[str, jax.Array]]:
        def loss_fn(params: Params):
            model = merge_model(self.layout, params, train=True)
            nnx.reseed(model, dropout=jax.random.wrap_key_data(key_data))
            logits = model(batch["input_ids"], batch["attention_mask"])
            return multitask_loss(logits, batch, self.lang_loss_weight)

        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = self.optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {
            "loss": loss,
            **parts,
            "grad_norm": optax.tree.norm(grads),
            "tokens": jnp.sum(batch["attention_mask"]),
        }
        return {"params": params, "opt_state": opt_state}, metrics

    def _eval_step(self, params: Params, batch: Mapping[str, jax.Array]) -> jax.Array:
        model = merge_model(self.layout, params, train=False)
        logits = model(batch["input_ids"], batch["attention_mask"])
        return jnp.stack([logits["bot"], logits["english"]], axis=-1)

    def eval_logits(self, params: Params, local: Mapping[str, np.ndarray]) -> np.ndarray:
        """``(global_batch, 2)`` host array of [bot, english] logits for one evaluation batch."""
        out = self.eval_step(params, self.global_batch(local))
        return np.asarray(multihost_utils.process_allgather(out, tiled=True))

    def eval_outputs(self, params: Params, local: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """``(logits, index)`` of one evaluation batch for every process's rows, on every host."""
        index = local["index"]
        if jax.process_count() > 1:
            index = np.asarray(multihost_utils.process_allgather(index, tiled=True))
        return self.eval_logits(params, local), index


def host_params(params: Params) -> dict[str, np.ndarray]:
    """Full parameter values on this host (gathers shards from every process)."""
    gathered = multihost_utils.process_allgather(params, tiled=True)
    return {n: np.asarray(v) for n, v in gathered.items()}
