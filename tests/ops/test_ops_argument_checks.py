"""Bad arguments to the ops raise a mambakit error naming the argument, what was expected and what was given.

Each case builds valid inputs, breaks one thing, and checks the error class and the words of its message.
"""

from __future__ import annotations

import pytest
import torch
from scan_inputs import random_scan_inputs

from mambakit.errors import ConfigError, DeviceError, DTypeError, MambakitError, ShapeError
from mambakit.ops import (
    causal_conv1d_ref,
    causal_conv1d_update,
    selective_scan,
    selective_scan_ref,
    selective_state_update,
)

BATCH, DIM, N, L = 2, 4, 3, 5


def scan_args(complex_A: bool = False, layout: str = "shared", dtype=torch.float32) -> dict:
    kwargs = random_scan_inputs(
        BATCH, DIM, N, L, b_layout=layout, c_layout=layout, complex_A=complex_A, groups=2
    )
    return {k: (v.to(dtype) if not v.is_complex() else v.to(torch.complex64)) for k, v in kwargs.items()}


def replaced(**changes) -> dict:
    """Valid float32 scan arguments (real A, shared B/C) with some replaced."""
    args = scan_args()
    args.update(changes)
    return args


def _raises(fn, error: type[Exception], *fragments: str) -> None:
    with pytest.raises(error) as info:
        fn()
    assert isinstance(info.value, MambakitError)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# ---- selective_scan_ref / selective_scan ------------------------------------------------------------

SCAN_CASES = {
    "u wrong rank": (
        replaced(u=torch.randn(BATCH, DIM)),
        ShapeError,
        ["u:", "expected 3 dimensions", "got 2"],
    ),
    "delta wrong length": (
        replaced(delta=torch.randn(BATCH, DIM, L + 1)),
        ShapeError,
        ["delta:", f"({BATCH}, {DIM}, {L})", f"got ({BATCH}, {DIM}, {L + 1})"],
    ),
    "delta wrong rank": (
        replaced(delta=torch.randn(BATCH, DIM, L, 1)),
        ShapeError,
        ["delta:", "expected 3 dimensions", "got 4"],
    ),
    "A wrong dim": (
        replaced(A=-torch.rand(DIM + 1, N)),
        ShapeError,
        ["A:", f"dim={DIM}", f"got ({DIM + 1}, {N})"],
    ),
    "A wrong rank": (replaced(A=-torch.rand(DIM)), ShapeError, ["A:", "expected 2 dimensions", "got 1"]),
    "B wrong length": (
        replaced(B=torch.randn(BATCH, N, L - 1)),
        ShapeError,
        ["B:", f"({BATCH}, {N}, {L})", f"got ({BATCH}, {N}, {L - 1})"],
    ),
    "C wrong state size": (
        replaced(C=torch.randn(BATCH, N + 1, L)),
        ShapeError,
        ["C:", f"({BATCH}, {N}, {L})", f"got ({BATCH}, {N + 1}, {L})"],
    ),
    "B fixed wrong shape": (
        replaced(B=torch.randn(DIM, N + 2)),
        ShapeError,
        ["B:", f"({DIM}, {N})", f"got ({DIM}, {N + 2})"],
    ),
    "B rank 5": (replaced(B=torch.randn(BATCH, 1, 1, N, L)), ShapeError, ["B:", "2 or 3 or 4", "got 5"]),
    "groups do not divide dim": (
        replaced(B=torch.randn(BATCH, 3, N, L)),
        ShapeError,
        ["B:", "divide", f"dim={DIM}", "groups=3"],
    ),
    "C groups do not divide dim": (
        replaced(C=torch.randn(BATCH, 3, N, L)),
        ShapeError,
        ["C:", "divide", f"dim={DIM}", "groups=3"],
    ),
    "D wrong size": (
        replaced(D=torch.randn(DIM + 1)),
        ShapeError,
        ["D:", f"expected shape ({DIM}", f"got ({DIM + 1},)"],
    ),
    "z wrong length": (
        replaced(z=torch.randn(BATCH, DIM, L + 2)),
        ShapeError,
        ["z:", f"({BATCH}, {DIM}, {L})", f"got ({BATCH}, {DIM}, {L + 2})"],
    ),
    "delta_bias wrong rank": (
        replaced(delta_bias=torch.randn(DIM, 1)),
        ShapeError,
        ["delta_bias:", "expected 1 dimensions", "got 2"],
    ),
    "integer u": (
        replaced(u=torch.ones(BATCH, DIM, L, dtype=torch.int64)),
        DTypeError,
        ["u:", "floating-point", "torch.int64"],
    ),
    "integer A": (
        replaced(A=-torch.ones(DIM, N, dtype=torch.int32)),
        DTypeError,
        ["A:", "floating-point", "torch.int32"],
    ),
    "bool z": (
        replaced(z=torch.ones(BATCH, DIM, L, dtype=torch.bool)),
        DTypeError,
        ["z:", "floating-point", "torch.bool"],
    ),
    "u not a tensor": (replaced(u=[[[1.0]]]), DTypeError, ["u:", "torch.Tensor", "list"]),
    "mixed dtypes u/delta": (
        replaced(delta=torch.randn(BATCH, DIM, L, dtype=torch.float64)),
        DTypeError,
        ["u: torch.float32", "delta: torch.float64", "one dtype"],
    ),
    "mixed dtypes u/B": (
        replaced(B=torch.randn(BATCH, N, L, dtype=torch.float64)),
        DTypeError,
        ["u: torch.float32", "B: torch.float64"],
    ),
    "complex B with real A": (
        replaced(B=torch.randn(BATCH, N, L, dtype=torch.complex64)),
        DTypeError,
        ["B:", "real", "torch.complex64"],
    ),
    "complex fixed C with real A": (
        replaced(C=torch.randn(DIM, N, dtype=torch.complex64)),
        DTypeError,
        ["C:", "real", "torch.complex64"],
    ),
    "complex D": (
        replaced(D=torch.randn(DIM, dtype=torch.complex64)),
        DTypeError,
        ["D:", "real", "torch.complex64"],
    ),
}


