"""Triton scans of the gate grid (triton_lstm.py, triton_gru.py) against the float64 reference.

Without a GPU the kernels run through Triton's interpreter on CPU tensors. The interpreter is chosen
when triton is imported (``TRITON_INTERPRET=1``, read as ``triton.jit`` decorates), so this module
imports triton with it set when nothing has imported triton yet and there is no GPU; otherwise (a
CUDA machine, where ``gpu`` tests run the compiled kernels) one test runs these in a fresh process.
The variable stays set in an interpreting process: on a machine without a GPU triton runs nothing else.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
IN_PROCESS = not torch.cuda.is_available() and "triton" not in sys.modules
if IN_PROCESS:  # kept for the whole process: triton imports parts of itself lazily, each reading it
    os.environ["TRITON_INTERPRET"] = "1"
triton = pytest.importorskip("triton", reason="triton is not installed (it is in the test extra, Linux only)")
from policies.cores import CORE_SPECS, gated_gru, gated_lstm, make_core, triton_scan  # noqa: E402
from policies.cores import triton_gru as TG  # noqa: E402
from policies.cores import triton_lstm as TL  # noqa: E402

LSTM_GRID = [s for s in CORE_SPECS if s.startswith("lstm:")]
GRU_GRID = [s for s in CORE_SPECS if s.startswith("gru:")]
interpreted = pytest.mark.skipif(not IN_PROCESS, reason="triton runs compiled in this process: "
                                 "test_interpreter_in_a_fresh_process runs this test")


def test_interpreter_in_a_fresh_process():
    """Where this process cannot use the interpreter, the interpreter tests run in a fresh one."""
    if IN_PROCESS:
        assert TL.K.INTERPRET and TG.K.INTERPRET
        return
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", str(Path(__file__)), "-m", "not gpu"],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=1200)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]


@pytest.fixture
def triton_cores(monkeypatch):
    """Grid cores whose fast scan is the interpreted Triton kernels (on CPU tensors)."""
    monkeypatch.setattr(gated_lstm, "lstm_fast_scan", TL.lstm_scan)
    monkeypatch.setattr(gated_gru, "gru_fast_scan", TG.gru_scan)


def _pair(spec, D, H, L, dtype=torch.float64):
    torch.manual_seed(1)
    ref = make_core(spec, D, H, L, impl="reference").to(dtype)
    fast = make_core(spec, D, H, L, impl="fast").to(dtype)
    fast.load_state_dict(ref.state_dict())
    with torch.no_grad():  # zero-initialised bias blocks would hide a wrong bias path
        for (name, p), q in zip(ref.named_parameters(), fast.parameters()):
            if name.startswith("bias"):
                p.uniform_(-0.5, 0.5)
                q.copy_(p)
    return ref, fast


def _inputs(T, B, D, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 2 * torch.randn(T, B, D, generator=g, dtype=torch.float64)
    reset = torch.zeros(T, B, dtype=torch.bool)
    for t, b in ((3, 0), (5, 2), (1, 1), (T - 1, B - 1)):
        if t < T and b < B:
            reset[t, b] = True
    return x.to(dtype), reset


def _run(core, x, state, reset):
    """Outputs, final state and the gradients of a loss on both (input, initial state, every parameter)."""
    x = x.clone().requires_grad_()
    state = tuple(s.clone().requires_grad_() for s in state)
    y, final = core(x, state, reset)
    g = torch.Generator().manual_seed(3)
    loss = (y.double() * torch.randn(y.shape, generator=g, dtype=torch.float64).to(y.device)).sum()
    for s in final:
        loss = loss + (s.double() * torch.randn(s.shape, generator=g, dtype=torch.float64).to(s.device)).sum()
    leaves = [x, *state, *[p for p in core.parameters() if p.requires_grad]]
    return y.detach(), [s.detach() for s in final], torch.autograd.grad(loss, leaves), core._last_gates()


def _check(spec, T=6, B=5, D=6, H=24, L=2, dtype=torch.float64, tol=None, grads=True):
    ref, fast = _pair(spec, D, H, L)
    fast = fast.to(dtype)
    x, reset = _inputs(T, B, D)
    state = tuple(0.5 * torch.randn_like(s) for s in ref.initial_state(B, dtype=torch.float64))
    y0, s0, g0, gate0 = _run(ref, x, state, reset)
    y1, s1, g1, gate1 = _run(fast, x.to(dtype), tuple(s.to(dtype) for s in state), reset)
    close = {"rtol": tol, "atol": tol} if tol else {}
    torch.testing.assert_close(y1.double(), y0, **close)
    torch.testing.assert_close(gate1.double(), gate0, **close)
    for a, b in zip(s1, s0):
        torch.testing.assert_close(a.double(), b, **close)
    if grads:
        assert len(g0) == len(g1) == 1 + len(state) + len(list(ref.parameters()))
        for a, b in zip(g1, g0):
            torch.testing.assert_close(a.double(), b, **close)


@interpreted
@pytest.mark.parametrize("spec", LSTM_GRID + GRU_GRID)
def test_every_cell_matches_reference(spec, triton_cores):
    """Two layers, resets inside the sequence, H not a power of two: values and every gradient."""
    _check(spec)


@interpreted
@pytest.mark.parametrize("spec", ["lstm:OM", "gru:UR"])
def test_streamed_weights_and_several_programs(spec, triton_cores, monkeypatch):
    """W_hh read in K tiles each step (the path of H > 64), and B over one program's 16 rows."""
    monkeypatch.setenv("URLSTM_TRITON_STREAM_W", "1")
    _check(spec, T=5, B=17, H=40, L=1)


