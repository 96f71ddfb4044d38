"""Runs on every CPU: the compiled scans at the sizes users run, only public torch APIs, a build keyed
to the CPU that falls back instead of crashing, and the core tests again at torch's lowest CPU
dispatch level and with the Python scans."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from policies.cores import CORE_SPECS, cpu, library, make_core

ROOT = Path(__file__).resolve().parents[1]
RECURRENT = [s for s in CORE_SPECS if s != "mlp"]
# (T, B, D, H): the default config's acting step (32 envs; the encoder's 128 features plus the
# previous action and reward) and training minibatch (8 sequences of 102 steps), then a batch above
# the rows-per-thread grain of the gate loops (16384 / gate units) so that both threads share a step,
# and 64 sequences of 36 steps: the compiled backward pass in two chunks of steps (2048 rows each).
SIZES = [(1, 32, 133, 128), (102, 8, 133, 128), (9, 80, 133, 128), (36, 64, 133, 128)]


def _compiled():
    if not library.extension():
        pytest.skip("the compiled scan did not build here")


def _compare(spec: str, T: int, B: int, D: int, H: int) -> None:
    torch.manual_seed(0)
    ref = make_core(spec, D, H, impl="reference").double()
    fast = make_core(spec, D, H, impl="fast")
    fast.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
    g = torch.Generator().manual_seed(1)
    x = torch.randn(T, B, D, generator=g, dtype=torch.float64)
    reset = torch.rand(T, B, generator=g) < 0.1
    reset[0, 0] = True
    state = tuple(torch.randn(s.shape, generator=g, dtype=torch.float64) * 0.5
                  for s in ref.initial_state(B, dtype=torch.float64))
    weights = torch.randn(T, B, H, generator=g, dtype=torch.float64)

    def run(core, dtype):
        xx = x.to(dtype).requires_grad_()
        ss = tuple(s.to(dtype).requires_grad_() for s in state)
        y, final = core(xx, ss, reset)
        loss = (y * weights.to(dtype)).sum() + sum(f.sum() for f in final)
        params = [p for p in core.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, [xx, *ss, *params])
        return [y.detach().double(), *(f.detach().double() for f in final), *(d.double() for d in grads)]

    want, got = run(ref, torch.float64), run(fast, torch.float32)
    names = ["y", *[f"state[{i}]" for i in range(len(state))], "dx", *[f"dstate[{i}]" for i in range(len(state))],
             *[n for n, p in fast.named_parameters() if p.requires_grad]]
    for name, w, v in zip(names, want, got):
        scale = w.abs().max().item() + 1e-6
        err = (v - w).abs().max().item()
        assert err <= 2e-4 * scale + 1e-5, f"{spec} T{T} B{B}: {name} differs by {err:.3g} (scale {scale:.3g})"
    with torch.no_grad():  # acting: the op alone, without saved activations
        y = fast(x.float(), tuple(s.float() for s in state), reset)[0]
    assert (y.double() - want[0]).abs().max().item() <= 2e-4 * (want[0].abs().max().item() + 1e-6) + 1e-5


@pytest.mark.parametrize("size", SIZES, ids=lambda s: "T{}_B{}_D{}_H{}".format(*s))
@pytest.mark.parametrize("spec", RECURRENT)
def test_compiled_float32_at_user_sizes(spec, size):
    """Every grid cell, lstm and gru: float32 compiled loop vs the float64 reference, with resets:
    output, final state, and the gradients of the input, the initial state and every parameter."""
    _compiled()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        _compare(spec, *size)
    finally:
        torch.set_num_threads(threads)


def test_the_self_check_passes_here():
    """The check run in the build's child process, run again in this one."""
    _compiled()
    from policies.cores import selfcheck

    selfcheck.check_all()