def _complex_case(**changes) -> dict:
    args = scan_args(complex_A=True)
    args.update(changes)
    return args


COMPLEX_SCAN_CASES = {
    "complex A, B not interleaved": (
        _complex_case(B=torch.randn(BATCH, N, L)),
        ShapeError,
        ["B:", f"({BATCH}, {N}, {2 * L})", f"got ({BATCH}, {N}, {L})", "doubled"],
    ),
    "complex A, complex variable B": (
        _complex_case(C=torch.randn(BATCH, N, L, dtype=torch.complex64)),
        DTypeError,
        ["C:", "real", "interleaved", "torch.complex64"],
    ),
    "complex A, real fixed B": (
        _complex_case(B=torch.randn(DIM, N)),
        DTypeError,
        ["B:", "complex", "torch.float32"],
    ),
}


@pytest.mark.parametrize("fn", [selective_scan_ref, selective_scan], ids=["ref", "dispatch"])
@pytest.mark.parametrize("case", list(SCAN_CASES) + list(COMPLEX_SCAN_CASES))
def test_scan_bad_input(case, fn):
    args, error, fragments = {**SCAN_CASES, **COMPLEX_SCAN_CASES}[case]
    _raises(lambda: fn(**args), error, *fragments)


@pytest.mark.parametrize("name", ["delta", "A", "B", "C", "D", "z", "delta_bias"])
def test_scan_tensors_on_different_devices(name):
    # 'meta' stands in for a second device. Everything else is valid, so reaching any computation would fail
    # with a torch RuntimeError instead: the DeviceError proves the check comes first.
    args = scan_args(layout="grouped")
    args[name] = args[name].to("meta")
    _raises(
        lambda: selective_scan_ref(**args, delta_softplus=True), DeviceError, f"{name} on meta", "u on cpu"
    )


