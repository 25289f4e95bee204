"""The settings that must agree with each other or with the world outside the config tree, for
`settings.validate`: model shapes checked together (`model.norm_groups` and the widths it divides, the decoder's
size), keys the tree always defines and a `~key` deleted (`check_present`), `deepspeed.*` keys DeepSpeed does not
read (`check_deepspeed_keys`); the MLflow store's checks live in `track/store.py`. Each raises
UsageError with one line naming the key, the value and what to set instead."""
from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf

from .config import default_config
from .errors import UsageError
from .settings import tree_items
from .settings_schema import SCHEMA, _num, _show


_MISSING = object()


def _on(key: str, sections: Sequence[str] | None) -> bool:
    return sections is None or key.split(".", 1)[0] in sections


def _get(d: Any, key: str, default: Any = _MISSING) -> Any:
    """The value at dotted `key` of nested dicts `d`, else `default`."""
    node = d
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _divides(groups: int, channels: int) -> bool:
    """Whether `norm_layer`'s GroupNorm(min(groups, channels), channels) can be built."""
    return groups >= channels or channels % groups == 0


def _groups_that_fit(groups: int, channels: Sequence[int]) -> int:
    """The largest number of groups <= `groups` that every width of `channels` takes (1 at worst)."""
    return next(g for g in range(groups, 0, -1) if all(_divides(g, c) for c in channels))


def _check_template(t: Any) -> None:
    """`pack.template`: 5 points [x, y] in [0, 1] (fractions of the crop side; MTCNN's eyes, nose tip, mouth corners)
    spread over the face — the similarity that maps the landmarks onto them needs points that are not all one.
    Raises UsageError."""
    example = "[[0.375,0.42],[0.625,0.42],[0.5,0.56],[0.395,0.71],[0.605,0.71]]"
    points = t if isinstance(t, (list, tuple)) else []
    ok = len(points) == 5 and all(isinstance(q, (list, tuple)) and len(q) == 2 and all(_num(x) and 0 <= x <= 1
                                                                                     for x in q) for q in points)
    if ok:
        xs, ys = [q[0] for q in points], [q[1] for q in points]
        ok = max(xs) - min(xs) >= 0.05 and max(ys) - min(ys) >= 0.05
    if not ok:
        raise UsageError(f"pack.template={_show(t)}: must be 5 points [x, y], each between 0 and 1 (fractions of "
                         f"the crop side: left eye, right eye, nose tip, left and right mouth corner) and spread over "
                         f"the face; the default is pack.template={example}")


