"""Typed, flat-ish run configuration: one pydantic model per stage, unknown keys rejected.

Configs travel between sites, so they are data only (YAML, never executed). Every stage model
derives from :class:`StrictModel` (``extra="forbid"``), and an unknown key fails with a
"did you mean" hint.

Example:
    >>> class Train(StrictModel):
    ...     steps: int = 100
    >>> Train.model_validate({"steps": 5}).steps
    5
    >>> apply_overrides({"train": {"steps": 5}}, ["train.steps=7"])
    {'train': {'steps': 7}}

A library message names a setting by its config key (:func:`config_key`); a command line
rewrites those names into its own options (:func:`with_flags`):

    >>> text = f"epsilon 9 is over the limit ({config_key('policy.max_epsilon')})"
    >>> text
    "epsilon 9 is over the limit (config key 'policy.max_epsilon')"
    >>> with_flags(text, {}, fallback=lambda key: f"--set {key}=...")
    'epsilon 9 is over the limit (--set policy.max_epsilon=...)'
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config model: unknown keys are errors, values validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the file and the key."""


#: The two places a setting lives: the run's config (YAML, ``--set``) and a node's own config
#: (``flower-supernode --node-config``, set at the hospital).
SCOPES: tuple[str, ...] = ("config", "node config", "input")
_KEY_REF = re.compile(r"\b(node config|config|input) key '([^'\s]+)'")


def _check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")


def config_key(key: str, scope: str = "config") -> str:
    """How a library message names a setting: ``config key 'policy.max_bytes'`` (the run's
    config), ``node config key 'override-audit'`` (a node's own config) or ``input key
    'holdout'`` (an argument of a library entry point, e.g. :func:`run_audit`'s held-out
    patients), so that each CLI can replace it by its own flag (:func:`with_flags`).

    Example:
        >>> config_key("override-audit", "node config")
        "node config key 'override-audit'"
    """
    _check_scope(scope)
    return f"{scope} key '{key}'"


def with_flags(message: str, flags: Mapping[str, str], scope: str = "config",
               fallback: Callable[[str], str] | None = None) -> str:
    """``message`` with every :func:`config_key` of ``scope`` that a command line sets
    replaced by its option (``flags``: key -> option text); keys not in ``flags`` become
    ``fallback(key)``, or stay as they are. Keys of the other scope are left alone.

    Example:
        >>> with_flags("refused; allow it (node config key 'override-audit')",
        ...            {"override-audit": "--override-audit-by WHO"}, scope="node config")
        'refused; allow it (--override-audit-by WHO)'
    """
    _check_scope(scope)

    def swap(found: re.Match[str]) -> str:
        where, key = found.group(1), found.group(2)
        if where != scope:
            return found.group(0)
        if key in flags:
            return flags[key]
        return fallback(key) if fallback is not None else found.group(0)

    return _KEY_REF.sub(swap, message)


def _explain(exc: ValidationError, model: type[BaseModel], source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            sub: Any = model
            for part in err["loc"][:-1]:
                field = getattr(sub, "model_fields", {}).get(part)
                sub = getattr(field, "annotation", None) if field else None
            valid = list(getattr(sub, "model_fields", {}) or [])
            close = difflib.get_close_matches(str(err["loc"][-1]), valid, n=1, cutoff=0.5)
            hint = f" did you mean '{close[0]}'?" if close else ""
            msg = f"unknown key.{hint} valid: {', '.join(valid)}" if valid else "unknown key"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def parse_value(text: str) -> Any:
    """Parse an override value as YAML scalar/list (``"0.25" -> 0.25``, ``"[1,2]" -> [1, 2]``)."""
    return yaml.safe_load(text)


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides to a nested dict (in place; also returned)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key.sub=value")
        key, value = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override '{item}': '{part}' is not a section")
            node = nxt
        node[parts[-1]] = parse_value(value)
    return data


def load_config(
    model: type[M],
    path: Path | None = None,
    overrides: Iterable[str] = (),
    base: Mapping[str, Any] | None = None,
) -> M:
    """Build ``model`` from an optional YAML file, then ``key=value`` overrides.

    Raises :class:`ConfigError` naming the file and every bad key at once.
    """
    data: dict[str, Any] = dict(base or {})
    source = "<defaults>"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
        data.update(loaded)
    overrides = list(overrides)
    if overrides:
        apply_overrides(data, overrides)
        source += " + overrides"
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, model, source)) from exc