@interpreted
def test_untied_input_gate_is_torch_lstm():
    """Aux code "I": torch.nn.LSTM's cell on torch's weights (blocks i, f, g, o), resets inside."""
    torch.manual_seed(0)
    ref = make_core("lstm", 6, 20, impl="reference").double()
    x, reset = _inputs(7, 5, 6)
    keep = (~reset).double().unsqueeze(-1)
    state = tuple(0.5 * torch.randn_like(s) for s in ref.initial_state(5, dtype=torch.float64))
    y0, (h0, c0) = ref(x, state, reset)
    w_ih, w_hh, b_ih, b_hh = ref.all_weights[0]
    y1, h1, c1, _ = TL.lstm_scan(x, w_ih, b_ih + b_hh, state[0][0], state[1][0], w_hh, torch.zeros(20).double(),
                                 keep, "-", "I")
    torch.testing.assert_close(y1, y0)
    torch.testing.assert_close(h1, h0[0])
    torch.testing.assert_close(c1, c0[0])
    leaves = [x.requires_grad_(), w_ih, w_hh]
    y0, _ = ref(x, state, reset)
    y1 = TL.lstm_scan(x, w_ih, b_ih + b_hh, state[0][0], state[1][0], w_hh, torch.zeros(20).double(), keep, "-",
                      "I")[0]
    for a, b in zip(torch.autograd.grad(y1.sum(), leaves), torch.autograd.grad(y0.sum(), leaves)):
        torch.testing.assert_close(a, b)


@interpreted
@pytest.mark.parametrize("spec", ["urlstm", "urgru"])
def test_float32_and_bfloat16(spec, triton_cores):
    """float32 state and accumulation: float32 within 1e-5 of float64; bfloat16 inputs within 3e-2."""
    _check(spec, L=1, dtype=torch.float32, tol=1e-5)
    _check(spec, L=1, dtype=torch.bfloat16, tol=3e-2, grads=False)


@interpreted
@pytest.mark.parametrize("spec", ["urlstm", "gru:OR"])
def test_acting_steps_equal_sequence(spec, triton_cores):
    """step() (T = 1, no gradient: the forward kernel alone) equals the sequence, resets included."""
    _, core = _pair(spec, 6, 16, 2)
    x, reset = _inputs(6, 4, 6)
    with torch.no_grad():
        y, final = core(x, None, reset)
        state = core.initial_state(4, dtype=torch.float64)
        for t in range(6):
            y_t, state = core.step(x[t], state, reset[t])
            torch.testing.assert_close(y_t, y[t])
    for a, b in zip(state, final):
        torch.testing.assert_close(a, b)


