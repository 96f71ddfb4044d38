"""Per-environment presets: tuned settings read from ``presets.toml``, matched to an env id and algo.

    preset = find("MiniGrid-MemoryS7-v0", "ppo")      # the most specific match, or None
    settings = resolve(preset, "MiniGrid-MemoryS7-v0", {})  # {field: value}, expressions evaluated

The data file says what each preset is for and how it matches; ``train.py`` applies the result under
the flags given on the command line (explicit flags win; env kwargs merge key by key) and records
the preset's name and the settings it supplied in ``config.json``.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re
import sys
import typing
from dataclasses import dataclass
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "presets.toml")
ALGOS = ("ppo", "impala")
_SPECIAL = re.compile(r"[\\.^$*+?{}\[\]|()]")


class PresetError(ValueError):
    """A bad preset name or a preset that cannot be applied; printed as one line (exit code 2)."""


@dataclass(frozen=True)
class Preset:
    """One [[preset]] table of the data file."""

    name: str
    algo: str
    ids: tuple[str, ...]
    pattern: str | None
    evidence: str
    settings: dict[str, Any]

    def match(self, env_id: str) -> tuple[int, int] | None:
        """How specifically this preset matches ``env_id`` (larger wins), or None.

        An exact id ranks (2, 0); a pattern (1, length of its literal start), so "MiniGrid-MemoryS..."
        beats "(MiniGrid|BabyAI)-.*", which beats the fallback ".*" (1, 0).
        """
        if env_id in self.ids:
            return (2, 0)
        if self.pattern is not None and re.fullmatch(self.pattern, env_id):
            return (1, literal_prefix(self.pattern))
        return None

    def groups(self, env_id: str) -> dict[str, Any]:
        """The pattern's named groups in ``env_id`` (digits as int): e.g. {"size": 7}."""
        m = re.fullmatch(self.pattern, env_id) if self.pattern is not None else None
        if m is None:
            return {}
        return {k: int(v) if v is not None and v.isdigit() else v for k, v in m.groupdict().items()}

    @property
    def matches(self) -> str:
        """What it matches, as ``train.py presets`` prints it."""
        return ", ".join(self.ids) if self.ids else self.pattern or ""


def literal_prefix(pattern: str) -> int:
    """Characters of ``pattern`` before its first regex special character."""
    m = _SPECIAL.search(pattern)
    return len(pattern) if m is None else m.start()


def load(path: str = FILE) -> list[Preset]:
    """Read and check the data file (names unique, one algo each, ids or a pattern, known fields)."""
    from agents.config import TrainConfig

    with open(path, "rb") as f:
        data = tomllib.load(f)
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"env", "algo", "preset", "core", "seed"}
    out, seen = [], set()
    for i, table in enumerate(data.get("preset", [])):
        name = table.get("name")
        where = f"{os.path.basename(path)}: preset {name or i}"
        extra = sorted(set(table) - {"name", "algo", "ids", "pattern", "evidence", "settings"})
        if not isinstance(name, str) or not name or name == "none" or name in seen:
            raise PresetError(f"{where}: a preset needs a unique name other than 'none'")
        if extra or table.get("algo") not in ALGOS:
            raise PresetError(f"{where}: algo must be one of {ALGOS} and keys among name, algo, ids, "
                              f"pattern, evidence, settings (got {extra or table.get('algo')!r})")
        if bool(table.get("ids")) == ("pattern" in table):
            raise PresetError(f"{where}: give either ids (exact env ids) or pattern (a regex)")
        if "pattern" in table:
            try:
                re.compile(table["pattern"])
            except re.error as err:
                raise PresetError(f"{where}: bad pattern {table['pattern']!r}: {err}") from None
        settings = dict(table.get("settings", {}))
        unknown = sorted(set(settings) - fields)
        if unknown:
            raise PresetError(f"{where}: unknown settings {unknown} (settings are train.py's flags "
                              "with - written _; env, algo, core and seed are not presets' to set)")
        seen.add(name)
        out.append(Preset(name, table["algo"], tuple(table.get("ids", ())), table.get("pattern"),
                          table.get("evidence", ""), settings))
    return out


def canonical(env_id: str) -> str:
    """A native alias (``tmaze-passive``) -> its id; anything else unchanged."""
    from envs.factory import ALIASES

    return ALIASES.get(env_id, env_id)


def find(env_id: str, algo: str, presets: list[Preset] | None = None) -> Preset | None:
    """The most specific preset for ``env_id`` and ``algo`` (None when nothing matches)."""
    env_id = canonical(env_id)
    best, rank = None, None
    for p in load() if presets is None else presets:
        r = p.match(env_id) if p.algo == algo else None
        if r is not None and (rank is None or r > rank):
            best, rank = p, r
    return best


def by_name(name: str, presets: list[Preset] | None = None) -> Preset:
    """The preset called ``name``; an unknown name raises PresetError listing the known ones."""
    presets = load() if presets is None else presets
    for p in presets:
        if p.name == name:
            return p
    raise PresetError(f"unknown preset {name!r}: use one of {', '.join(p.name for p in presets)}, "
                      "auto or none (python train.py presets lists them)")


def env_defaults(env_id: str) -> dict[str, Any]:
    """Keyword defaults of a native task's constructor (length, num_bits, ...); {} for other ids."""
    import inspect

    from envs.factory import NATIVE

    cls = NATIVE.get(canonical(env_id))
    if cls is None:
        return {}
    params = list(inspect.signature(cls.__init__).parameters.values())[2:]  # after self, num_envs
    return {p.name: p.default for p in params
            if p.default is not inspect.Parameter.empty and p.name != "seed"}


