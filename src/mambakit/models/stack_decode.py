"""The decoding step of a pure Mamba stack in one fused kernel call (:mod:`mambakit.ops.decode.stack_cpu`).

:meth:`MixerModel.step` asks :func:`stack_decoder` for a plan at each step. A plan exists for a backbone whose
every layer is a plain :class:`~mambakit.layers.MambaBlock` behind an RMSNorm or LayerNorm, with no shared
block, on the CPU, in float32 or float64 (in_proj and out_proj may hold bf16 or int8 weights), outside
autograd, at a batch of at most :data:`MAX_ROWS`; anything else takes the layer-by-layer path, which is the
reference the tests compare the plan with. The plan keeps numpy views of the weights and is rebuilt when a
parameter or buffer changes (its storage or its version counter), so a training step in between is seen.
"""

from __future__ import annotations

import threading
import weakref

import numpy as np
import torch
from torch import nn

from ..layers import MambaBlock, RMSNorm
from ..layers.lowp_linear import LowPrecisionLinear
from ..ops.cpu.threads import run_blocks
from ..ops.decode import stack_cpu
from ..ops.linear import cpu as linear_cpu

MAX_ROWS = linear_cpu.MAX_ROWS   # above this batch, matrix-matrix products beat row-by-row reads
MIN_BYTES_PER_WORKER = 1 << 21   # weights per step below which a second thread costs more than it saves
BLOCKS_PER_WORKER = 2
_TORCH = {np.float32: torch.float32, np.float64: torch.float64}   # the kernels' dtypes, as torch names them
_NUMPY = {torch.float32: np.float32, torch.float64: np.float64}


def _array(t: torch.Tensor | None, dtype: np.dtype) -> np.ndarray:
    """A numpy view of t (which it keeps alive), or an empty array for None."""
    return np.empty(0, dtype) if t is None else t.detach().contiguous().numpy()


