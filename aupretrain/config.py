"""Compose the one Hydra config tree (configs/) for every entry point, and check the settings users get wrong.

`load_config` turns every Hydra error (an override that does not parse, an unknown key, a missing option) into a
one-line `UsageError` that names the argument and the fix; `validate` checks types and ranges from one table
(`SCHEMA`) before anything starts.
"""
from __future__ import annotations

import math
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

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


def _defaults() -> dict:
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
    base = _defaults()
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


@dataclass(frozen=True)
class Spec:
    """What one setting must be: `kind` int | number | bool | choice | pair (two numbers lo <= a <= b <= hi),
    bounds `lo`/`hi` (inclusive; `above`: lo excluded), `choices`, `null` (None allowed), and `what` it means."""
    kind: str
    lo: float | None = None
    hi: float | None = None
    above: bool = False
    choices: tuple = ()
    null: bool = False
    what: str = ""

    def need(self) -> str:
        if self.kind == "choice":
            s = "one of " + ", ".join(map(str, self.choices))
        elif self.kind == "bool":
            s = "true or false"
        else:
            s = {"int": "a whole number", "number": "a number", "pair": "two numbers [a, b] with a <= b"}[self.kind]
            lo = f"{'>' if self.above else '>='} {self.lo:g}" if self.lo is not None else ""
            hi = f"<= {self.hi:g}" if self.hi is not None else ""
            if lo or hi:
                s += (", each " if self.kind == "pair" else " ") + " and ".join(x for x in (lo, hi) if x)
        return s + (" or null" if self.null else "") + (f" ({self.what})" if self.what else "")

    def example(self, key: str) -> str:
        """`key=<a valid value>`: the config tree's default when it is valid, else one built from the bounds."""
        try:
            node: Any = _defaults()
            for part in key.split("."):
                node = node[part]
            if node is not None and self.ok(node):
                return f"{key}={_show(node).replace(' ', '')}"
        except Exception:  # noqa: BLE001 - a key only an option group has: build one
            pass
        if self.kind == "choice":
            return f"{key}={self.choices[0]}"
        if self.kind == "bool":
            return f"{key}=true"
        if self.kind == "pair":
            lo, hi = self.lo or 0, self.hi if self.hi is not None else 1
            return f"{key}=[{lo:g},{hi:g}]"
        v = self.lo if self.lo is not None else 0
        if self.above:
            v = v + 1 if self.kind == "int" else (v or 0) + (0.1 if self.hi is not None and self.hi <= 1 else 1)
        return f"{key}={int(v) if self.kind == 'int' else v:g}"

    def ok(self, v: Any) -> bool:
        if v is None:
            return self.null
        if self.kind == "bool":
            return isinstance(v, bool)
        if self.kind == "choice":
            return isinstance(v, (str, int)) and not isinstance(v, bool) and v in self.choices
        vals = list(v) if self.kind == "pair" and isinstance(v, (list, tuple)) else [v]
        if self.kind == "pair" and (len(vals) != 2 or not _num(vals[0]) or not _num(vals[1]) or vals[0] > vals[1]):
            return False
        for x in vals:
            if not _num(x) or (self.kind == "int" and not isinstance(x, int)):
                return False
            if self.lo is not None and (x <= self.lo if self.above else x < self.lo):
                return False
            if self.hi is not None and x > self.hi:
                return False
        return True


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _int(lo: float | None = 0, hi: float | None = None, null: bool = False, what: str = "") -> Spec:
    return Spec("int", lo, hi, null=null, what=what)


def _num_spec(lo: float | None = None, hi: float | None = None, above: bool = False, null: bool = False,
              what: str = "") -> Spec:
    return Spec("number", lo, hi, above, null=null, what=what)


def _choice(*choices, what: str = "") -> Spec:
    return Spec("choice", choices=choices, what=what)


