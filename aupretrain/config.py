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


def load_config(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose configs/config.yaml with Hydra overrides (`key=value`, `group=option`, `experiment=smoke`)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides))
    except HydraException as e:
        raise UsageError(override_error(e, list(overrides))) from None
    finally:
        GlobalHydra.instance().clear()
    return cfg


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


def override_error(e: Exception, overrides: list[str]) -> str:
    """One line for a Hydra composition error: the override at fault and what to type instead."""
    import difflib

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
        keys = _known_keys()
        same = [k for k in keys if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]]  # the section left out
        near = difflib.get_close_matches(key, same, n=2, cutoff=0) or difflib.get_close_matches(key, keys, n=2,
                                                                                                  cutoff=0.75)
        groups = _options_with(key)
        if groups:
            hint = f"it is a key of {' and '.join(groups)}: choose that option first (e.g. {groups[0]} {o}); "
        else:
            hint = f"did you mean {' or '.join(near)}? " if near else ""
        return (f"override {o}: unknown key {key!r} (not in the config tree {config_dir()}); {hint}"
                f"to add a key the tree does not have, write +{o.lstrip('~')}")
    m = re.search(r"An item is already at '(.+?)'", text)
    if m:
        key = m.group(1)
        o = next((x for x in overrides if x.lstrip("+").split("=", 1)[0] == key), key)
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
