"""The settings users get wrong, checked before anything starts: types, ranges and choices from one table
(`SCHEMA`), and `data.shards` naming a packed dataset. Each refusal is one `UsageError` line naming the key, the
bad value and a value that works. (Composing the config and Hydra's override errors: `aupretrain.config`.)
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from .config import QUOTING
from .errors import UsageError
from .settings_schema import BOOL, SCHEMA, _show


def validate(cfg: DictConfig | dict, sections: Sequence[str] | None = None, training: bool = False,
             flags: dict[str, str] | None = None) -> None:
    """Check the settings of `SCHEMA` under `sections` (top-level keys; None: all), the settings that must agree
    (`model.norm_groups` and the widths it divides, the decoder's size; `run.dir` and `tracking.uri` given empty)
    and, with `training`, that every key the config tree always defines is there (`check_present`: none deleted
    with `~key`), that no key under `deepspeed` is one DeepSpeed does not read (`check_deepspeed_keys`), that the
    MLflow store (`tracking.uri`, else $MLFLOW_TRACKING_URI) is one MLflow can use (`check_tracking_store`) and
    that `data.shards` names a packed dataset (a local folder must exist and hold manifest.json; an s3:// prefix is
    checked by the loader). `flags`: {key: command-line flag} to name a flag where it set the value.

    Raises:
        UsageError: one line naming the key, the bad value and what to set instead.
    """
    from .settings_checks import _check_together, check_deepspeed_keys, check_present
    from .track.store import check_tracking_store

    flags = flags or {}
    if training:  # a key deleted with `~key` (before resolving: other values may interpolate from it)
        check_present(OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg, sections)
    if isinstance(cfg, DictConfig):  # first the values as written: a bad choice that others interpolate from
        _check(OmegaConf.to_container(cfg, resolve=False), sections, flags, as_written=True)  # (eval.split)
    try:
        d = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    except Exception as e:  # noqa: BLE001 - an interpolation that does not resolve (omegaconf errors)
        key = getattr(e, "full_key", None) or "a setting"
        msg = str(e).splitlines()[0]
        raise UsageError(f"{key}: {msg}; a literal '${{' in a value is written '\\${{' (e.g. "
                         f"data.shards='s3://b/\\${{x}}'), {QUOTING}") from None
    _check(d, sections, flags)
    _check_together(d, sections)
    if training:
        if sections is None or "deepspeed" in sections:
            check_deepspeed_keys(d.get("deepspeed"))
        t = d.get("tracking")
        if (sections is None or "tracking" in sections) and isinstance(t, dict) and t.get("enabled", True):
            check_tracking_store(d)
        check_shards_setting(d["data"]["shards"])


@functools.lru_cache(maxsize=None)
def tree_items() -> tuple[tuple[str, Any], ...]:
    """(dotted key, value) of every key in every YAML file of the config tree — a group's file under its group
    (`objective/clp.yaml`'s `cir.flow` as `objective.cir.flow`), `# @package _global_` files at the root; sections
    too (their value a dict); `defaults` lists left out."""
    from .config import config_dir

    out: list[tuple[str, Any]] = []

    def walk(node: Any, prefix: str) -> None:
        for k, v in node.items():
            if k == "defaults":
                continue
            out.append((f"{prefix}{k}", v))
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")

    root = config_dir()
    for f in sorted(root.rglob("*.yaml")):
        group = f.parent.relative_to(root).as_posix()
        glob = group == "." or f.read_text().lstrip().startswith("# @package _global_")
        node = OmegaConf.to_container(OmegaConf.load(f), resolve=False)
        if isinstance(node, dict):
            walk(node, "" if glob else group.replace("/", ".") + ".")
    return tuple(out)


@functools.lru_cache(maxsize=None)
def bool_keys() -> frozenset[str]:
    """Every dotted key that is true/false in the config tree's YAML files (`tree_items`) and never anything else
    there: switches, which `validate` holds to true/false beside `SCHEMA` (Hydra reads `maybe` or `no` as a string,
    which Python's bool() would take as true)."""
    kinds: dict[str, set[bool]] = {}
    for key, v in tree_items():
        if not isinstance(v, dict):
            kinds.setdefault(key, set()).add(isinstance(v, bool))
    return frozenset(k for k, seen in kinds.items() if seen == {True})


def _check(d: dict, sections: Sequence[str] | None, flags: dict[str, str], as_written: bool = False) -> None:
    """`validate`'s check of every `SCHEMA` key, and of every switch of `bool_keys()` (as BOOL), present in `d`
    under `sections`; `as_written`: `d` is the config unresolved, and values that interpolate (`${...}`) are left to
    the resolved pass. Raises UsageError."""
    specs = {**{k: BOOL for k in bool_keys()}, **SCHEMA}
    for key, spec in specs.items():
        if sections is not None and key.split(".", 1)[0] not in sections:
            continue
        node: Any = d
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            if as_written and _interpolates(node):
                continue
            if not spec.ok(node):
                flag = f" ({flags[key]})" if key in flags else ""
                listed = spec.kind in ("pair", "ints", "numbers") and isinstance(node, list)
                typed = isinstance(node, (str, list, dict)) and not listed
                kind = f" (a {type(node).__name__})" if typed else ""
                raise UsageError(f"{key}={_show(node)}{flag}{kind}: must be {spec.need()}; "
                                 f"set e.g. {spec.example(key)}")


def _interpolates(node: Any) -> bool:
    """Whether a value as written holds an interpolation (`${...}`), itself or in a list's items."""
    if isinstance(node, str):
        return "${" in node
    return isinstance(node, list) and any(_interpolates(x) for x in node)


def check_shards_setting(shards: Any) -> None:
    """`data.shards` must name a packed dataset: an s3:// prefix, or a local folder holding a manifest.json that
    `Manifest.from_json` accepts (JSON of the format, fields of their types, shards listed)."""
    fix = "set data.shards to a folder or s3://bucket/prefix written by aupretrain-pack"
    if shards is None or str(shards).strip() == "":
        raise UsageError(f"data.shards is {'empty' if shards == '' else 'not set'}: {fix}")
    s = str(shards)
    if s.startswith("s3://"):
        if not s[len("s3://"):].split("/", 1)[0]:
            raise UsageError(f"data.shards={s}: no bucket named; {fix}")
        return
    p = Path(s)
    if not p.exists():
        raise UsageError(f"data.shards={_show(s)}: no such folder ({p.resolve()}); {fix}")
    if not (p / "manifest.json").is_file():
        raise UsageError(f"data.shards={_show(s)}: {p.resolve()} holds no manifest.json (not a packed dataset, or its "
                         f"packing has not finished); {fix}, or run aupretrain-pack again to finish it")
    from .data.shards import MANIFEST, Manifest  # (the trainer imports it next anyway)

    f = p / MANIFEST
    try:
        text = f.read_text()
    except UnicodeDecodeError:
        raise UsageError(f"{f}: not valid JSON (not UTF-8 text); pack the dataset again (aupretrain-pack)") from None
    except OSError:  # unreadable: the loader says so, as for s3://
        return
    Manifest.from_json(text, str(f))  # a manifest that cannot be used: before any run folder or worker


_CHECKS = ("_check_together", "check_deepspeed_keys", "check_present")


def __getattr__(name: str):
    """The checks of settings against each other and the world live in `settings_checks` (which uses this module's
    table and helpers); they are reachable here too, imported on first use (no import cycle)."""
    if name in _CHECKS:
        from . import settings_checks

        return getattr(settings_checks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
