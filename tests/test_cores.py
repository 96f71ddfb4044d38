"""Memory cores: fast path == reference (values and gradients, float64), torch equivalence,
reset convention, step == sequence, initialisation and argument checks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from policies.cores import CORE_SPECS, URLSTM, library, make_core
from policies.cores import gates as G

STACKS = ["stack:1", "stack:3", "stack:9"]  # no state, a window shorter and one longer than T = 7
ALL = [*CORE_SPECS, *STACKS]
RECURRENT = [s for s in ALL if s != "mlp"]  # every core with a fast path and a reference
GRID = [s for s in CORE_SPECS if ":" in s]


def _inputs(T=7, B=3, D=5, reset=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, D, generator=g, dtype=torch.float64)
    r = torch.zeros(T, B, dtype=torch.bool)
    if reset:
        for t, b in ((3, 0), (5, 2), (0, 1)):
            if t < T and b < B:
                r[t, b] = True
    return x, r


def _pair(spec, D=5, H=4, L=1, **kw):
    torch.manual_seed(1)
    ref = make_core(spec, D, H, L, impl="reference", **kw).double()
    fast = make_core(spec, D, H, L, impl="fast", **kw).double()
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _grads(core, x, state, reset):
    x = x.clone().requires_grad_()
    state = tuple(s.clone().requires_grad_() for s in state)
    y, final = core(x, state, reset)
    g = torch.Generator().manual_seed(3)
    loss = (y * torch.randn(y.shape, generator=g, dtype=y.dtype)).sum()
    for s in final:  # the final state is part of the loss, so its gradient path is checked too
        loss = loss + (s * torch.randn(s.shape, generator=g, dtype=s.dtype)).sum()
    leaves = [x, *state, *core.parameters()]
    grads = torch.autograd.grad(loss, [t for t in leaves if t.requires_grad])
    return y.detach(), [s.detach() for s in final], grads


def _assert_same(ref, fast, x, reset):
    """Outputs, final state and every gradient of ``fast`` equal ``ref``'s, from a random initial state."""
    state = tuple(torch.randn_like(s) for s in ref.initial_state(x.shape[1], dtype=torch.float64))
    y0, s0, g0 = _grads(ref, x, state, reset)
    y1, s1, g1 = _grads(fast, x, state, reset)
    torch.testing.assert_close(y1, y0)
    for a, b in zip(s1, s0):
        torch.testing.assert_close(a, b)
    assert len(g0) == len(g1)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b)


@pytest.fixture(params=["compiled", "python"])
def backend(request, monkeypatch):
    """Run a test with the compiled scan and again with the Python scan."""
    if request.param == "compiled" and not library.extension():
        pytest.skip("the compiled scan did not build here")
    monkeypatch.setitem(library._STATE, "ok", request.param == "compiled")
    return request.param


def test_compiled_scan_builds():
    """The compiled loop is the default fast path wherever a C++ compiler exists (as in CI)."""
    assert library.extension()


@pytest.mark.parametrize("spec", RECURRENT)
@pytest.mark.parametrize("with_reset", [False, True])
def test_fast_equals_reference(spec, with_reset, backend):
    ref, fast = _pair(spec, L=2)
    x, r = _inputs(reset=with_reset)
    _assert_same(ref, fast, x, r)


@pytest.mark.parametrize("spec", ["lstm", "urlstm", "lstm:O-", "lstm:CM", "urgru", "gru:OR", "gru:--"])
def test_compiled_backward_in_chunks_equals_reference(spec):
    """64 rows per step put 40 steps in two chunks of the compiled backward pass (2048 rows each),
    the first one done partial: outputs, final state and every gradient as the reference's. Resets
    at one step in five per sequence also send ``lstm`` through the loop (torch.nn.LSTM's cell)."""
    if not library.extension():
        pytest.skip("the compiled scan did not build here")
    ref, fast = _pair(spec, D=3, L=2)
    x, _ = _inputs(T=40, B=64, D=3)
    _assert_same(ref, fast, x, torch.rand(40, 64, generator=torch.Generator().manual_seed(5)) < 0.2)