def test_no_private_torch_api_in_the_sources():
    """No internal ATen symbols or weak declarations in C++, no private torch calls in Python."""
    folders = ("agents", "policies", "envs", "supervised", "benchmarks")
    cpp = [p for f in folders for p in (ROOT / f).rglob("*") if p.suffix in (".cpp", ".cc", ".h", ".hpp", ".cu")]
    assert cpp, "the C++ sources were not found"
    for path in cpp:
        text = path.read_text()
        for pattern in (r"at::native::", r"__attribute__\s*\(\(\s*weak", r"\bat::internal::"):
            assert not re.search(pattern, text), f"{path.relative_to(ROOT)} uses {pattern}"
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            for pattern in (r"torch\._C\b", r"cpp_extension\._", r"torch\.ops\.aten\._"):
                assert not re.search(pattern, text), f"{path.relative_to(ROOT)} uses {pattern}"


def test_build_folder_is_keyed_to_the_cpu(monkeypatch):
    """Another CPU (model or instruction-set flags), another folder: never a library built elsewhere."""
    here = library.build_dir()
    assert here.name.startswith("urlstm_scan_")
    monkeypatch.setattr(cpu, "cpu_identity", lambda: "x86_64 | another model | avx avx2 avx512f")
    other = library.build_dir()
    monkeypatch.setattr(cpu, "cpu_identity", lambda: "x86_64 | another model | avx avx2")
    assert len({here, other, library.build_dir()}) == 3
    assert "avx2" in cpu.cpu_identity() or platform_is_not_x86()


def platform_is_not_x86() -> bool:
    import platform

    return platform.machine().lower() not in ("x86_64", "amd64")


def _python(code: str, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, **env})


def test_a_library_that_dies_on_this_cpu_falls_back_with_one_warning(tmp_path):
    """A cached library that crashes its self-check (as one built for another CPU would, with an
    illegal instruction) costs one warning line and the Python scan, never a crash."""
    code = """
import warnings
from policies.cores import library, make_core
import torch
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ok = library.extension()
core = make_core("urlstm", 3, 4)
y, _ = core(torch.randn(5, 2, 3))
print(ok, len(caught), str(caught[0].message) if caught else "", tuple(y.shape))
"""
    # the child process that builds imports selfcheck, so the crash is injected there through a
    # sitecustomize module on its path
    (tmp_path / "sitecustomize.py").write_text(
        "import os, signal\n"
        "def _die(folder):\n    os.kill(os.getpid(), signal.SIGILL)\n"
        "import policies.cores.selfcheck as s\ns.build_and_check = _die\n")
    env = {"TORCH_EXTENSIONS_DIR": str(tmp_path / "ext"), "URLSTM_NO_EXT": "",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    out = _python(code, env)
    assert out.returncode == 0, out.stderr
    ok, n, *rest = out.stdout.split(" ", 2)
    assert ok == "False" and n == "1", out.stdout
    assert "SIGILL" in rest[0] and "using the Python scan" in rest[0], out.stdout
    assert "(5, 2, 4)" in out.stdout


def test_a_corrupt_cached_library_falls_back_with_one_warning(tmp_path):
    """A library file that does not load (truncated, foreign) is a warning, never a crash."""
    env = {"TORCH_EXTENSIONS_DIR": str(tmp_path), "URLSTM_NO_EXT": ""}
    code = ("from policies.cores import library; d = library.build_dir(); d.mkdir(parents=True); "
            "(d / library.LIBRARY).write_bytes(b'not a library'); (d / library.PASSED).write_text('x'); "
            "import warnings; warnings.simplefilter('always'); print(library.extension())")
    out = _python(code, env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "False"
    assert out.stderr.count("compiled scan unavailable") == 1, out.stderr


CORE_TESTS = ["-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/test_cores.py",
              "-k", "fast_equals_reference or float32 or matches_torch or step_equals or no_grad_path"]


@pytest.mark.parametrize("env", [{"ATEN_CPU_CAPABILITY": "default"}, {"URLSTM_NO_EXT": "1"}],
                         ids=["aten-default-dispatch", "python-fallback"])
def test_core_equivalence_again(env):
    """The core-equivalence tests once more at torch's lowest CPU dispatch level, and with the
    Python scans instead of the compiled loop."""
    out = subprocess.run([sys.executable, *CORE_TESTS], capture_output=True, text=True, timeout=900, cwd=ROOT,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert re.search(r"\d+ passed", out.stdout), out.stdout[-500:]