def _check_together(d: dict, sections: Sequence[str] | None) -> None:
    """`validate`'s checks of settings that must agree with each other, and of paths given empty where null (or
    leaving the key out) means the default. Raises UsageError."""
    empty = {"run.dir": "give a folder, or leave run.dir out (null) for a new folder <run.root>/<run.name>-<time>",
             "run.root": "give a folder (the default: runs)",
             "tracking.uri": "give a store (sqlite:///<path>/mlflow.db or http(s)://host:port), or leave tracking.uri "
                             "out (null) for $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db"}
    for key, fix in empty.items():
        v = _get(d, key, None)
        if _on(key, sections) and isinstance(v, str) and not v.strip():
            raise UsageError(f"{key} is {'empty' if v == '' else repr(v)} (an unset shell variable, as in "
                             f"{key}=${key.replace('.', '_').upper()}?): {fix}")
    if _on("pack", sections) and _get(d, "pack.template", None) is not None:
        _check_template(_get(d, "pack.template"))
    m = d.get("model") if _on("model", sections) else None
    if not isinstance(m, dict):
        return
    ok = {k: k in m and SCHEMA[f"model.{k}"].ok(m[k]) for k in ("widths", "blocks", "stem_width", "norm_groups")}
    if ok["widths"] and ok["blocks"] and len(m["widths"]) != len(m["blocks"]):
        raise UsageError(f"model.widths={_show(m['widths'])} ({len(m['widths'])} stages) and model.blocks="
                         f"{_show(m['blocks'])} ({len(m['blocks'])}) differ in length: give one block count per width "
                         f"(e.g. model.blocks=[{','.join(['1'] * len(m['widths']))}])")
    group = m.get("norm") == "group"
    if group and ok["widths"] and ok["stem_width"] and ok["norm_groups"]:
        g, chans = m["norm_groups"], [m["stem_width"], *m["widths"]]
        bad = [c for c in chans if not _divides(g, c)]
        if bad:
            widths = f"model.stem_width={m['stem_width']}, model.widths={_show(m['widths'])}"
            raise UsageError(f"model.norm_groups={g}: with model.norm=group it must divide every channel width of the "
                             f"trunk ({widths}), and {bad[0]} is not a multiple of {g}; set e.g. model.norm_groups="
                             f"{_groups_that_fit(g, chans)} (it divides them all), or model.norm=batch")
    o = d.get("objective") if isinstance(d.get("objective"), dict) else {}
    cir = o.get("cir") if isinstance(o.get("cir"), dict) else {}
    linear_flow = bool(cir.get("flow")) and _num(cir.get("flow_grid", 0)) and cir.get("flow_grid", 0) > 0
    dec = m.get("decoder")
    if o.get("name") != "clp" or linear_flow or not isinstance(dec, dict):  # CIR's conv decoder is not built
        return
    dw, start, dg = dec.get("widths"), dec.get("start"), dec.get("norm_groups")
    specs = {k: SCHEMA[f"model.decoder.{k}"] for k in ("widths", "start", "norm_groups")}
    if group and specs["widths"].ok(dw) and specs["norm_groups"].ok(dg):
        normed = dw[1:] or dw[:1]  # the first width is the linear layer's map, before any norm
        bad = [c for c in normed if not _divides(dg, c)]
        if bad:
            raise UsageError(f"model.decoder.norm_groups={dg}: with model.norm=group it must divide every channel "
                             f"width of CIR's decoder after the first (model.decoder.widths={_show(dw)}), and {bad[0]} "
                             f"is not a multiple of {dg}; set e.g. model.decoder.norm_groups="
                             f"{_groups_that_fit(dg, normed)} (it divides them all)")
    size = _get(d, "data.input_size", None)
    if specs["start"].ok(start) and SCHEMA["data.input_size"].ok(size) and start > size:
        raise UsageError(f"model.decoder.start={start}: the decoder's first map is larger than the image it makes "
                         f"(data.input_size={size}); set e.g. model.decoder.start={min(4, size)} (it doubles each "
                         "stage up to data.input_size)")


@functools.lru_cache(maxsize=None)
def required_keys() -> tuple[str, ...]:
    """Every dotted key the config tree defines whatever options are chosen: the keys of config.yaml itself, and
    for each group its default list names, the keys every option file of that group has (an option's own
    `defaults` of the same group included: `resnet_small` has `resnet18`'s keys). Sorted (a section before its
    keys). Deleting one (`~key`) leaves the code without a value it reads."""
    from .config import config_dir

    root = config_dir()

    def keys(node: Any, prefix: str = "") -> set[str]:
        out: set[str] = set()
        if isinstance(node, dict):
            for k, v in node.items():
                if k != "defaults":
                    out.add(f"{prefix}{k}")
                    out |= keys(v, f"{prefix}{k}.")
        return out

    def option(folder: Path, name: str, seen: frozenset = frozenset()) -> set[str]:
        f = folder / f"{name}.yaml"
        if name in seen or not f.is_file():
            return set()
        node = OmegaConf.to_container(OmegaConf.load(f), resolve=False)
        out = keys(node)
        for entry in (node.get("defaults") or []) if isinstance(node, dict) else []:
            if isinstance(entry, str) and entry != "_self_":  # an option of the same group it builds on
                out |= option(folder, entry, seen | {name})
        return out

    main = OmegaConf.to_container(OmegaConf.load(root / "config.yaml"), resolve=False)
    out = keys(main)
    for entry in main.get("defaults") or []:
        if not isinstance(entry, dict):
            continue
        for group, chosen in entry.items():
            folder = root / group
            if chosen is None or not folder.is_dir():  # experiment: null
                continue
            opts = [f.stem for f in sorted(folder.glob("*.yaml"))
                    if not f.read_text().lstrip().startswith("# @package")]
            common = set.intersection(*(option(folder, o) for o in opts)) if opts else set()
            out |= {group} | {f"{group}.{k}" for k in common}
    return tuple(sorted(out))