def test_scan_unknown_backend():
    _raises(
        lambda: selective_scan(**scan_args(), backend="no-such-backend"),
        ConfigError,
        "backend:",
        "'no-such-backend'",
        "'auto'",
        "'ref'",
    )


def test_bad_input_errors_are_builtin_classes_too():
    # Callers catching ValueError / TypeError keep working.
    with pytest.raises(ValueError):
        selective_scan_ref(**replaced(u=torch.randn(BATCH, DIM)))
    with pytest.raises(TypeError):
        selective_scan_ref(**replaced(u=torch.ones(BATCH, DIM, L, dtype=torch.int64)))


# ---- selective_state_update ------------------------------------------------------------


def step_args(complex_A: bool = False, grouped: bool = False) -> dict:
    cdtype = torch.complex64
    A = -torch.rand(DIM, N) - 0.5
    bc_shape = (BATCH, 2, N) if grouped else (BATCH, N)
    return dict(
        state=torch.zeros(BATCH, DIM, N, dtype=cdtype if complex_A else torch.float32),
        x=torch.randn(BATCH, DIM),
        dt=torch.rand(BATCH, DIM),
        A=torch.complex(A, torch.randn(DIM, N)) if complex_A else A,
        B=torch.randn(bc_shape, dtype=cdtype if complex_A else torch.float32),
        C=torch.randn(bc_shape, dtype=cdtype if complex_A else torch.float32),
        D=torch.randn(DIM),
        z=torch.randn(BATCH, DIM),
        dt_bias=torch.randn(DIM),
        dt_softplus=True,
    )


def step_replaced(**changes) -> dict:
    args = step_args()
    args.update(changes)
    return args


STEP_CASES = {
    "x wrong rank": (
        step_replaced(x=torch.randn(BATCH, DIM, 1)),
        ShapeError,
        ["x:", "expected 2 dimensions", "got 3"],
    ),
    "dt wrong size": (
        step_replaced(dt=torch.rand(BATCH, DIM + 1)),
        ShapeError,
        ["dt:", f"({BATCH}, {DIM})", f"got ({BATCH}, {DIM + 1})"],
    ),
    "state wrong shape": (
        step_replaced(state=torch.zeros(BATCH, DIM, N + 1)),
        ShapeError,
        ["state:", f"({BATCH}, {DIM}, {N})", f"got ({BATCH}, {DIM}, {N + 1})"],
    ),
    "state wrong rank": (
        step_replaced(state=torch.zeros(BATCH, DIM)),
        ShapeError,
        ["state:", "expected 3 or 4 dimensions", "got 2"],
    ),
    "A wrong dim": (
        step_replaced(A=-torch.rand(DIM - 1, N)),
        ShapeError,
        ["A:", f"dim={DIM}", f"({DIM - 1}, {N})"],
    ),
    "B wrong state size": (
        step_replaced(B=torch.randn(BATCH, N + 1)),
        ShapeError,
        ["B:", f"({BATCH}, {N})", f"got ({BATCH}, {N + 1})"],
    ),
    "C groups do not divide dim": (
        step_replaced(C=torch.randn(BATCH, 3, N)),
        ShapeError,
        ["C:", "divide", f"dim={DIM}", "groups=3"],
    ),
    "D wrong size": (
        step_replaced(D=torch.randn(DIM + 1)),
        ShapeError,
        ["D:", f"expected shape ({DIM}", f"got ({DIM + 1},)"],
    ),
    "z wrong size": (
        step_replaced(z=torch.randn(BATCH + 1, DIM)),
        ShapeError,
        ["z:", f"({BATCH}, {DIM})", f"({BATCH + 1}, {DIM})"],
    ),
    "dt_bias wrong size": (
        step_replaced(dt_bias=torch.randn(DIM - 1)),
        ShapeError,
        ["dt_bias:", f"expected shape ({DIM}", f"got ({DIM - 1},)"],
    ),
    "integer x": (
        step_replaced(x=torch.ones(BATCH, DIM, dtype=torch.int64)),
        DTypeError,
        ["x:", "floating-point", "torch.int64"],
    ),
    "integer state": (
        step_replaced(state=torch.zeros(BATCH, DIM, N, dtype=torch.int32)),
        DTypeError,
        ["state:", "floating-point", "torch.int32"],
    ),
    "mixed dtypes x/dt": (
        step_replaced(dt=torch.rand(BATCH, DIM, dtype=torch.float64)),
        DTypeError,
        ["x: torch.float32", "dt: torch.float64"],
    ),
    "mixed dtypes x/B": (
        step_replaced(B=torch.randn(BATCH, N, dtype=torch.float64)),
        DTypeError,
        ["x: torch.float32", "B: torch.float64"],
    ),
    "complex B with real A": (
        step_replaced(B=torch.randn(BATCH, N, dtype=torch.complex64)),
        DTypeError,
        ["B:", "real", "torch.complex64"],
    ),
    "real state with complex A": (
        {**step_args(complex_A=True), "state": torch.zeros(BATCH, DIM, N)},
        DTypeError,
        ["state:", "complex", "torch.float32", "torch.complex64"],
    ),
}