@pytest.mark.parametrize("spec", ["urlstm", "lstm:OM", "gru:UR", "gru:O-", "stack:3"])
def test_fast_scan_gradcheck(spec, backend):
    _, fast = _pair(spec, D=3, H=3)
    x, r = _inputs(T=6, B=3, D=3)
    h = tuple(torch.randn_like(s).requires_grad_() for s in fast.initial_state(3, dtype=torch.float64))

    def f(x, *state):
        y, final = fast(x, state, r)
        return (y, *final)

    assert torch.autograd.gradcheck(f, (x.requires_grad_(), *h))


@pytest.mark.parametrize("spec", GRID + ["lstm"])
def test_float32_fast_close_to_reference(spec, backend):
    """float32 uses a polynomial exp in the compiled loop: still within float32 rounding of the loop."""
    ref, fast = _pair(spec, D=5, H=16, L=2)
    ref, fast = ref.float(), fast.float()
    x, r = _inputs(T=20, B=3)
    x = 3 * x.float()
    y0, s0, g0 = _grads(ref, x, tuple(s.float() for s in ref.initial_state(3)), r)
    y1, s1, g1 = _grads(fast, x, tuple(s.float() for s in ref.initial_state(3)), r)
    torch.testing.assert_close(y1, y0, rtol=1e-4, atol=1e-5)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("kind,torch_cls", [("lstm", nn.LSTM), ("gru", nn.GRU)])
