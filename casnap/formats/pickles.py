"""Reading a pickle without running it: its opcodes walked one by one (pickletools), never loaded.

Frameworks keep metadata as pickles (LangChain's `index.pkl`, Chroma's `index_metadata.pickle`).
Loading one runs whatever its opcodes name: a damaged or hostile file from a backup could run
code. walk() instead replays the opcodes on a stack of plain values: a class or function the
pickle names becomes a Global that is never imported, and a call (REDUCE, NEWOBJ, INST, OBJ)
becomes an Obj holding the callable, its arguments and its state, that is never made. Every
global is checked against what the caller expects, so a pickle that names anything else (such
as `os.system`) is reported, and nothing of it runs; a caller whose rule depends on where a
global sits (LangChain's document metadata may hold any value) accepts all and looks at the
value walked.
"""

from __future__ import annotations

import pickletools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Texts longer than this are kept as their length only (documents' page content): the walk
#: needs keys and counts, not the text, and must not hold a large file's text twice.
KEEP_TEXT = 1024
#: The deepest nesting of containers a walk builds. A framework's pickle is a few levels deep
#: (a docstore of documents of metadata); a hostile one nested a million deep would overflow
#: the C stack when its values are hashed, compared or freed.
MAX_DEPTH = 100


class PickleProblem(ValueError):
    """A pickle that is not well formed, or names a global the caller does not expect."""


@dataclass(frozen=True)
class Global:
    """A class or function a pickle names (`module.name`); never imported."""

    module: str
    name: str

    def __str__(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(eq=False)
class Obj:
    """What a call in a pickle would have made: the callable (a Global, or an Obj a call of
    one made), its arguments, the state BUILD would have set, and the items a dict or list
    subclass would have been given. Never made."""

    callable: Any
    args: Any = ()
    state: Any = None
    items: dict[Any, Any] = field(default_factory=dict)
    listitems: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class Text:
    """A text or byte string too long to keep (KEEP_TEXT): only its length."""

    length: int


@dataclass
class Walk:
    """What walk() found: the value the pickle describes and every global it names."""

    value: Any
    globals: list[Global] = field(default_factory=list)
    opcodes: int = 0


_CONSTANTS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
_SCALARS = {
    "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4", "FLOAT", "BINFLOAT",
}  # fmt: skip
_TEXTS = {
    "STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE",
    "BINUNICODE8", "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8",
}  # fmt: skip
_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}
_GETS = {"GET", "BINGET", "LONG_BINGET"}
_REFUSED = {
    "EXT1": "the copyreg extension registry",
    "EXT2": "the copyreg extension registry",
    "EXT4": "the copyreg extension registry",
    "PERSID": "a persistent id",
    "BINPERSID": "a persistent id",
    "NEXT_BUFFER": "an out-of-band buffer",
}


_CONTAINERS = (tuple, list, dict, set, frozenset, Obj)


def walk(data: bytes, expected: Callable[[Global], bool], what: str = "this file") -> Walk:
    """The value a pickle describes, built from its opcodes without importing or calling
    anything. PickleProblem when it is not a well-formed pickle, or names a global for which
    expected() is false (`what` names the file's role in the message)."""
    walker = _Walker(expected, what)
    try:
        for op, arg, _pos in pickletools.genops(data):
            walker.opcodes += 1
            if op.name == "STOP":
                if len(walker.stack) != 1 or walker.marks:
                    raise PickleProblem("not a well-formed pickle: STOP with a stack left over")
                return Walk(walker.stack[0], walker.seen, walker.opcodes)
            walker.step(op.name, arg)
    except PickleProblem:
        raise
    except (ValueError, IndexError, KeyError, TypeError, AssertionError) as exc:
        # genops: a truncated or unknown opcode; the stack machine: a value missing or of the
        # wrong kind (a list as a dict key, a MARK that was never set)
        raise PickleProblem(f"not a well-formed pickle ({exc or type(exc).__name__})") from exc
    raise PickleProblem("not a well-formed pickle (no STOP)")


class _Walker:
    """The pickle machine's stack, marks and memo, holding only plain values, Global and Obj."""

    def __init__(self, expected: Callable[[Global], bool], what: str) -> None:
        self.expected = expected
        self.what = what
        self.stack: list[Any] = []
        self.marks: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        self.seen: list[Global] = []
        self.opcodes = 0
        # the depth of each container nested in another (by id; the value is kept so its id is
        # never reused); a container of scalars only is not listed, its depth is 1
        self.depths: dict[int, tuple[Any, int]] = {}

    def depth(self, value: Any) -> int:
        """How deep containers nest in a value the walk built (0: a scalar or a text)."""
        if isinstance(value, _CONTAINERS):
            known = self.depths.get(id(value))
            return known[1] if known is not None else 1
        return 0

    def holding(self, container: Any, items: Any) -> Any:
        """container, now known to hold items: its depth raised to theirs plus one."""
        return self._record(container, self.deeper(items))

    def deeper(self, items: Any) -> int:
        """The depth of a container of items; PickleProblem beyond MAX_DEPTH (checked before
        the items are hashed into a dict or a set)."""
        deepest = max((self.depth(i) for i in items), default=0) + 1
        if deepest > MAX_DEPTH:
            raise PickleProblem(f"not a well-formed pickle: nested deeper than {MAX_DEPTH}")
        return deepest

    def _record(self, container: Any, depth: int) -> Any:
        if depth > self.depth(container) and depth > 1:
            self.depths[id(container)] = (container, depth)
        return container

    def _global(self, module: Any, name: Any) -> Global:
        if not isinstance(module, str) or not isinstance(name, str):
            raise PickleProblem("not a well-formed pickle: a global named by a non-string")
        g = Global(module, name)
        if not self.expected(g):
            raise PickleProblem(f"names {g}, which {self.what} never holds (nothing was run)")
        if g not in self.seen:
            self.seen.append(g)
        return g

    def _pop_mark(self) -> list[Any]:
        items = self.stack
        self.stack = self.marks.pop()
        return items

    def step(self, name: str, arg: Any) -> None:
        """Replay one opcode on the stack (one branch per opcode family)."""
        stack = self.stack
        # the memo and plain values first: most of a large pickle's opcodes
        if name == "MEMOIZE":
            self.memo[len(self.memo)] = stack[-1]
        elif name in _GETS:
            stack.append(self.memo[arg])
        elif name in _TEXTS:
            stack.append(Text(len(arg)) if len(arg) > KEEP_TEXT else arg)
        elif name in _SCALARS:
            stack.append(arg)
        else:
            self._structure(name, arg)

    def _structure(self, name: str, arg: Any) -> None:
        """Replay an opcode that builds containers, names globals or calls them."""
        stack = self.stack
        if name in ("PROTO", "FRAME", "READONLY_BUFFER"):
            return
        if name in _REFUSED:
            raise PickleProblem(f"uses {_REFUSED[name]}, which {self.what} never does")
        if name in _CONSTANTS:
            stack.append(_CONSTANTS[name])
        elif name == "MARK":
            self.marks.append(stack)
            self.stack = []
        elif name == "EMPTY_DICT":
            stack.append({})
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "EMPTY_TUPLE":
            stack.append(())
        elif name == "EMPTY_SET":
            stack.append(set())
        elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
            n = int(name[-1])
            if len(stack) < n:
                raise PickleProblem("not a well-formed pickle: a tuple of missing items")
            last = tuple(stack[-n:])
            del stack[-n:]
            stack.append(self.holding(last, last))
        elif name == "TUPLE":
            items = self._pop_mark()
            self.stack.append(self.holding(tuple(items), items))
        elif name == "LIST":
            items = self._pop_mark()
            self.stack.append(self.holding(list(items), items))
        elif name == "DICT":
            items = self._pop_mark()
            depth = self.deeper(items)
            self.stack.append(self._record(_pairs(items), depth))
        elif name == "FROZENSET":
            items = self._pop_mark()
            depth = self.deeper(items)
            self.stack.append(self._record(frozenset(items), depth))
        elif name == "APPEND":
            value = stack.pop()
            _as_list(self.holding(stack[-1], (value,))).append(value)
        elif name == "APPENDS":
            items = self._pop_mark()
            _as_list(self.holding(self.stack[-1], items)).extend(items)
        elif name == "SETITEM":
            value = stack.pop()
            key = stack.pop()
            _as_dict(self.holding(stack[-1], (key, value)))[key] = value
        elif name == "SETITEMS":
            items = self._pop_mark()
            _as_dict(self.holding(self.stack[-1], items)).update(_pairs(items))
        elif name == "ADDITEMS":
            items = self._pop_mark()
            _target(self.holding(self.stack[-1], items), set).update(items)
        elif name in _PUTS:
            self.memo[arg] = stack[-1]
        elif name == "POP":
            if stack:
                stack.pop()
            else:
                self._pop_mark()
        elif name == "POP_MARK":
            self._pop_mark()
        elif name == "DUP":
            stack.append(stack[-1])
        elif name == "GLOBAL":
            module, _, attr = str(arg).partition(" ")
            stack.append(self._global(module, attr))
        elif name == "STACK_GLOBAL":
            attr = stack.pop()
            module = stack.pop()
            stack.append(self._global(module, attr))
        elif name == "INST":
            module, _, attr = str(arg).partition(" ")
            cls = self._global(module, attr)
            items = self._pop_mark()
            self.stack.append(self.holding(Obj(cls, tuple(items)), items))
        elif name == "OBJ":
            items = self._pop_mark()
            if not items or not isinstance(items[0], Global):
                raise PickleProblem("not a well-formed pickle: OBJ without a class")
            self.stack.append(self.holding(Obj(items[0], tuple(items[1:])), items))
        elif name in ("REDUCE", "NEWOBJ"):
            args = stack.pop()
            func = stack.pop()
            stack.append(self.holding(Obj(_callable(func), args), (args,)))
        elif name == "NEWOBJ_EX":
            kwargs = stack.pop()
            args = stack.pop()
            cls = stack.pop()
            stack.append(self.holding(Obj(_callable(cls), (args, kwargs)), (args, kwargs)))
        elif name == "BUILD":
            state = stack.pop()
            _target(self.holding(stack[-1], (state,)), Obj).state = state
        else:
            raise PickleProblem(f"not a well-formed pickle: unexpected opcode {name}")


def _pairs(items: list[Any]) -> dict[Any, Any]:
    """A dict from a flat key, value, key, value list."""
    if len(items) % 2:
        raise PickleProblem("not a well-formed pickle: a dict with a key and no value")
    return dict(zip(items[::2], items[1::2], strict=True))


def _target(value: Any, kind: type) -> Any:
    """The container an opcode adds to, when it is of the kind the opcode needs."""
    if not isinstance(value, kind):
        raise PickleProblem(f"not a well-formed pickle: adds items to a {type(value).__name__}")
    return value


def _as_list(value: Any) -> list[Any]:
    """The list APPEND adds to: a list, or the items of an object (a list subclass)."""
    return value.listitems if isinstance(value, Obj) else _target(value, list)


def _as_dict(value: Any) -> dict[Any, Any]:
    """The dict SETITEM adds to: a dict, or the items of an object (a dict subclass)."""
    return value.items if isinstance(value, Obj) else _target(value, dict)


def _callable(value: Any) -> Global | Obj:
    """What a call calls: a global the pickle named (and the caller expected), or what a call
    of one would have made (a classmethod pickles as `getattr(cls, name)`, then is called)."""
    if not isinstance(value, Global | Obj):
        raise PickleProblem(
            "not a well-formed pickle: calls something that is not a global nor made by one"
        )
    return value


def state_of(value: Any) -> Any:
    """The state an object would have been built with (its __dict__ for most classes); plain
    values as they are."""
    if isinstance(value, Obj):
        state = value.state
        # (state, slotstate) pairs, as objects with __slots__ pickle
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict | None):
            return state[0] or state[1]
        return state
    return value