def check_present(d: dict, sections: Sequence[str] | None = None) -> None:
    """Every key of `required_keys()` under `sections` is in the config `d` (a plain dict): a key the code reads has
    no default in code, so deleting it (Hydra's `~key`) is refused before anything starts.

    Raises:
        UsageError: naming the key and a value to set instead."""
    for key in required_keys():
        if not _on(key, sections):
            continue
        parent, _, leaf = key.rpartition(".")
        node = _get(d, parent, None) if parent else d
        if isinstance(node, dict) and leaf not in node:
            eg = ""
            if key in SCHEMA:
                eg = f" (e.g. {SCHEMA[key].example(key)})"
            else:
                try:
                    v = _get(default_config(), key)
                    if v is not _MISSING and not isinstance(v, dict):
                        eg = f" (e.g. {key}={_show(v).replace(' ', '')})"
                except Exception:  # noqa: BLE001 - the example is a courtesy
                    pass
            raise UsageError(f"{key} has no default in code: it cannot be deleted with ~ (~{key}); set a value "
                             f"instead{eg}")


def _levenshtein(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _package_root(name: str) -> Path | None:
    """The folder of installed package `name`, found without importing it (DeepSpeed takes 4 s); None when absent."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


@functools.lru_cache(maxsize=None)
def _deepspeed_source() -> tuple[str, frozenset[str], frozenset[str]] | None:
    """(DeepSpeed's version, every quoted snake_case word of its source (a superset of the config keys it reads),
    the values of its `constants.py` files (its config keys, for suggestions)), read without importing it (4 s);
    None when it is not installed."""
    import importlib.metadata

    root = _package_root("deepspeed")
    if root is None:
        return None
    words: set[str] = set()
    consts: set[str] = set()
    for f in root.rglob("*.py"):
        text = f.read_text(errors="ignore")
        words.update(re.findall(r"[\"']([a-z][a-z0-9_]*)[\"']", text))
        if f.name in ("constants.py", "config.py"):
            consts.update(re.findall(r"^[A-Z][A-Z0-9_]*\s*=\s*[\"']([a-z][a-z0-9_]*)[\"']", text, re.M))
    try:
        version = importlib.metadata.version("deepspeed")
    except importlib.metadata.PackageNotFoundError:
        version = "?"
    return version, frozenset(words), frozenset(consts)


@functools.lru_cache(maxsize=None)
def _tree_keys() -> frozenset[str]:
    """Every dotted key any YAML file of the config tree has (`settings.tree_items`)."""
    return frozenset(k for k, _ in tree_items())


def check_deepspeed_keys(ds: Any) -> None:
    """`deepspeed.*` is passed to DeepSpeed as its config, which ignores a key it does not know: a top-level key
    the config tree does not have must be one DeepSpeed reads (a word of its source), and not a near miss of one of
    its config keys (Levenshtein distance <= 2: `zero_optimisation`). Without DeepSpeed installed, only near misses
    of the tree's own keys are refused.

    Raises:
        UsageError: naming the key and, where there is one, the DeepSpeed key meant."""
    if not isinstance(ds, dict):
        return
    tree = _tree_keys()
    unknown = [k for k in ds if f"deepspeed.{k}" not in tree]
    if not unknown:
        return
    source = _deepspeed_source()
    words = source[1] if source else frozenset()
    names = {k.split(".", 1)[1] for k in tree if k.startswith("deepspeed.") and k.count(".") == 1}
    names |= set(source[2]) if source else set()
    for k in unknown:
        near = sorted((_levenshtein(str(k), n), n) for n in names if n != k)
        near = [n for dist, n in near if dist <= 2][:1]
        if (k in words and not near) or (source is None and not near) or (k in names):
            continue
        what = f"DeepSpeed {source[0]}" if source else "DeepSpeed"
        hint = "; remove it (see DeepSpeed's config reference for its keys)"
        if near:
            leaf = ds[k]
            path, value = near[0], leaf
            while isinstance(value, dict) and len(value) == 1:
                (sub, value), = value.items()
                path += f".{sub}"
            plus = "" if _get(ds, path) is not _MISSING else "+"
            shown = f"{plus}deepspeed.{path}={_show(value).replace(' ', '')}" if not isinstance(value, dict) else \
                f"deepspeed.{near[0]}.<key>=..."
            hint = f"; did you mean deepspeed.{near[0]}? write {shown}"
        raise UsageError(f"deepspeed.{k}: not a setting {what} reads (it is passed on to DeepSpeed, which would ignore "
                         f"it silently){hint}")