@pytest.mark.parametrize("impl", ["fast", "reference"])
@pytest.mark.parametrize("T", [1, 7, 40])  # lstm on CPU: compiled loop for T < 12, torch's kernel above
def test_matches_torch(kind, torch_cls, impl, T):
    torch.manual_seed(0)
    ours = make_core(kind, 5, 6, 2, impl=impl).double()
    theirs = torch_cls(5, 6, 2).double()
    assert set(ours.state_dict()) == set(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    x, _ = _inputs(T=T, B=4)
    state = tuple(torch.randn_like(s) for s in ours.initial_state(4, dtype=torch.float64))
    y0, s0 = theirs(x, state if kind == "lstm" else state[0])
    y1, s1 = ours(x, state)
    torch.testing.assert_close(y1, y0)
    torch.testing.assert_close(s1[0], s0[0] if kind == "lstm" else s0)


@pytest.mark.parametrize("spec", ALL)
def test_resets_equal_separate_episodes(spec):
    """A batch element whose episode restarts at t=3 equals two independent runs from zeros."""
    torch.manual_seed(0)
    core = make_core(spec, 5, 4).double()
    x, _ = _inputs(T=7, B=2)
    reset = torch.zeros(7, 2, dtype=torch.bool)
    reset[3, 0] = True
    state = tuple(torch.randn_like(s) for s in core.initial_state(2, dtype=torch.float64))
    y, final = core(x, state, reset)
    y_a, _ = core(x[:3, :1], tuple(s[:, :1] for s in state))
    y_b, fin_b = core(x[3:, :1])
    torch.testing.assert_close(y[:, :1], torch.cat([y_a, y_b]))
    for a, b in zip(final, fin_b):
        torch.testing.assert_close(a[:, :1], b)
    y_c, _ = core(x[:, 1:], tuple(s[:, 1:] for s in state))  # the other element is untouched
    torch.testing.assert_close(y[:, 1:], y_c)


@pytest.mark.parametrize("spec", ALL)
def test_step_equals_sequence(spec):
    torch.manual_seed(0)
    core = make_core(spec, 5, 4, num_layers=2).double()
    x, r = _inputs()
    y, final = core(x, None, r)
    state = core.initial_state(3, dtype=torch.float64)
    steps = []
    for t in range(x.shape[0]):
        out, state = core.step(x[t], state, r[t])
        steps.append(out)
    torch.testing.assert_close(torch.stack(steps), y)
    for a, b in zip(state, final):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("spec,impl", [(s, i) for s in ("lstm", "gru", "urlstm", "urgru", "stack:3")
                                       for i in ("fast", "reference")] + [("mlp", None)])
def test_batch_first(spec, impl):
    torch.manual_seed(0)
    options = {} if impl is None else {"impl": impl}
    core = make_core(spec, 5, 4, **options)
    bf = make_core(spec, 5, 4, batch_first=True, **options)
    bf.load_state_dict(core.state_dict())
    x = torch.randn(6, 3, 5)
    r = torch.zeros(6, 3, dtype=torch.bool)
    r[2, 1] = True
    y, s = core(x, reset=r)
    y_bf, s_bf = bf(x.transpose(0, 1), reset=r.t())
    torch.testing.assert_close(y_bf, y.transpose(0, 1))
    for a, b in zip(s, s_bf):
        torch.testing.assert_close(a, b)


def test_urlstm_is_a_drop_in_for_nn_lstm():
    lstm = URLSTM(8, 16, num_layers=2, batch_first=True)
    x = torch.randn(4, 10, 8)
    h0 = torch.zeros(2, 4, 16)
    out, (h_n, c_n) = lstm(x, (h0, h0))
    assert out.shape == (4, 10, 16) and h_n.shape == c_n.shape == (2, 4, 16)
    torch.testing.assert_close(out[:, -1], h_n[-1])
    assert [n for n, _ in lstm.named_parameters()] == [
        f"{p}_l{k}" for k in range(2) for p in ("weight_ih", "weight_hh", "bias", "forget_bias")]
    assert lstm.weight_ih_l0.shape == (64, 8) and lstm.weight_hh_l1.shape == (64, 16)
    assert lstm.forget_bias_l1.shape == (16,) and torch.all(lstm.bias_l0 == 0)


def test_gru_bare_tensor_state_like_nn_gru():
    core = make_core("urgru", 3, 4)
    y, h = core(torch.randn(5, 2, 3), torch.zeros(1, 2, 4))
    assert isinstance(h, torch.Tensor) and h.shape == (1, 2, 4)


def test_ugi_is_uniform():
    """sigmoid(forget_bias) ~ U[1/H, 1-1/H]: Kolmogorov-Smirnov distance below the 0.1% critical value."""
    torch.manual_seed(0)
    H = 2048
    u = torch.sigmoid(URLSTM(3, H).forget_bias_l0.detach().double()).sort().values
    lo, hi = 1 / H, 1 - 1 / H
    assert u.min() >= lo - 1e-9 and u.max() <= hi + 1e-9
    cdf = (u - lo) / (hi - lo)
    n = torch.arange(1, H + 1, dtype=torch.float64)
    d = torch.max(torch.maximum(n / H - cdf, cdf - (n - 1) / H)).item()
    assert d < 1.95 / math.sqrt(H)
    # each layer draws its own
    two = URLSTM(3, 8, num_layers=2)
    assert not torch.equal(two.forget_bias_l0, two.forget_bias_l1)


def test_chrono_and_constant_init():
    torch.manual_seed(0)
    chrono = make_core("lstm:C-", 3, 500, chrono_tmax=100)
    b = chrono.forget_bias_l0.detach()
    assert b.min() >= 0 and b.max() <= math.log(99) + 1e-6 and b.std() > 0.5
    assert torch.all(make_core("lstm:--", 3, 5, forget_bias=2.0).forget_bias_l0 == 2.0)
    assert torch.all(make_core("gru:O-", 3, 5).forget_bias_l0 == 0)
    frozen = make_core("urlstm", 3, 5, train_forget_bias=False)
    assert not frozen.forget_bias_l0.requires_grad


@pytest.mark.parametrize("spec", ["lstm:UR", "gru:UR", "lstm:UM", "gru:CM"])
@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_forget_bias_enters_primary_and_refine_gates(spec, impl):
    """With every weight and ordinary bias zero, p = sigmoid(b_f) and a = sigmoid(-b_f) for a refine
    gate (shared tensor, sign flipped) or sigmoid(0) for a master gate; g is read from gate_stats."""
    core = make_core(spec, 3, 6, impl=impl)
    with torch.no_grad():
        for name, p in core.named_parameters():
            if not name.startswith("forget_bias"):
                p.zero_()
    core(torch.randn(2, 1, 3))
    b_f = core.forget_bias_l0.detach()
    p = torch.sigmoid(b_f)
    a = torch.sigmoid(-b_f) if spec.endswith("R") else torch.full_like(b_f, 0.5)
    g = core.gate_stats()["gate"].view(2, 6)
    torch.testing.assert_close(g[0], G.effective_gate(p, a, spec[-1]))


def test_effective_gate_formulas():
    """R and M against the equations of urlstm.md written out literally."""
    p = torch.rand(1000, dtype=torch.float64)
    a = torch.rand(1000, dtype=torch.float64)
    torch.testing.assert_close(G.effective_gate(p, a, "R"), a * (1 - (1 - p) ** 2) + (1 - a) * p ** 2)
    torch.testing.assert_close(G.effective_gate(p, a, "M"), p * (p + (1 - p) * a))
    torch.testing.assert_close(G.effective_gate(p, None, "-"), p)
    g_r = G.effective_gate(p, a, "R")
    assert torch.all(g_r >= p ** 2 - 1e-12) and torch.all(g_r <= 1 - (1 - p) ** 2 + 1e-12)
    z = torch.randn(4, 6, dtype=torch.float64)
    cumax = G.primary_gate(z, "O")
    torch.testing.assert_close(cumax, torch.cumsum(torch.softmax(z, -1), -1))
    assert torch.all(cumax[:, 1:] >= cumax[:, :-1]) and torch.allclose(cumax[:, -1], torch.ones(4, dtype=torch.float64))


@pytest.mark.parametrize("primary", G.PRIMARY)
@pytest.mark.parametrize("aux", G.AUXILIARY)
def test_gate_backward_matches_autograd(primary, aux):
    zp = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    za = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    p = G.primary_gate(zp, primary)
    a = torch.sigmoid(za) if aux != "-" else None
    g = G.effective_gate(p, a, aux)
    dg = torch.randn_like(g)
    auto = torch.autograd.grad(g, [zp, za], dg, allow_unused=True)
    dzp, dza = G.gate_backward(dg, p.detach(), None if a is None else a.detach(), primary, aux)
    torch.testing.assert_close(dzp, auto[0])
    if aux != "-":
        torch.testing.assert_close(dza, auto[1])


def test_gate_stats():
    core = make_core("urlstm", 3, 8, num_layers=2)
    assert core.gate_stats() is None
    core(torch.randn(5, 4, 3))
    stats = core.gate_stats()
    assert stats["gate"].shape == (2 * 5 * 4 * 8,)
    assert torch.all((stats["gate"] > 0) & (stats["gate"] < 1))
    torch.testing.assert_close(stats["timescale"], 1 / (1 - stats["gate"]))
    lstm = make_core("lstm", 3, 8)
    x = torch.randn(5, 4, 3)
    lstm(x)
    # the LSTM's forget gate at t = 0 from zeros: sigmoid(W_if x + b_if + b_hf)
    f0 = torch.sigmoid(x[0] @ lstm.weight_ih_l0[8:16].t() + lstm.bias_ih_l0[8:16] + lstm.bias_hh_l0[8:16])
    torch.testing.assert_close(lstm.gate_stats()["gate"].view(5, 4, 8)[0], f0.detach())
    assert make_core("mlp", 3, 8).gate_stats() is None


def test_mlp_has_empty_state():
    core = make_core("mlp", 3, 8)
    assert core.initial_state(4) == ()
    y, s = core(torch.randn(5, 4, 3))
    assert y.shape == (5, 4, 8) and s == ()


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_stack_is_an_mlp_over_the_last_k_inputs(impl):
    """stack:3 written out: y[t] = tanh(W [x[t-2], x[t-1], x[t]] + b), zeros before the episode's
    first input (at t < 2 and across a reset); its state is the last K-1 inputs, oldest first."""
    torch.manual_seed(0)
    core = make_core("stack:3", 5, 4, impl=impl).double()
    x, _ = _inputs(T=7, B=2, reset=False)
    reset = torch.zeros(7, 2, dtype=torch.bool)
    reset[4, 1] = True
    y, (window,) = core(x, None, reset)
    lin = core.net[0]
    zero = torch.zeros(2, 5, dtype=torch.float64)
    padded = torch.cat([zero.expand(2, 2, 5), x])  # [T + 2, B, D]
    for t in range(7):
        parts = [padded[t], padded[t + 1], padded[t + 2]]
        if t in (4, 5):  # element 1 restarts at t = 4: what came before is not in its window
            parts = [p.clone() for p in parts]
            for p in parts[:6 - t]:
                p[1] = 0
        torch.testing.assert_close(y[t], torch.tanh(lin(torch.cat(parts, -1))))
    assert window.shape == (2, 2, 5)
    torch.testing.assert_close(window, x[-2:])
    mlp = make_core("mlp", 5, 4).double()
    one = make_core("stack:1", 5, 4, impl=impl).double()
    one.load_state_dict(mlp.state_dict())
    y1, s1 = one(x, None, reset)
    torch.testing.assert_close(y1, mlp(x)[0])
    assert s1 == () and one.initial_state(2) == ()


@pytest.mark.parametrize("bad,match", [
    (lambda: make_core("lstm2", 3, 4), "unknown core 'lstm2'; valid cores: lstm, gru, urlstm"),
    (lambda: make_core("lstm:XR", 3, 4), "unknown core"),
    (lambda: make_core("stack:0", 3, 4), r"invalid core 'stack:0': .* stack:K with K an integer >= 1"),
    (lambda: make_core("stack:-1", 3, 4), "stack:K with K an integer >= 1"),
    (lambda: make_core("stack:x", 3, 4), "stack:K with K an integer >= 1"),
    (lambda: make_core("stack:2", 3, 4)(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4),)),
     r"state must be 1 tensor\(s\) of shape \[1, 2, 3\]"),
    (lambda: make_core("stack:2", 3, 4, forget_bias=1.0), "does not take option"),
    (lambda: make_core("urlstm", 3, 0), "hidden_size must be a positive integer"),
    (lambda: make_core("lstm", 3, 0), "hidden_size must be a positive integer"),
    (lambda: make_core("gru", 0, 4), "input_size must be a positive integer"),
    (lambda: make_core("urlstm", 3, 4, num_layers=0), "num_layers"),
    (lambda: make_core("lstm", 3, 4, chrono_tmax=10), "does not take option"),
    (lambda: make_core("urlstm", 3, 4, impl="cuda"), "impl must be"),
    (lambda: make_core("urlstm", 3, 4)(torch.randn(5, 3)), r"shape \[T, B, D\]"),
    (lambda: make_core("urlstm", 3, 4)(torch.randn(5, 2, 4)), "input width 4 does not match input_size 3"),
    (lambda: make_core("gru", 3, 4)(torch.randn(5, 2, 3), reset=torch.zeros(5, 3, dtype=torch.bool)), "reset must"),
    (lambda: make_core("lstm", 3, 4)(torch.randn(5, 2, 3), (torch.zeros(1, 2, 4),)), "state must be 2 tensor"),
])
def test_bad_arguments(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


@pytest.mark.gpu
@pytest.mark.parametrize("spec", ["lstm", "gru", "urlstm", "urgru", "lstm:OM", "stack:3"])
def test_cuda_matches_cpu(spec, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # cuDNN's RNNs default to TF32 products
    torch.manual_seed(0)
    core = make_core(spec, 5, 8)
    x, r = _inputs(D=5)
    x = x.float()
    y_cpu, _ = core(x, None, r)
    y_gpu, _ = core.cuda()(x.cuda(), None, r.cuda())
    y_gpu.sum().backward()
    torch.testing.assert_close(y_gpu.cpu(), y_cpu, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spec", ["urlstm", "lstm:O-", "urgru", "gru:-M"])
def test_no_grad_path_equals_autograd_path(spec, backend):
    """Acting under no_grad / inference_mode skips the autograd Function: same outputs and state."""
    _, fast = _pair(spec, L=2)
    x, r = _inputs()
    y, s = fast(x, None, r)
    with torch.inference_mode():
        y_inf, s_inf = fast(x, None, r)
    torch.testing.assert_close(y_inf, y.detach())
    for a, b in zip(s_inf, s):
        torch.testing.assert_close(a, b.detach())


@pytest.mark.parametrize("spec", RECURRENT)
def test_calls_leave_parameters_untouched(spec, backend):
    """A one-element, one-step call (acting in a single env) must not write into any parameter."""
    core = make_core(spec, 3, 4)
    before = {k: v.clone() for k, v in core.state_dict().items()}
    x = torch.randn(1, 1, 3)
    with torch.no_grad():
        y1, _ = core(x)
        y2, _ = core(x)
    y3, _ = core(x)
    y3.sum().backward()
    for k, v in core.state_dict().items():
        assert torch.equal(v, before[k]), k
    torch.testing.assert_close(y1, y2)
    torch.testing.assert_close(y1, y3.detach())


def test_a_stale_build_lock_left_by_a_killed_process_does_not_hang():
    """torch's build lock is a plain file; a process killed while compiling leaves it behind."""
    import os
    import subprocess
    import sys

    if os.environ.get("URLSTM_NO_EXT", "") not in ("", "0"):
        pytest.skip("URLSTM_NO_EXT: no build")
    code = ("from policies.cores import library; d = library.build_dir(); d.mkdir(parents=True, exist_ok=True); "
            "(d / 'lock').touch(); library.extension(); print((d / 'lock').exists())")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "False"  # the stale lock was removed and the build went ahead


def _learned(core, seed=4):
    """Give a core built with ``learn_initial_state`` a random initial state."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for s0 in core.state0:
            s0.copy_(torch.randn(s0.shape, generator=g, dtype=s0.dtype))
    return core


@pytest.mark.parametrize("spec", RECURRENT)
def test_learned_initial_state_fast_equals_reference(spec, backend):
    ref, fast = _pair(spec, L=2, learn_initial_state=True)
    _learned(ref)
    fast.load_state_dict(ref.state_dict())
    x, reset = _inputs(T=7, B=3)
    _assert_same(ref, fast, x, reset)  # the gradients include the initial state's


@pytest.mark.parametrize("spec", ["urlstm", "urgru", "lstm", "gru", "lstm:CR", "stack:3", "mlp"])
def test_learned_initial_state_is_the_state_at_every_reset(spec):
    """The definition: the state is replaced by the learned one before a step that starts an
    episode (step by step, no reset mask), and every reset sends a gradient to it."""
    torch.manual_seed(0)
    core = _learned(make_core(spec, 5, 4, 2, learn_initial_state=True).double())
    x, reset = _inputs(T=7, B=3)
    reset[4, 1] = True  # two resets of one element inside the sequence
    state = tuple(torch.randn_like(s) for s in core.initial_state(3, dtype=torch.float64))
    y, final = core(x, state, reset)
    s, ys = state, []
    for t in range(7):
        s = tuple(torch.where(reset[t].view(1, -1, 1), s0.expand_as(a), a) for a, s0 in zip(s, core.state0))
        out, s = core.step(x[t], s)
        ys.append(out)
    torch.testing.assert_close(y, torch.stack(ys))
    for a, b in zip(final, s):
        torch.testing.assert_close(a, b)
    if core.state0:
        grads = torch.autograd.grad(y.sum(), list(core.state0))
        assert all(bool(g.abs().sum() > 0) for g in grads)
        # without a reset the learned state plays no part
        y, _ = core(x, state, torch.zeros_like(reset))
        assert all(g is None for g in torch.autograd.grad(y.sum(), list(core.state0), allow_unused=True))


@pytest.mark.parametrize("spec", ["urlstm", "gru", "stack:3", "mlp"])
def test_learned_initial_state_starts_at_zero(spec):
    """Built with it, a core computes what it computes without it until the state moves; its
    ``initial_state`` is the learned state, detached; it is saved in the state dict."""
    torch.manual_seed(0)
    plain = make_core(spec, 5, 4, 2)
    learned = make_core(spec, 5, 4, 2, learn_initial_state=True)
    learned.load_state_dict(plain.state_dict(), strict=False)
    x, reset = _inputs(T=7, B=3)
    x = x.float()
    torch.testing.assert_close(learned(x, None, reset)[0], plain(x, None, reset)[0])
    assert len(learned.state0) == len(plain.initial_state(1))
    assert [k for k in learned.state_dict() if k.startswith("state0.")] == [
        f"state0.{i}" for i in range(len(learned.state0))]
    _learned(learned)
    for s, s0 in zip(learned.initial_state(3), learned.state0):
        assert not s.requires_grad and s.shape == learned.state_shape(3)
        torch.testing.assert_close(s, s0.detach().expand_as(s))