BOOL = Spec("bool")
UNIT = Spec("pair", 0.0, 1.0)
POSITIVE = Spec("pair", 0.0)
# The settings users get wrong, checked by `validate` before anything starts (keys absent from the composed config,
# e.g. objective.temperature under objective=supervised, are skipped). Deeper checks stay where the knowledge is:
# a method's own settings (`methods/*.check`), resume compatibility (`engine/resume.py`), the shards themselves.
SCHEMA: dict[str, Spec] = {
    "run.seed": _int(None),
    "data.batch_size": _int(1, what="clips per rank per micro-step"),
    "data.input_size": _int(8, what="model input, pixels"),
    "data.loader": _choice("auto", "dali", "torch"),
    "data.device": _choice("auto", "gpu", "cpu"),
    "data.num_threads": _int(1),
    "data.prefetch": _int(1),
    "data.shuffle_buffer": _int(1, what="clips"),
    "data.verify_checksums": BOOL,
    "data.augment.scale": Spec("pair", 0.0, 1.0, above=True, what="area fraction of the random crop"),
    "data.augment.rotate": _num_spec(0, 180, what="degrees"),
    "data.augment.brightness": POSITIVE,
    "data.augment.contrast": POSITIVE,
    "data.augment.saturation": POSITIVE,
    "data.augment.hue": _num_spec(0, 180, what="degrees"),
    "data.augment.blur_sigma": POSITIVE,
    "train.steps": _int(1, what="optimizer steps"),
    "train.log_every": _int(1),
    "train.checkpoint_every": _int(0, what="0: only at the end"),
    "train.signal_check_every": _int(1),
    "train.keep_checkpoints": _int(0, what="0: all"),
    "train.stop_at": _int(1, null=True),
    "train.eval_at_end": BOOL,
    "train.torch_threads": _int(1, null=True),
    "train.collective_timeout_s": _num_spec(0, above=True, null=True, what="seconds"),
    "train.online_probe.every": _int(0, what="0: off"),
    "train.online_probe.identities": _int(2),
    "train.online_probe.frames": _int(1),
    "train.online_probe.probe_steps": _int(1),
    "optim.name": _choice("adamw", "lars", "lamb"),
    "optim.lr": _num_spec(0, what="peak learning rate"),
    "optim.lr_scaling": _choice("none", "linear", "sqrt"),
    "optim.reference_batch": _int(1),
    "optim.weight_decay": _num_spec(0),
    "optim.betas": Spec("pair", 0.0, 1.0),
    "optim.momentum": _num_spec(0, 1),
    "optim.warmup_steps": _int(0),
    "optim.min_lr_ratio": _num_spec(0, 1),
    "deepspeed.zero_optimization.stage": _choice(0, 1, 2, 3),
    "deepspeed.gradient_accumulation_steps": _int(1),
    "deepspeed.gradient_clipping": _num_spec(0),
    "model.norm": _choice("group", "batch"),
    "model.au_grid": _int(0),
    "model.au_dim": _int(1),
    "model.id_dim": _int(1),
    "objective.name": _choice("clp", "tcl", "simclr", "moco", "supervised"),
    "objective.temperature": _num_spec(0, above=True),
    "objective.margin": _num_spec(0),
    "objective.window": _int(0, what="frames"),
    "objective.cir.frames": _int(0, what="frames per clip for reconstruction, 0: all"),
    "objective.queue_size": _int(1),
    "objective.momentum": _num_spec(0, 1),
    "tracking.enabled": BOOL,
    "tracking.start_timeout_s": _num_spec(0, what="seconds"),
    "tracking.retry_max_s": _num_spec(0, above=True, what="seconds"),
    "tracking.max_pending": _int(1),
    "tracking.flush_timeout_s": _num_spec(0, what="seconds"),
    "tracking.system_metrics_every_s": _num_spec(0, what="seconds, 0: off"),
    "eval.dataset": _choice("synthetic", "bp4d", "disfa", "gft"),
    "eval.protocol": _choice("linear", "finetune"),
    "eval.select": _choice("auto", "none", "validation"),
    "eval.identities": _int(2),
    "eval.videos_per_identity": _int(1),
    "eval.frames": _int(1),
    "eval.frame_stride": _int(1),
    "eval.folds": _int(2),
    "eval.au_threshold": _num_spec(0, 1),
    "eval.validation_fraction": _num_spec(0, 1, above=True),
    "eval.batch_size": _int(1),
    "eval.probe.steps": _int(1),
    "eval.probe.lr": _num_spec(0, above=True),
    "eval.probe.batch_size": _int(1),
    "synth.identities": _int(1),
    "synth.videos_per_identity": _int(1),
    "synth.frames": _int(1),
    "synth.first_identity": _int(0),
    "synth.fps": _num_spec(0, above=True),
    "synth.size": _int(8, what="pixels"),
    "synth.workers": _int(0, what="0: one per core"),
    "pack.clip_len": _int(1, what="frames per clip"),
    "pack.stride": _int(1, what="frames between the frames of a clip"),
    "pack.clip_step": _int(1, null=True, what="frames between clip starts"),
    "pack.size": _int(8, what="pixels"),
    "pack.fps": _num_spec(0, above=True, null=True),
    "pack.frames_fps": _num_spec(0, above=True),
    "pack.samples_per_shard": _int(1),
    "pack.shuffle_buffer": _int(1, what="clips"),
    "pack.jpeg_quality": _int(1, 100),
    "pack.workers": _int(0, what="0: one per core"),
    "pack.align": _choice("detect", "center"),
    "pack.detector": _choice("mtcnn", "haar"),
    "pack.main_face": _choice("largest", "central"),
    "pack.detect_every": _int(1),
    "pack.landmarks_every": _int(1),
    "pack.min_face": _num_spec(0, 1, above=True),
    "pack.smooth_sigma": _num_spec(0),
}


def _show(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, str):
        return repr(v) if v == "" or not re.fullmatch(r"[\w./:+@-]+", v) else v
    return str(v)


def validate(cfg: DictConfig | dict, sections: Sequence[str] | None = None, training: bool = False,
             flags: dict[str, str] | None = None) -> None:
    """Check the settings of `SCHEMA` under `sections` (top-level keys; None: all) and, with `training`, that
    `data.shards` names a packed dataset (a local folder must exist and hold manifest.json; an s3:// prefix is
    checked by the loader). `flags`: {key: command-line flag} to name a flag where it set the value.

    Raises:
        UsageError: one line naming the key, the bad value and what to set instead.
    """
    flags = flags or {}
    try:
        d = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    except Exception as e:  # noqa: BLE001 - an interpolation that does not resolve (omegaconf errors)
        key = getattr(e, "full_key", None) or "a setting"
        msg = str(e).splitlines()[0]
        raise UsageError(f"{key}: {msg}; a literal '${{' in a value is written '\\${{' (e.g. "
                         f"data.shards='s3://b/\\${{x}}'), {QUOTING}") from None
    for key, spec in SCHEMA.items():
        if sections is not None and key.split(".", 1)[0] not in sections:
            continue
        node: Any = d
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            if not spec.ok(node):
                flag = f" ({flags[key]})" if key in flags else ""
                typed = isinstance(node, (str, list, dict))
                kind = f" (a {type(node).__name__})" if typed else ""
                raise UsageError(f"{key}={_show(node)}{flag}{kind}: must be {spec.need()}; "
                                 f"set e.g. {spec.example(key)}")
    if training:
        check_shards_setting(d["data"]["shards"])


def check_shards_setting(shards: Any) -> None:
    """`data.shards` must name a packed dataset: an s3:// prefix, or a local folder holding manifest.json."""
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