@pytest.mark.parametrize("case", list(STEP_CASES))
def test_state_update_bad_input(case):
    args, error, fragments = STEP_CASES[case]
    state_before = args["state"].clone() if args["state"].device.type != "meta" else None
    _raises(lambda: selective_state_update(**args), error, *fragments)
    if state_before is not None:
        assert torch.equal(args["state"], state_before)  # a rejected call leaves the state alone


@pytest.mark.parametrize("name", ["x", "dt", "A", "B", "C", "D", "z", "dt_bias"])
def test_state_update_tensors_on_different_devices(name):
    args = step_args(grouped=True)
    args[name] = args[name].to("meta")
    _raises(lambda: selective_state_update(**args), DeviceError, f"{name} on meta", "state on cpu")
    assert torch.count_nonzero(args["state"]) == 0  # nothing was written before the check


# ---- causal conv1d ------------------------------------------------------------

WIDTH = 4


def conv_args(**changes) -> dict:
    args = dict(
        x=torch.randn(BATCH, DIM, L), weight=torch.randn(DIM, WIDTH), bias=torch.randn(DIM), activation="silu"
    )
    args.update(changes)
    return args


def conv_step_args(**changes) -> dict:
    args = dict(
        x=torch.randn(BATCH, DIM),
        conv_state=torch.zeros(BATCH, DIM, WIDTH),
        weight=torch.randn(DIM, WIDTH),
        bias=torch.randn(DIM),
        activation="silu",
    )
    args.update(changes)
    return args


CONV_CASES = {
    "x wrong rank": (conv_args(x=torch.randn(DIM, L)), ShapeError, ["x:", "expected 3 dimensions", "got 2"]),
    "weight wrong dim": (
        conv_args(weight=torch.randn(DIM + 1, WIDTH)),
        ShapeError,
        ["weight:", f"({DIM}, *)", f"got ({DIM + 1}, {WIDTH})"],
    ),
    "weight 3-d (nn.Conv1d layout)": (
        conv_args(weight=torch.randn(DIM, 1, WIDTH)),
        ShapeError,
        ["weight:", "expected 2 dimensions", "got 3"],
    ),
    "weight zero width": (conv_args(weight=torch.randn(DIM, 0)), ShapeError, ["weight:", ">= 1", "got 0"]),
    "bias wrong size": (
        conv_args(bias=torch.randn(DIM + 2)),
        ShapeError,
        ["bias:", f"expected shape ({DIM}", f"got ({DIM + 2},)"],
    ),
    "unknown activation": (conv_args(activation="relu"), ConfigError, ["activation:", "'silu'", "'relu'"]),
    "integer x": (
        conv_args(x=torch.ones(BATCH, DIM, L, dtype=torch.int64)),
        DTypeError,
        ["x:", "floating-point", "torch.int64"],
    ),
    "mixed dtypes x/weight": (
        conv_args(weight=torch.randn(DIM, WIDTH, dtype=torch.float64)),
        DTypeError,
        ["x: torch.float32", "weight: torch.float64"],
    ),
    "mixed dtypes x/bias": (
        conv_args(bias=torch.randn(DIM, dtype=torch.float64)),
        DTypeError,
        ["x: torch.float32", "bias: torch.float64"],
    ),
}

