"""Compose the one Hydra config tree (configs/) for every entry point.

`load_config` turns every Hydra error (an override that does not parse, an unknown key, a missing option) into a
one-line `UsageError` that names the argument and the fix. Types and ranges are checked by
`aupretrain.settings.validate`.
"""
from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

from .errors import UsageError


def config_dir() -> Path:
    """The config tree: `aupretrain/configs/` (package data, so a plain `pip install` has it; the checkout's
    top-level `configs/` is a link to it); $AUPRETRAIN_CONFIG_DIR overrides."""
    env = os.environ.get("AUPRETRAIN_CONFIG_DIR")
    d = Path(env) if env else Path(__file__).resolve().parent / "configs"
    if not (d / "config.yaml").is_file():
        raise FileNotFoundError(f"config tree not found: {d}/config.yaml (set AUPRETRAIN_CONFIG_DIR)")
    return d


def _compose(overrides: Sequence[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


def load_config(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose configs/config.yaml with Hydra overrides (`key=value`, `group=option`, `experiment=smoke`).

    Raises:
        UsageError: an override Hydra refuses, or one `check_overrides` refuses (a deletion `~key` of a key the
            code reads, a key added with `+` where nothing reads it), in one line naming it."""
    from hydra.errors import HydraException

    try:
        cfg = _compose(overrides)
    except HydraException as e:
        raise UsageError(override_error(e, list(overrides))) from None
    check_overrides(list(overrides))
    return cfg


# Sections whose every key is read by the code from the config tree: a key added to one (`+data.batchsize=8`) is
# read by nothing, and the job would run as if it were not there. `OPEN` mappings in them take names of the user's
# (MLflow tags, evaluation splits). `deepspeed.*` is DeepSpeed's own config (`settings.check_deepspeed_keys`); a
# new top-level section may serve as variables to interpolate (`+paths.root=/data data.shards=${paths.root}/x`).
CLOSED = ("data", "train", "optim", "model", "objective", "eval", "run", "tracking", "storage", "pack", "synth")
OPEN = ("tracking.tags", "eval.splits")


def _closed(key: str) -> bool:
    return key.split(".", 1)[0] in CLOSED and not any(key == p or key.startswith(p + ".") for p in OPEN)


def _default_options() -> dict[str, str | None]:
    """{group: option} of config.yaml's defaults list (None: no option by default, e.g. experiment)."""
    main = OmegaConf.load(config_dir() / "config.yaml")
    out: dict[str, str | None] = {}
    for entry in main.get("defaults") or []:
        if isinstance(entry, (dict, DictConfig)):
            out.update({str(k): v for k, v in dict(entry).items()})
    return out


def _example(overrides: list[str], key: str) -> str:
    """` (e.g. key=<its value>)` with the value `key` has when composed from `overrides`, or "" (a section)."""
    try:
        v = OmegaConf.select(_compose(overrides), key, default=None)
    except Exception:  # noqa: BLE001 - the example is a courtesy (HydraException included)
        return ""
    if v is None or OmegaConf.is_dict(v):
        return ""
    if OmegaConf.is_list(v):
        v = OmegaConf.to_container(v, resolve=True)
    text = str(v).lower() if isinstance(v, bool) else str(v).replace(" ", "") if isinstance(v, list) else str(v)
    o = f"{key}={text}"
    return f" (e.g. {o if _parses(o) else quote_override(o)})"


def check_overrides(overrides: list[str]) -> None:
    """Refuse, in one line naming the override, what Hydra composes but the job could not use:

    - `~key` (delete) of a key of the config tree: the code reads it and has no default of its own (MLflow tags,
      and keys the same command adds with `+`, may be deleted);
    - `~group` of a config group chosen by default (model, objective, ...; `~experiment` is fine);
    - `+key=value` / `++key=value` adding a key under a `CLOSED` section: nothing would read it.

    Raises:
        UsageError: naming the override, why, and what to write instead."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:  # noqa: BLE001 - Hydra composed them: it parsed them
        return
    root = config_dir()
    added = {o.key_or_group for o in parsed if o.is_add() or o.is_force_add()}
    for o in parsed:
        key = o.key_or_group
        group = "/" in key or (root / key).is_dir()
        if key.split(".", 1)[0] == "hydra" or key.split("/", 1)[0] == "hydra":
            continue
        if o.is_delete() and group:
            chosen = _default_options().get(key)
            if chosen is None:
                continue
            options = " | ".join(sorted(f.stem for f in (root / key).glob("*.yaml")))
            raise UsageError(f"override {o.input_line}: {key} is a config group the code needs ({key}={chosen} by "
                             f"default): it cannot be deleted with ~; choose an option instead ({key}={options})")
        if o.is_delete():
            if key in added or key.startswith("tracking.tags."):  # a tag, or a key this command adds
                continue
            rest = [x for x in overrides if x != o.input_line]
            raise UsageError(f"override {o.input_line}: {key} has no default in code: it cannot be deleted with ~; "
                             f"set a value instead{_example(rest, key)}")
        if (o.is_add() or o.is_force_add()) and not group and _closed(key):
            if o.is_force_add():  # `++`: sets a key that is there, adds one that is not
                try:
                    base = _compose([x for x in overrides if x != o.input_line])
                    if OmegaConf.select(base, key, default=_ABSENT) is not _ABSENT:
                        continue
                except Exception:  # noqa: BLE001 - composed with it, composes without it
                    pass
            value = o.input_line.split("=", 1)[1] if "=" in o.input_line else "..."
            section = key.rsplit(".", 1)[0] if "." in key else key
            raise UsageError(f"override {o.input_line}: {key} is not a key of the config tree, and nothing reads a "
                             f"key added under {section} (the job would run as if it were not there); "
                             f"{_unknown_hint(key, f'{key}={value}', closed=True)}")


_ABSENT = object()


QUOTING = 'README, "Checked settings, and quoting override values"'


def _parses(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        OverridesParser.create().parse_overrides([override])
    except Exception:  # noqa: BLE001 - any parse failure
        return False
    return True


def quote_override(override: str) -> str:
    """`key=value` with the value quoted for Hydra, e.g. `data.shards="s3://bucket/year=2024/x"`: inside quotes
    Hydra takes `=`, `#`, `[`, `,`, `~`, spaces and any letters as they are. Double quotes unless the value holds
    `"` (then single quotes; both: `\\"` escaped)."""
    key, _, value = override.partition("=")
    if '"' not in value:
        q = '"'
    elif "'" not in value:
        q = "'"
    else:
        q, value = '"', value.replace('"', '\\"')
    if value.endswith("\\"):  # a backslash before the closing quote would escape it
        value += "\\"
    return f"{key}={q}{value}{q}"


def _quote_hint(override: str) -> str:
    hydra = quote_override(override)
    return (f"quote the value for Hydra: {hydra} - typed in a shell: {shlex.quote(hydra)} (a quoted value is "
            f"taken as it is; {QUOTING})")


def _where(e: Exception, override: str) -> str:
    """What Hydra's parser stumbled on, in words: "'=' at character 22"."""
    text = str(e)
    m = re.search(r"mismatched input '(.+?)' expecting", text) or re.search(r"extraneous input '(.+?)'", text)
    start = override.find("=") + 1  # the key parsed: the token is in the value
    if m and m.group(1) in override[start:]:
        return f"{m.group(1)!r} at character {override.index(m.group(1), start) + 1}"
    m = re.search(r"LexerNoViableAltException: (.*)\n( *)\^", text)
    if m:
        col = len(m.group(2)) - len("LexerNoViableAltException: ")
        if 0 <= col < len(override):
            return f"{override[col]!r} at character {col + 1}"
    first = " ".join(text.split("See https://")[0].split())
    return first or type(e).__name__


def default_config() -> dict:
    """The config tree composed without overrides, as a plain dict (for error messages only)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return OmegaConf.to_container(compose(config_name="config"), resolve=True)
    finally:
        GlobalHydra.instance().clear()


def _known_keys() -> list[str]:
    base = default_config()
    out: list[str] = []

    def walk(d, prefix):
        for k, v in d.items():
            out.append(prefix + str(k))
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")

    walk(base, "")
    return out


def _options_with(key: str) -> list[str]:
    """`group=option` for each option file of the key's group that has the key (`objective.queue_size`:
    objective=moco), read as written (not composed)."""
    section, _, rest = key.partition(".")
    folder = config_dir() / section
    out = []
    if rest and folder.is_dir():
        for f in sorted(folder.glob("*.yaml")):
            try:
                if OmegaConf.select(OmegaConf.load(f), rest, default=None) is not None:
                    out.append(f"{section}={f.stem}")
            except Exception:  # noqa: BLE001 - an option file that does not load: not this key's
                continue
    return out


def _near_keys(key: str) -> list[str]:
    """The keys of the config tree `key` most likely means: the closest of its own section, else keys with the
    same last part (the section left out or another one's), else the closest anywhere (at most 2)."""
    import difflib

    keys = _known_keys()
    parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
    if parent:
        own = [k for k in keys if k.startswith(parent) and "." not in k[len(parent):]]
        near = difflib.get_close_matches(key, own, n=1, cutoff=0.75)
        if near:
            return near
    same = [k for k in keys if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1] and k != key]
    return difflib.get_close_matches(key, same, n=2, cutoff=0) or difflib.get_close_matches(key, keys, n=2,
                                                                                          cutoff=0.75)


def _unknown_hint(key: str, override: str, closed: bool) -> str:
    """What to write instead of `override` (`key=value`), whose key the config tree does not have: the option that
    has it, else the key(s) meant (the override rewritten), else - where a new key is read by something (not a
    `CLOSED` section) - the `+` form."""
    value = override.split("=", 1)[1] if "=" in override else "..."
    groups = _options_with(key)
    if groups:
        return f"it is a key of {' and '.join(groups)}: choose that option first (e.g. {groups[0]} {override})"
    near = _near_keys(key)
    if near:
        fixed = f"{near[0]}={value}"
        return (f"did you mean {' or '.join(near)}? write {'e.g. ' if len(near) > 1 else ''}"
                f"{fixed if _parses(fixed) else quote_override(fixed)}")
    if closed:
        section = key.split(".", 1)[0]
        return (f"{section} takes no new keys (nothing would read one): set one of its keys (aupretrain-train --cfg "
                "shows them)")
    return f"to add a key the tree does not have, write +{override}"


def override_error(e: Exception, overrides: list[str]) -> str:
    """One line for a Hydra composition error: the override at fault and what to type instead."""
    text = str(e)
    for o in overrides:
        if not _parses(o):
            if "=" not in o:
                return (f"argument {o!r} is not an override: expected key=value (e.g. train.steps=100) or "
                        "group=option (e.g. experiment=smoke)")
            key = o.split("=", 1)[0]
            if not _parses(f"{key}=x"):
                return f"override {o}: {key!r} is not a config key (letters, digits, _ and . only; {_where(e, o)})"
            return (f"override {o}: Hydra cannot parse the value ({_where(e, o)}); {_quote_hint(o)}")
    m = re.search(r"Ambiguous value for argument '(.+?)'", text)
    if m:  # a comma: a list, or a sweep Hydra refuses without --multirun
        o = m.group(1)
        return f"override {o}: a value with ',' is ambiguous to Hydra (a list is written key=[a,b]); {_quote_hint(o)}"
    m = re.search(r"Could not override '(.+?)'", text)
    if m:
        key = m.group(1)
        o = next((x for x in overrides if x.split("=", 1)[0].lstrip("~") == key), key)
        return (f"override {o}: unknown key {key!r} (not in the config tree {config_dir()}); "
                f"{_unknown_hint(key, o.lstrip('~'), closed=_closed(key))}")
    m = re.search(r"An item is already at '(.+?)'", text)
    if m:  # `+key=v` where the key is there: blame the `+` override, not another that set the same key
        key = m.group(1)
        plus = [x for x in overrides if x.startswith("+") and not x.startswith("++")
                and x.lstrip("+").split("=", 1)[0] == key]
        o = plus[-1] if plus else next((x for x in overrides if x.lstrip("+").split("=", 1)[0] == key), key)
        return f"override {o}: {key} exists already; write {o.lstrip('+')} (without +) to change it"
    m = re.search(r"Could not find '(.+?)/(.+?)'", text)
    if m:
        group, option = m.groups()
        options = ", ".join(getattr(e, "options", None) or []) or "none"
        return (f"override {group}={option}: no such option in {config_dir() / group}/ (available: {options}); "
                f"choose one of them or add {config_dir() / group / option}.yaml")
    return " ".join(text.split("Config search path")[0].split())


def flatten(cfg: DictConfig | dict, prefix: str = "") -> dict[str, str]:
    """Flat {dotted.key: value} for MLflow params."""
    d = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = str(v)
    return out