def test_not_used_on_cpu_and_one_warning_when_turned_off(monkeypatch):
    assert not triton_scan.usable(torch.zeros(1, 1, 3), 4)  # CPU tensors: the compiled loop or Python
    monkeypatch.setattr(triton_scan, "_STATE", {})
    monkeypatch.setattr(triton_scan, "_WARNED", set())
    monkeypatch.setenv("URLSTM_NO_TRITON", "1")
    with pytest.warns(RuntimeWarning, match="URLSTM_NO_TRITON"):
        assert not triton_scan.available()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not triton_scan.available()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the benchmark would run")
def test_gpu_benchmark_exits_2_without_cuda():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py")], capture_output=True, text=True,
                         check=False, timeout=120)
    assert out.returncode == 2
    assert out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 and "CUDA" in out.stderr


def test_gpu_benchmark_items_run_where_cuda_is_replaced_by_the_cpu(monkeypatch):
    """benchmarks/gpu.py's code runs on CUDA machines only: its kernel item, run here on CPU tensors
    (the grid cores then take the Python scan, named so), with CUDA timing replaced by a call."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "benchmarks" / "gpu.py")
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    monkeypatch.setattr(gpu, "DEVICE", "cpu")
    monkeypatch.setattr(gpu, "timed", lambda fn, budget_s=1.5: (fn(), 2.0)[1])
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    for dtype in gpu.DTYPES:
        out = gpu.bench_shape(5, 3, 4, 8, dtype, with_python=dtype == "float32")
        assert (out["T"], out["B"], out["D"], out["H"], out["dtype"]) == (5, 3, 4, 8, dtype)
        assert set(out) == {"T", "B", "D", "H", "dtype", "nn.LSTM (cuDNN)", "urlstm (python)", "urgru (python)",
                            "lstm:-- (python)"}
        for name in ("urlstm (python)", "urgru (python)", "lstm:-- (python)"):
            assert out[name]["kernel"] == "python" and out[name]["fwd_bwd_ratio_to_cudnn"] == 1.0
    from policies.cores import triton_scan

    assert "ok" not in triton_scan._STATE or triton_scan._STATE["ok"] is not False  # routing restored


# ---------------------------------------------------------------- compiled kernels (CUDA)

@pytest.fixture
def no_fallback(monkeypatch):
    """The cores must run the compiled kernels (counted; none failing to build), one configuration
    each (no autotuning, to keep the compilations few)."""
    calls = []
    for module, name in ((TL, "lstm_scan"), (TG, "gru_scan")):
        scan = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _scan=scan: calls.append(1) or _scan(*a))
    monkeypatch.setenv("URLSTM_TRITON_AUTOTUNE", "0")
    yield
    assert calls and triton_scan.usable(torch.zeros(1, device="cuda"), 1) and not triton_scan._FAILED


@pytest.mark.gpu
@pytest.mark.parametrize("spec,H", [(s, 24) for s in LSTM_GRID + GRU_GRID]
                         + [(s, 256) for s in ("lstm:UR", "lstm:OM", "gru:UR", "gru:O-")])
def test_compiled_matches_reference(spec, H, no_fallback):
    """The compiled kernels through the cores on CUDA in float32 (W in registers at H = 24, in K
    tiles at H = 256), 40 rows (several programs), resets, two layers, against float64 on the CPU."""
    ref, fast = _pair(spec, 16, H, 2)
    fast = fast.cuda().float()
    x, reset = _inputs(12, 40, 16)
    state = tuple(0.5 * torch.randn_like(s) for s in ref.initial_state(40, dtype=torch.float64))
    y0, s0, g0, _ = _run(ref, x, state, reset)
    y1, s1, g1, _ = _run(fast, x.cuda().float(), tuple(s.cuda().float() for s in state), reset.cuda())
    torch.testing.assert_close(y1.cpu().double(), y0, rtol=1e-4, atol=1e-4)
    for a, b in zip(s1, s0):
        torch.testing.assert_close(a.cpu().double(), b, rtol=1e-4, atol=1e-4)
    for a, b in zip(g1, g0):
        torch.testing.assert_close(a.cpu().double(), b, rtol=1e-3, atol=1e-3)


@pytest.mark.gpu
@pytest.mark.parametrize("spec", ["urlstm", "urgru", "lstm:--"])
def test_compiled_bfloat16_and_steps(spec, no_fallback):
    """bfloat16 forward and backward close to float32; step() equals the sequence on CUDA."""
    _, fast = _pair(spec, 32, 128, 2)
    fast = fast.cuda().float()
    x, reset = _inputs(16, 64, 32)
    x, reset = x.cuda().float(), reset.cuda()
    state = fast.initial_state(64)
    y32, _, g32, _ = _run(fast, x, state, reset)
    half = make_core(spec, 32, 128, 2).cuda().bfloat16()
    half.load_state_dict(fast.state_dict())
    y16, _, g16, _ = _run(half, x.bfloat16(), tuple(s.bfloat16() for s in state), reset)
    torch.testing.assert_close(y16.float(), y32, rtol=5e-2, atol=5e-2)
    for a, b in zip(g16, g32):
        assert (a.float() - b).norm() <= 0.1 * b.norm() + 1e-3
    with torch.no_grad():
        s = fast.initial_state(64)
        for t in range(16):
            y_t, s = fast.step(x[t], s, reset[t])
            torch.testing.assert_close(y_t, y32[t], rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- compiled without a GPU

COMPILE = r'''
import sys, triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from policies.cores import triton_gru, triton_lstm

F32, BF16 = "*fp32", "*bf16"
POINTERS = {  # argument: its dtype, "x" for the input dtype
    "lstm_fwd_kernel": dict(XZ="x", W="x", BF="x", KEEP=F32, HB=F32, CB=F32, S=F32, G="x"),
    "lstm_bwd_kernel": dict(DY="x", DHT=F32, DCT=F32, S=F32, CB=F32, W="x", KEEP=F32, DZ="x", DH0=F32, DC0=F32),
    "gru_fwd_kernel": dict(XZ="x", W="x", BHH="x", BF="x", KEEP=F32, HB=F32, S=F32, HN=F32, G="x"),
    "gru_bwd_kernel": dict(DY="x", DHT=F32, S=F32, HN=F32, HPREV=F32, W="x", KEEP=F32, DX="x", DHZ="x", DH0=F32),
}
for name, dtype, H, primary, aux, warps in [("lstm_fwd_kernel", BF16, 256, 0, 2, 16), ("lstm_bwd_kernel", F32, 64, 1, 1, 4),
        ("gru_fwd_kernel", F32, 64, 1, 2, 4), ("gru_bwd_kernel", BF16, 256, 0, 1, 8), ("lstm_fwd_kernel", F32, 32, 0, 3, 4)]:
    kernel = getattr(triton_lstm if name.startswith("lstm") else triton_gru, name)
    hp, nb = max(16, triton.next_power_of_2(H)), 3 if aux == 0 else 4
    const = dict(HP=hp, NB=nb, PRIMARY=primary, AUX=aux, HAS_KEEP=True, RESIDENT=nb * hp * hp <= 16384, SAVE=True,
                 CT=tl.float32, DOT_DT=tl.bfloat16 if dtype == BF16 else tl.float32, PRECISION="ieee",
                 BLOCK_B=16, BLOCK_K=32, PO=int(aux == 3), AO=int(aux != 3))
    ptrs = {k: (dtype if v == "x" else v) for k, v in POINTERS[name].items()}
    sig = {a: ptrs.get(a, "constexpr" if a in const else "i32") for a in kernel.arg_names}
    src = ASTSource(kernel, sig, {a: const[a] for a in kernel.arg_names if a in const})
    out = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
    assert "cubin" in out.asm, name
    print(name, "ok", flush=True)
'''


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_a_gpu():
    """Triton's compiler (and ptxas) need no GPU: the compiled path of each kernel family, W on chip
    and in K tiles, float32 and bfloat16, builds for sm_90 (the interpreter cannot show this)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", COMPILE], cwd=ROOT, env=env, capture_output=True, text=True,
                         check=False, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count(" ok") == 5