CONV_STEP_CASES = {
    "conv_state wrong width": (
        conv_step_args(conv_state=torch.zeros(BATCH, DIM, WIDTH - 1)),
        ShapeError,
        ["conv_state:", f"({BATCH}, {DIM}, {WIDTH})", f"got ({BATCH}, {DIM}, {WIDTH - 1})"],
    ),
    "conv_state wrong batch": (
        conv_step_args(conv_state=torch.zeros(BATCH + 1, DIM, WIDTH)),
        ShapeError,
        ["conv_state:", f"({BATCH}, {DIM}, {WIDTH})", f"({BATCH + 1}, {DIM}, {WIDTH})"],
    ),
    "conv_state wrong rank": (
        conv_step_args(conv_state=torch.zeros(BATCH, DIM)),
        ShapeError,
        ["conv_state:", "expected 3 dimensions", "got 2"],
    ),
    "integer conv_state": (
        conv_step_args(conv_state=torch.zeros(BATCH, DIM, WIDTH, dtype=torch.int64)),
        DTypeError,
        ["conv_state:", "floating-point", "torch.int64"],
    ),
    "x wrong rank": (
        conv_step_args(x=torch.randn(BATCH, DIM, 1)),
        ShapeError,
        ["x:", "expected 2 dimensions"],
    ),
    "weight wrong dim": (
        conv_step_args(weight=torch.randn(DIM - 1, WIDTH)),
        ShapeError,
        ["weight:", f"({DIM}, *)", f"({DIM - 1}, {WIDTH})"],
    ),
    "unknown activation": (conv_step_args(activation="gelu"), ConfigError, ["activation:", "'gelu'"]),
    "mixed dtypes x/weight": (
        conv_step_args(weight=torch.randn(DIM, WIDTH, dtype=torch.float64)),
        DTypeError,
        ["x: torch.float32", "weight: torch.float64"],
    ),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv1d_bad_input(case):
    args, error, fragments = CONV_CASES[case]
    _raises(lambda: causal_conv1d_ref(**args), error, *fragments)


@pytest.mark.parametrize("case", list(CONV_STEP_CASES))
def test_conv1d_update_bad_input(case):
    args, error, fragments = CONV_STEP_CASES[case]
    state_before = args["conv_state"].clone()
    _raises(lambda: causal_conv1d_update(**args), error, *fragments)
    assert torch.equal(args["conv_state"], state_before)


@pytest.mark.parametrize("name", ["weight", "bias"])
def test_conv1d_tensors_on_different_devices(name):
    args = conv_args()
    args[name] = args[name].to("meta")
    _raises(lambda: causal_conv1d_ref(**args), DeviceError, f"{name} on meta", "x on cpu")


@pytest.mark.parametrize("name", ["x", "weight", "bias"])
def test_conv1d_update_tensors_on_different_devices(name):
    args = conv_step_args()
    args[name] = args[name].to("meta")
    _raises(lambda: causal_conv1d_update(**args), DeviceError, f"{name} on meta", "conv_state on cpu")
    assert torch.count_nonzero(args["conv_state"]) == 0  # the state was not shifted before the check
