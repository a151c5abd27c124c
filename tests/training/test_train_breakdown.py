"""benchmarks/train_throughput.py --breakdown: its matmul FLOP count and its attribution of profiled time."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

from mambakit.models import MambaConfig, MambaLMHeadModel

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "train_throughput.py"
if str(_PATH.parent) not in sys.path:   # its sibling modules import by name; last, so none shadows another
    sys.path.append(str(_PATH.parent))
_spec = importlib.util.spec_from_file_location("train_throughput", _PATH)
tt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tt)


def _profiled_step(config: MambaConfig, batch: int, length: int):
    torch.manual_seed(0)
    model = MambaLMHeadModel(config)
    tokens = torch.randint(0, config.vocab_size, (batch, length + 1))
    step = tt.train_step(model, tokens, hf=False)
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_flops=True) as prof:
        step()
    return prof.events()


def test_step_matmul_flops_match_the_profilers_count():
    config = MambaConfig(d_model=32, n_layer=2, d_state=8, vocab_size=64)
    events = _profiled_step(config, batch=2, length=24)
    counted = sum(e.flops for e in events if e.name in tt.MATMUL_OPS and e.flops)
    assert counted == tt.step_matmul_flops(config, 2, 24)


def test_attribution_finds_the_fused_kernels_and_keeps_every_microsecond():
    config = MambaConfig(d_model=32, n_layer=2, d_state=8, vocab_size=64)
    events = _profiled_step(config, batch=2, length=24)
    totals, other = tt.attribute(events)
    for cat in ("matmuls", "selective scan", "causal conv", "optimiser"):
        assert totals[cat] > 0, cat
    top = [e for e in events if e.cpu_parent is None]
    assert abs(sum(totals.values()) - sum(e.cpu_time_total for e in top)) <= 1e-6 * sum(totals.values()) + 1
    assert abs(sum(other.values()) - totals["other ops"]) < 1e-6 + 1e-9 * totals["other ops"]