def _linear(linear: nn.Module, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(weight, scales, bias) as the kernel reads them, or None for a layer it cannot read."""
    if isinstance(linear, LowPrecisionLinear):
        if dtype != np.float32:
            return None
        w, scales, bias = linear_cpu.kernel_arrays(linear.weight, linear.scales, linear.bias)
        return w, np.empty(0, np.float32) if scales is None else scales, bias
    if type(linear) is not nn.Linear or linear.weight.dtype != _TORCH[dtype]:
        return None
    return _array(linear.weight, dtype), np.empty(0, dtype), _array(linear.bias, dtype)


def _norm_kind(norm: nn.Module) -> tuple[bool, float] | None:
    """(is RMSNorm, eps) for a norm the kernel computes, else None."""
    if type(norm) is RMSNorm:
        return True, float(norm.eps)
    if type(norm) is nn.LayerNorm and norm.elementwise_affine and len(norm.normalized_shape) == 1:
        return False, float(norm.eps)
    return None


def _sources(layer: nn.Module) -> list[torch.Tensor]:
    """The tensors a layer's arrays are made from (a change to any of them invalidates the plan)."""
    return [*layer.parameters(), *layer.buffers()]


def _layer_arrays(layer: nn.Module, dtype: np.dtype) -> dict[str, np.ndarray] | None:
    mixer = layer.mixer
    if type(mixer) is not MambaBlock or not mixer.fused_decode or mixer.x_proj.bias is not None:
        return None
    in_proj, out_proj = _linear(mixer.in_proj, dtype), _linear(mixer.out_proj, dtype)
    if in_proj is None or out_proj is None:
        return None
    small = {"conv_w": mixer.conv1d.weight.squeeze(1), "conv_b": mixer.conv1d.bias,
             "x_proj_w": mixer.x_proj.weight, "dt_wT": mixer.dt_proj.weight.t().contiguous(),
             "dt_b": mixer.dt_proj.bias,
             "A": mixer._decay_rates(), "D": mixer.D, "norm_w": layer.norm.weight,
             "norm_b": getattr(layer.norm, "bias", None)}
    if any(t is not None and (t.dtype != _TORCH[dtype] or t.device.type != "cpu") for t in small.values()):
        return None
    arrays = {name: _array(t, dtype) for name, t in small.items()}
    arrays.update(in_w=in_proj[0], in_s=in_proj[1], in_b=in_proj[2], out_w=out_proj[0], out_s=out_proj[1],
                  out_b=out_proj[2])
    return arrays



_plans: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()   # backbone -> its plan (or None)
_registrations = [0]   # parameters, buffers and modules assigned anywhere since import


def _count_registration(*_args) -> None:
    _registrations[0] += 1


for _register in (nn.modules.module.register_module_parameter_registration_hook,
                  nn.modules.module.register_module_buffer_registration_hook,
                  nn.modules.module.register_module_module_registration_hook):
    _register(_count_registration)


def _tensor_key(tensors: list[torch.Tensor]) -> list[tuple[int, int]]:
    return [(t.data_ptr(), t._version) for t in tensors]


class StackPlan:
    """The per-layer weight arrays of one backbone, and its scratch arrays per batch size."""

    def __init__(self, layers: list[dict[str, np.ndarray]], rms: bool, eps: float, dtype,
                 sources: list[torch.Tensor]) -> None:
        self.layers, self.rms, self.eps, self.dtype = layers, rms, eps, dtype
        self.sources, self.sources_key = sources, _tensor_key(sources)
        self.registrations = _registrations[0]
        self.weight_bytes = sum(a.nbytes for layer in layers for a in layer.values())
        self.d_model = layers[0]["norm_w"].shape[0]
        self.d_inner = layers[0]["A"].shape[0]
        self.dbl_width = layers[0]["x_proj_w"].shape[0]
        self._lists: tuple | None = None
        self._states_key: tuple | None = None
        self._scratch: dict[int, tuple[np.ndarray, ...]] = {}
        self._state_shapes: dict[int, tuple[list[torch.Size], list[torch.Size]]] = {}
        self._lock = threading.Lock()   # the lists and scratch are the plan's own: one step at a time

    def state_shapes(self, batch: int) -> tuple[list[torch.Size], list[torch.Size]]:
        """Every layer's conv_state and ssm_state shapes at this batch size."""
        shapes = self._state_shapes.get(batch)
        if shapes is None:
            shapes = ([torch.Size((batch, *layer["conv_w"].shape)) for layer in self.layers],
                      [torch.Size((batch, *layer["A"].shape)) for layer in self.layers])
            self._state_shapes[batch] = shapes
        return shapes

    def step(self, residual: torch.Tensor, states: list[dict[str, torch.Tensor]],
             workers: int | None = None) -> torch.Tensor:
        """residual (batch, d_model) -> the residual after every layer; updates the states in place.
        ``workers``: threads (default: torch's thread count, one for a small model)."""
        with self._lock:
            return self._step(residual, states, workers)

    def _step(self, residual: torch.Tensor, states: list[dict[str, torch.Tensor]],
              workers: int | None) -> torch.Tensor:
        batch = residual.shape[0]
        states_key = tuple((s["conv_state"].data_ptr(), s["ssm_state"].data_ptr()) for s in states)
        if self._states_key != states_key:
            for layer, state in zip(self.layers, states, strict=True):
                layer["conv_state"] = state["conv_state"].numpy()
                layer["ssm_state"] = state["ssm_state"].numpy()
            self._lists, self._states_key = stack_cpu.per_layer_lists(self.layers), states_key
        if batch not in self._scratch:
            self._scratch[batch] = stack_cpu.scratch(batch, self.d_model, self.d_inner, self.dbl_width,
                                                     self.dtype)
        scratch = self._scratch[batch]
        if workers is None:
            workers = max(1, min(torch.get_num_threads(), self.weight_bytes // MIN_BYTES_PER_WORKER))
        blocks = 1 if workers == 1 else BLOCKS_PER_WORKER * workers
        residual = residual.detach().clone(memory_format=torch.contiguous_format)
        residual_np, counters = residual.numpy(), np.zeros(2, np.int64)
        lists = self._lists

        def run(_worker, _first, _end):
            stack_cpu.stack_step_worker(residual_np, *lists, self.eps, self.rms, blocks, counters, *scratch)

        run_blocks(run, workers, [(0, 1)] * workers)
        return residual


def stack_decoder(backbone: nn.Module, residual: torch.Tensor, states: list) -> StackPlan | None:
    """The plan for one decoding step of ``backbone`` from ``residual`` (batch, d_model) with these layer
    ``states``, or None where the fused step does not apply (see the module docstring). It runs before every
    token, so what it checks is cheap: the layers' kinds only when the plan is (re)built."""
    if torch.is_grad_enabled() or backbone.shared is not None or not backbone.fused_stack_decode:
        return None
    if not residual.is_cpu or residual.dim() != 2 or residual.shape[0] > MAX_ROWS:
        return None
    dtype = _NUMPY.get(residual.dtype)
    if dtype is None:
        return None
    plan = _plans.get(backbone)
    # valid while no module, parameter or buffer was assigned anywhere (so every mixer is still the
    # MambaBlock it was) and no source tensor changed (its storage, or its version counter: an in-place
    # update such as an optimiser step)
    if (plan is None or plan.dtype is not dtype or plan.registrations != _registrations[0]
            or plan.sources_key != _tensor_key(plan.sources)):
        plan = _build(backbone, dtype)
        _plans[backbone] = plan
    if plan is None:
        return None
    if residual.shape[1] != plan.d_model or len(states) != len(plan.layers):
        return None
    conv_shape, ssm_shape = plan.state_shapes(residual.shape[0])
    torch_dtype = residual.dtype
    for state, conv, ssm in zip(states, conv_shape, ssm_shape, strict=True):
        # the kernel does not check bounds: states of any other shape go to the layer-by-layer path,
        # whose checks name what is wrong
        if type(state) is not dict or len(state) != 2:
            return None
        for t, shape in ((state.get("conv_state"), conv), (state.get("ssm_state"), ssm)):
            if (not isinstance(t, torch.Tensor) or t.shape != shape or t.dtype != torch_dtype or not t.is_cpu
                    or not t.is_contiguous()):
                return None
    return plan


def _build(backbone: nn.Module, dtype) -> StackPlan | None:
    if not all(type(layer.mixer) is MambaBlock for layer in backbone.layers):
        return None
    kinds = {_norm_kind(layer.norm) for layer in backbone.layers}
    if len(kinds) != 1 or None in kinds or len(backbone.layers) == 0:
        return None
    layers = [_layer_arrays(layer, dtype) for layer in backbone.layers]
    if any(layer is None for layer in layers):
        return None
    rms, eps = kinds.pop()
    sources = [t for layer in backbone.layers for t in _sources(layer)]
    return StackPlan(layers, rms, eps, dtype, sources)


def head_logits(head: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """head(hidden); a float32 head read row by row on several threads where a few rows of a decoding step
    on the CPU, outside autograd, would otherwise be a matrix-vector product at half the memory bandwidth."""
    if (type(head) is nn.Linear and not torch.is_grad_enabled() and hidden.dtype == torch.float32
            and head.weight.dtype == torch.float32 and linear_cpu.kernel_applies(hidden, head.weight)):
        return linear_cpu.run_kernel(hidden, *linear_cpu.kernel_arrays(head.weight, None, head.bias))
    return head(hidden)
