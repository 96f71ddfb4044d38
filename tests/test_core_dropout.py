"""Dropout between stacked layers, in every core, as torch.nn.LSTM has it: on each layer's output
but the last, in training mode only, on the compiled loop and the Python paths alike; validation and
warning as torch's."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from policies.cores import CORE_SPECS, gated_lstm, make_core
from policies.cores import base as core_base
from test_cores import backend  # noqa: F401  (the fixture: compiled scan, then Python scan)

P = 0.5
FAMILIES = ["lstm", "gru", "mlp", "urlstm", "urgru", "lstm:O-", "gru:CM", "stack:3"]  # each constructor and loop


def _x(T=6, B=3, D=5, seed=0):
    return torch.randn(T, B, D, generator=torch.Generator().manual_seed(seed))


def _reset(T=6, B=3):
    r = torch.zeros(T, B, dtype=torch.bool)
    r[2, 1] = r[4, 0] = True
    return r


@pytest.mark.parametrize("cls,spec", [(nn.LSTM, "lstm"), (nn.GRU, "gru")])
@pytest.mark.parametrize("T", [1, 6, 40])  # one step, a few steps, and past the fused-kernel switch
@pytest.mark.usefixtures("backend")
def test_lstm_and_gru_equal_torch_with_dropout_in_train_and_eval_mode(cls, spec, T):
    """Same weights and seed: the very same dropout masks, so the very same outputs and states."""
    torch.manual_seed(0)
    ref = cls(5, 8, 3, dropout=P)
    ours = make_core(spec, 5, 8, 3, dropout=P)
    ours.load_state_dict(ref.state_dict())
    x = _x(T)
    for train in (True, False):
        ref.train(train)
        ours.train(train)
        torch.manual_seed(7)
        y_ref, s_ref = ref(x)
        torch.manual_seed(7)
        y, s = ours(x)
        torch.testing.assert_close(y, y_ref)
        torch.testing.assert_close(tuple(s) if isinstance(s_ref, tuple) else s[0],
                                   s_ref, msg=f"final state, train={train}")
    ours.train()
    torch.manual_seed(7)
    y_a, _ = ours(x)
    torch.manual_seed(8)
    y_b, _ = ours(x)
    assert not torch.equal(y_a, y_b)  # train mode draws masks


@pytest.mark.parametrize("spec", [*CORE_SPECS, "stack:3"])
@pytest.mark.usefixtures("backend")
def test_eval_mode_is_no_dropout_and_train_mode_drops(spec):
    torch.manual_seed(0)
    plain = make_core(spec, 5, 8, 2)
    dropped = make_core(spec, 5, 8, 2, dropout=0.9)
    dropped.load_state_dict(plain.state_dict())
    x, r = _x(), _reset()
    plain.eval()
    dropped.eval()
    y0, s0 = plain(x, reset=r)
    y1, s1 = dropped(x, reset=r)
    torch.testing.assert_close(y1, y0)
    for a, b in zip(s1, s0):
        torch.testing.assert_close(a, b)
    plain.train()
    dropped.train()
    torch.manual_seed(3)
    assert not torch.allclose(dropped(x, reset=r)[0], plain(x, reset=r)[0])
    step_y, _ = dropped.step(x[0], None, r[0])  # the one-step path drops in training mode too
    dropped.eval()
    torch.testing.assert_close(dropped.step(x[0], None, r[0])[0], plain.eval().step(x[0], None, r[0])[0])


@pytest.mark.parametrize("spec", FAMILIES)
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.usefixtures("backend")
def test_dropout_acts_between_layers_only_never_after_the_last(spec, layers, monkeypatch):
    """F.dropout runs num_layers - 1 times in training mode, on [T, B, H] layer outputs, and not at
    all in eval mode; with one layer the output equals the dropout-free core's."""
    calls = []

    def spy(y, p, training):
        calls.append((tuple(y.shape), p, training))
        return F.dropout(y, p, training)

    monkeypatch.setattr(core_base, "between_layers", _wrap(core_base.between_layers, spy))
    for mod in ("gated_lstm", "gated_gru", "torch_rnn", "mlp"):
        monkeypatch.setattr(f"policies.cores.{mod}.between_layers", core_base.between_layers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        core = make_core(spec, 5, 8, layers, dropout=P)
    core.train()
    core(_x(), reset=_reset())
    assert calls == [((6, 3, 8), P, True)] * (layers - 1)
    calls.clear()
    core.eval()
    core(_x(), reset=_reset())
    assert calls == []


def _wrap(between, spy):
    def between_layers(y, k, num_layers, dropout, training):
        if dropout > 0 and training and k < num_layers - 1:
            return spy(y, dropout, training)
        return y
    return between_layers


@pytest.mark.parametrize("p", [0.25, 0.5, 0.9])
@pytest.mark.usefixtures("backend")
def test_mask_statistics_between_the_layers_of_the_grid_scan(p):
    """The next layer's input is the previous layer's output with a fraction p of its elements
    zeroed and the rest scaled by 1 / (1 - p), independently over steps, batch and units."""
    torch.manual_seed(0)
    core = make_core("urlstm", 4, 64, 2, dropout=p)
    seen = []

    def recording(x, *args):
        seen.append(x)
        return gated_lstm.lstm_fast_scan(x, *args)

    layers = [(getattr(core, f"weight_ih_l{k}"), getattr(core, f"bias_l{k}"), getattr(core, f"weight_hh_l{k}"),
               getattr(core, f"forget_bias_l{k}")) for k in range(2)]
    x = torch.randn(50, 40, 4)
    state = core.initial_state(40)
    with torch.no_grad():
        y, _, _ = gated_lstm.scan_layers(recording, x, state, layers, None, "U", "R", p, True)
        y0, _, _ = gated_lstm.scan_layers(gated_lstm.lstm_fast_scan, x, state, layers[:1], None, "U", "R")
    out0, in1 = y0, seen[1]                       # layer 0's output, layer 1's input
    zeroed = (in1 == 0) & (out0 != 0)
    n = out0.numel()                              # 128,000 elements
    assert abs(zeroed.float().mean().item() - p) < 4 * (p * (1 - p) / n) ** 0.5 + 1e-3
    kept = ~zeroed
    torch.testing.assert_close(in1[kept], out0[kept] / (1 - p))
    per_step = zeroed.float().mean((1, 2))        # masks are drawn anew at every step
    assert per_step.std() > 0 and not torch.equal(zeroed[0], zeroed[1])
    assert not (y == 0).any()                     # the top layer's output is never dropped


@pytest.mark.parametrize("spec", ["urlstm", "lstm:--", "urgru", "gru:C-"])
@pytest.mark.usefixtures("backend")
def test_grid_cores_in_train_mode_equal_their_layers_with_dropout_between(spec):
    """A 2-layer grid core == layer 0 alone, F.dropout with the same seed, layer 1 alone."""
    torch.manual_seed(0)
    core = make_core(spec, 5, 8, 2, dropout=P).train()
    one = [make_core(spec, 5 if k == 0 else 8, 8, 1) for k in range(2)]
    sd = core.state_dict()
    for k, m in enumerate(one):
        m.load_state_dict({name.replace(f"_l{k}", "_l0"): v for name, v in sd.items() if name.endswith(f"_l{k}")})
    x, r = _x(), _reset()
    torch.manual_seed(5)
    y, s = core(x, reset=r)
    torch.manual_seed(5)
    h0, s0 = one[0](x, reset=r)
    y1, s1 = one[1](F.dropout(h0, P, training=True), reset=r)
    torch.testing.assert_close(y, y1)
    for a, b0, b1 in zip(s, s0, s1):
        torch.testing.assert_close(a, torch.cat([b0, b1]))


@pytest.mark.parametrize("spec", FAMILIES)
@pytest.mark.parametrize("bad", [-0.1, 1.5, True, "0.5", "x", None, [0.5]])
def test_invalid_dropout_is_rejected_as_torch_does(spec, bad):
    with pytest.raises((ValueError, TypeError)) as torch_err:
        nn.LSTM(5, 8, 2, dropout=bad)
    with pytest.raises(torch_err.type) as ours:
        make_core(spec, 5, 8, 2, dropout=bad)
    if torch_err.type is ValueError and "dropout should be" in str(torch_err.value):
        assert str(ours.value) == str(torch_err.value)


@pytest.mark.parametrize("spec", FAMILIES)
def test_dropout_with_one_layer_warns_as_torch_does(spec):
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        nn.LSTM(5, 8, 1, dropout=0.5)
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        make_core(spec, 5, 8, 1, dropout=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_core(spec, 5, 8, 2, dropout=0.5)
        make_core(spec, 5, 8, 1, dropout=0.0)
        make_core(spec, 5, 8, 2, dropout=1)  # torch accepts p = 1 too
