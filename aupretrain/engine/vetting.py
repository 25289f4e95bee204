"""Checkpoint files from elsewhere are read as data, never run: `vet` checks every `.pt` file of a checkpoint folder
before DeepSpeed (which unpickles with `torch.load(weights_only=False)`) opens it.

A pickle stream runs whatever globals it names. `vet` lists them without executing anything
(`torch.serialization.get_unsafe_globals_in_checkpoint`) and admits torch's weights-only set, the DeepSpeed
classes its own files hold (`DEEPSPEED_GLOBALS`), and `builtins.getattr` only in the one shape in which some
Python 3.11 releases pickle an enum member — `getattr(EnumClass, "MEMBER")`: `Enum.__reduce_ex__` of Debian's
3.11.2 pickles by name, later 3.11 releases (3.11.7) by value, so DeepSpeed's `ZeroStageEnum` reaches the file
either way — with an admitted Enum class and one of its member names; every other use of getattr reaches
arbitrary attributes (a function's globals, and from there anything) and is refused.
"""
from __future__ import annotations

import importlib
import pickletools
import zipfile
from enum import Enum
from pathlib import Path

from ..errors import UsageError

# What DeepSpeed's own checkpoint files hold besides tensors and plain containers (listed with
# `torch.serialization.get_unsafe_globals_in_checkpoint` over ZeRO 0-3, bf16 and universal checkpoints of
# DeepSpeed 0.19).
DEEPSPEED_GLOBALS = frozenset({"deepspeed.runtime.fp16.loss_scaler.LossScaler",
                               "deepspeed.runtime.zero.config.ZeroStageEnum",
                               "deepspeed.utils.tensor_fragment.fragment_address"})
GETATTR = "builtins.getattr"
_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}
_GETS = {"GET", "BINGET", "LONG_BINGET"}
_STRINGS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING"}


def _enum(name: str) -> type[Enum] | None:
    """The admitted global `module.Class` when it is an Enum subclass, else None."""
    if name not in DEEPSPEED_GLOBALS:
        return None
    module, _, cls = name.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError):
        return None
    return obj if isinstance(obj, type) and issubclass(obj, Enum) else None


def _pickle_bytes(f: Path) -> bytes:
    """The pickle stream (`*/data.pkl`) of a `torch.save` zip file."""
    with zipfile.ZipFile(f) as z:
        member = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
        if member is None:
            raise ValueError("no data.pkl in the archive")
        return z.read(member)


def getattr_only_reads_enum_members(data: bytes) -> bool:
    """Whether every use of `builtins.getattr` in the pickle stream `data` is `getattr(E, "NAME")` with E an
    admitted Enum class and NAME one of its members: the getattr object (named or fetched from the memo), then E
    (named — GLOBAL, or STACK_GLOBAL over two strings — or fetched), then the name string (named or fetched),
    TUPLE2, REDUCE; memo
    stores and frames between them allowed. Any other shape, or a global whose name cannot be read, gives False."""
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(data)]
    memo: dict[int, tuple | None] = {}  # memo index -> ("g", global) | ("s", string) | None (anything else)
    items: dict[int, tuple | None] = {}  # op index -> what that op left on top of the stack, as above
    pushes: list[tuple | None] = []  # the same, in order, for the ops other than memo stores and frames
    for i, (name, arg) in enumerate(ops):
        if name == "FRAME":  # protocol 4 framing: not on the stack
            continue
        if name in _PUTS or name == "MEMOIZE":  # a store leaves the stack as it is; MEMOIZE's index is len(memo)
            memo[int(arg) if name in _PUTS else len(memo)] = pushes[-1] if pushes else None
            continue
        item = None
        if name == "GLOBAL":
            item = ("g", str(arg).replace(" ", "."))
        elif name == "STACK_GLOBAL":  # module and name are the two pushes before it, strings or no global is known
            two = pushes[-2:]
            if len(two) < 2 or any(t is None or t[0] != "s" for t in two):
                return False
            item = ("g", f"{two[0][1]}.{two[1][1]}")
        elif name in _GETS:
            item = memo.get(int(arg))
        elif name in _STRINGS:
            item = ("s", str(arg))
        if item == ("g", "__builtin__.getattr"):
            item = ("g", GETATTR)
        items[i] = item
        pushes.append(item)  # ops that pop (POP, TUPLE2, REDUCE, ...) leave something untracked on top: None

    def kind(i: int) -> str | None:
        return (items.get(i) or (None,))[0]

    real = [(i, n) for i, (n, _) in enumerate(ops) if n not in _PUTS and n not in ("MEMOIZE", "FRAME")]
    for k, (i, _) in enumerate(real):
        if items.get(i) != ("g", GETATTR):
            continue
        j = k + 1
        if [n for _, n in real[j + 2:j + 3]] == ["STACK_GLOBAL"] and all(kind(x) == "s" for x, _ in real[j:j + 2]):
            j += 2  # the class named by STACK_GLOBAL over its module and name strings (protocol 4)
        shape = real[j:j + 4]
        if len(shape) < 4:
            return False
        (ci, _), (si, _), (_, tname), (_, rname) = shape  # strings may be named or fetched from the memo
        enum = _enum(items[ci][1]) if kind(ci) == "g" else None
        if enum is None or kind(si) != "s" or tname != "TUPLE2" or rname != "REDUCE":
            return False
        if items[si][1] not in enum.__members__:
            return False
    return True


def vet(ckpt_dir: str | Path) -> None:
    """Refuse a checkpoint folder (a colleague's, one from the internet) whose `.pt` files would run code when
    loaded: each file's pickle stream is read without executing it (no tensors are loaded) and every global it
    names must be in torch's weights-only set or `DEEPSPEED_GLOBALS`, or be getattr reading an enum member (above).

    Raises:
        UsageError: a file names other globals (the file and the names are in the message), or is not a
            `torch.save` zip file that can be checked.
    """
    import torch

    for f in sorted(Path(ckpt_dir).rglob("*.pt")):
        try:
            names = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(f)))
            unknown = sorted(names - DEEPSPEED_GLOBALS)
            if unknown == [GETATTR] and getattr_only_reads_enum_members(_pickle_bytes(f)):
                unknown = []
        except (ValueError, RuntimeError, OSError, zipfile.BadZipFile) as e:
            raise UsageError(f"{f}: refused: not a checkpoint file that can be checked before loading ({e})") from None
        if unknown:
            raise UsageError(f"{f}: refused: loading it would call {', '.join(unknown)} (a checkpoint holds tensors "
                             "and DeepSpeed's state only); do not load a checkpoint you cannot trust")
