"""The layer contract: bnrun.nn.BatchNorm1d/2d accept every argument torch 2.14's accept and
answer degenerate input the way torch does (or with a clear ValueError), on the eager and the
fused path, checked in a subprocess where a crash (a signal) is possible; double backward either
works or raises, never silently wrong."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap

import pytest
import torch

import bnrun.nn as bnn


@pytest.mark.parametrize("ours,theirs", [(bnn.BatchNorm1d, torch.nn.BatchNorm1d), (bnn.BatchNorm2d, torch.nn.BatchNorm2d)])
def test_constructor_accepts_torchs_full_signature(ours, theirs):
    mine = inspect.signature(ours.__init__).parameters
    for name, param in inspect.signature(theirs.__init__).parameters.items():
        assert name in mine, f"missing argument {name}"
        assert (mine[name].kind, mine[name].default) == (param.kind, param.default), name
    extra = [name for name in mine if name not in inspect.signature(theirs.__init__).parameters]
    assert extra == ["fused", "relu", "ghost_batch"] and all(mine[n].kind is inspect.Parameter.KEYWORD_ONLY for n in extra)


@pytest.mark.parametrize("fused", [False, True])
def test_bias_false_matches_torch(fused):
    torch.manual_seed(0)
    x = torch.randn(16, 5, 3, 3, requires_grad=True)
    reference = torch.nn.BatchNorm2d(5, bias=False)
    layer = bnn.BatchNorm2d(5, bias=False, fused=fused)
    assert layer.bias is None and list(layer.state_dict()) == list(reference.state_dict())
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
    layer.load_state_dict(reference.state_dict())
    expected, got = reference(x), layer(x)
    torch.testing.assert_close(got, expected)
    grad = torch.randn_like(expected)
    (want,) = torch.autograd.grad(expected, x, grad)
    (have,) = torch.autograd.grad(got, x, grad)
    torch.testing.assert_close(have, want)
    torch.testing.assert_close(layer.running_var, reference.running_var)


DEGENERATE = textwrap.dedent("""
    import json, torch
    import bnrun.nn as bnn

    def outcome(make, shape, training):
        layer = make()
        layer.train(training)
        layer.running_mean.fill_(0.5); layer.running_var.fill_(2.0)
        try:
            y = layer(torch.randn(*shape))
        except Exception as error:
            return {"error": type(error).__name__, "message": str(error)}
        return {"shape": list(y.shape), "finite": bool(torch.isfinite(y).all()),
                "running": [layer.running_mean.tolist(), layer.running_var.tolist()],
                "tracked": int(layer.num_batches_tracked)}

    cases = {"empty 4d": (4, (0, 3, 4, 4)), "empty 2d": (2, (0, 3)), "zero channels": (4, (4, 0, 2, 2)),
             "one value 2d": (2, (1, 3)), "one value 4d": (4, (1, 3, 1, 1))}
    results = {}
    for name, (rank, shape) in cases.items():
        channels = shape[1]
        for training in (True, False):
            torch_make = (lambda: torch.nn.BatchNorm2d(channels)) if rank == 4 else (lambda: torch.nn.BatchNorm1d(channels))
            ours_make = (lambda: bnn.BatchNorm2d(channels, fused=FUSED)) if rank == 4 else (lambda: bnn.BatchNorm1d(channels, fused=FUSED))
            results[f"{name} {'train' if training else 'eval'}"] = {"torch": outcome(torch_make, shape, training),
                                                                    "bnrun": outcome(ours_make, shape, training)}
    print(json.dumps(results))
""")


@pytest.mark.slow  # a fresh process per path
@pytest.mark.parametrize("fused", [False, True], ids=["eager", "fused"])
def test_degenerate_input_as_torch_or_a_clear_error(fused):
    result = subprocess.run([sys.executable, "-c", DEGENERATE.replace("FUSED", str(fused))], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"the process died (signal {-result.returncode})" if result.returncode < 0 else result.stderr
    for case, answers in json.loads(result.stdout.strip().splitlines()[-1]).items():
        theirs, ours = answers["torch"], answers["bnrun"]
        if "error" in theirs and theirs["error"] != "ValueError":  # torch fails obscurely: we say why
            assert ours["error"] == "ValueError" and "at least one channel" in ours["message"], (case, ours)
        elif "error" in theirs:
            assert ours["error"] == "ValueError", (case, ours)
        else:
            assert ours == theirs, (case, ours, theirs)  # shape, finite output, running statistics untouched, counter


def test_double_backward_raises_on_both_paths():
    x = torch.randn(8, 3, requires_grad=True)
    for fused in (False, True):
        layer = bnn.BatchNorm1d(3, fused=fused)
        y = layer(x)
        with pytest.raises(RuntimeError, match="differentiate twice|double backward"):
            (gx,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
            gx.sum().backward()