def resolve(preset: Preset, env_id: str, env_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The preset's settings for ``env_id`` with ``env_kwargs`` given on the command line.

    Returns ``{field: value}`` with every "{expression}" evaluated and cast to the field's type;
    ``env_kwargs`` in it is the preset's kwargs merged under the given ones.
    """
    from agents.config import TrainConfig
    from agents.sweep import SweepError, _eval

    kwargs = {**preset.settings.get("env_kwargs", {}), **env_kwargs}
    names = {**env_defaults(env_id), **preset.groups(canonical(env_id)), **kwargs}
    names = {k: v for k, v in names.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    hints = typing.get_type_hints(TrainConfig)
    out: dict[str, Any] = {}
    for key, value in preset.settings.items():
        if key == "env_kwargs":
            out[key] = kwargs
            continue
        if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
            try:
                value = _eval(ast.parse(value[1:-1], mode="eval").body, names)
            except (SyntaxError, SweepError) as err:
                raise PresetError(f"preset {preset.name}: cannot evaluate {key} = {value!r} for "
                                  f"{env_id}: {err}") from None
            except (ZeroDivisionError, TypeError, OverflowError) as err:
                raise PresetError(f"preset {preset.name}: {key} = {value!r} fails for {env_id} "
                                  f"with {kwargs}: {err}") from None
        out[key] = _cast(value, hints[key])
    return out


def _cast(value: Any, kind: Any) -> Any:
    """An evaluated value as the config field's type (an int field gets an int from 128.0)."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    base = args[0] if args else kind
    if base is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def flag_list(settings: dict[str, Any]) -> list[str]:
    """{field: value} -> the flags that would give them, e.g. ["--num-envs 16", "--no-anneal-lr"]
    (an unevaluated expression is quoted for the shell)."""
    parts = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + key.replace("_", "-"))
        elif isinstance(value, dict):
            parts.append(" ".join([flag, *(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}"
                                           for k, v in value.items())]))
        elif isinstance(value, str) and value.startswith("{"):
            parts.append(f"{flag} '{value}'")
        else:
            parts.append(f"{flag} {value}")
    return parts


def as_flags(settings: dict[str, Any]) -> str:
    """{field: value} -> one line of flags, e.g. "--num-envs 16 --no-anneal-lr"."""
    return " ".join(flag_list(settings))


def describe(presets: list[Preset] | None = None, width: int = 100) -> str:
    """The text of ``python train.py presets``: every preset, its match, settings and evidence."""
    presets = load() if presets is None else presets
    lines = ["Presets of agents/presets.toml: a run applies the most specific match for its --env and --algo",
             "(exact id > pattern > fallback) under the flags given; --preset NAME picks another, --preset",
             "none uses none. {expressions} are evaluated with the env's keyword arguments;",
             "'train.py presets --env ID [--env-kwargs K=V ...]' shows their values for one id.", ""]
    for p in presets:
        lines.append(f"{p.name}  [{p.algo}]  {'ids' if p.ids else 'pattern'}: {p.matches}")
        row = "   "
        for part in flag_list(p.settings):  # wrapped between flags, never inside one
            if len(row) + 1 + len(part) > width and row.strip():
                lines.append(row)
                row = "   "
            row += " " + part
        lines.append(row)
        lines.append(f"    evidence: {p.evidence}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def flags_under(env: str, algo: str, choice: str, kwargs: dict[str, Any], typed: set[str]
                ) -> tuple[tuple[list[str], list[str]], dict[str, Any]]:
    """The flags that put the preset ``choice`` (auto, a name or none) for ``env`` and ``algo``
    under a command line that typed the settings ``typed`` and ``kwargs``: the flags to put before
    and after the command line's own, and the settings the preset supplied. Env kwargs merge key
    by key; ``--env-kwargs`` typed with nothing after it means none at all."""
    kwargs_typed = "env_kwargs" in typed
    if choice == "none":
        return ([], ["--preset", "none"]), {}
    preset = find(env, algo) if choice == "auto" else by_name(choice)
    if preset is None:
        return ([], ["--preset", "none"]), {}
    if preset.algo != algo:
        raise PresetError(f"preset {preset.name} is for --algo {preset.algo}, not {algo}: pick "
                          "another with --preset (python train.py presets lists them)")
    settings = resolve(preset, env, kwargs if kwargs_typed else {})
    supplied = {k: v for k, v in settings.items() if k != "env_kwargs" and k not in typed}
    merged = dict(kwargs) if kwargs_typed else {}
    if not (kwargs_typed and not kwargs):  # --env-kwargs with nothing after it: none at all
        added = {k: v for k, v in settings.get("env_kwargs", {}).items() if k not in merged}
        merged.update(added)
        if added:
            supplied["env_kwargs"] = added
    before = [token for key, value in supplied.items() if key != "env_kwargs"
              for token in _tokens(key, value)]
    after = ["--env-kwargs", *[f"{k}={v!r}" for k, v in merged.items()], "--preset", preset.name]
    return (before, after), supplied


def _tokens(key: str, value: Any) -> list[str]:
    if isinstance(value, bool):
        return ["--" + key.replace("_", "-") if value else "--no-" + key.replace("_", "-")]
    return ["--" + key.replace("_", "-"), "none" if value is None else str(value)]


def line(cfg, supplied: dict[str, Any]) -> str:
    """The first line of a run: which preset, and which flags came from it."""
    if cfg.preset == "none":
        return "preset: none (every setting from the flags and the defaults)"
    if not supplied:
        return f"preset {cfg.preset}: every one of its settings was given as a flag"
    return (f"preset {cfg.preset} ({cfg.algo} on {cfg.env}; flags override it, --preset none drops "
            f"it): {as_flags(supplied)}")
