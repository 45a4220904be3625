"""Value objects for the command line's start-up path, without `dataclasses`.

`cmdop permissions check` loads the whole gate (calls, rules, the shell walker, a few hundred
program specs) and must start in a few times `python -c pass`. `@dataclass` imports `inspect`
(and with it ast, dis and tokenize) and compiles methods for every class it decorates: about a
fifth of that start. The classes the gate loads therefore write their own `__init__` and take
the rest from here: `Record` gives equality over `FIELDS` (only between instances of the same
class, like a dataclass) and a repr; `Frozen` adds a hash over them, refuses assignment after
`__init__`, and `replace()`. Instances keep a `__dict__`, so `functools.cached_property`, copy
and pickle behave as they did with frozen dataclasses.

`typing` itself is such a cost (a quarter of `python -c pass`), so those modules import it for
annotations only, and take `NamedTuple` from here: at run time a `collections.namedtuple` built
from the class body's annotations and defaults, which is what `typing.NamedTuple` makes; to the
type checker, `typing.NamedTuple` itself.
"""

from __future__ import annotations

from collections import namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, ClassVar, TypeVar
    from typing import NamedTuple as NamedTuple  # (re-exported)

    _F = TypeVar("_F", bound="Frozen")
else:
    class _NamedTupleType(type):
        def __new__(mcls, name, bases, namespace):
            if not bases:  # NamedTuple itself
                return super().__new__(mcls, name, bases, namespace)
            if "__annotations__" not in namespace:  # (3.14 keeps them lazily without the import)
                raise TypeError(f"{name}: its module needs `from __future__ import annotations`")
            fields = tuple(namespace["__annotations__"])
            defaults = [namespace[f] for f in fields if f in namespace]
            if any(f in namespace for f in fields[:len(fields) - len(defaults)]):
                raise TypeError(f"{name}: a field without a default follows one with a default")
            cls = namedtuple(name, fields, defaults=defaults, module=namespace["__module__"])
            for key, value in namespace.items():  # the docstring, methods and properties
                if key not in fields and key not in ("__module__", "__annotations__"):
                    setattr(cls, key, value)
            return cls

    class NamedTuple(metaclass=_NamedTupleType):
        """`class Point(NamedTuple): x: int; y: int = 0` makes a collections.namedtuple."""


class Record:
    """Equality over the fields in `FIELDS` and a repr of those not `HIDDEN`; mutable and so
    unhashable."""

    FIELDS: ClassVar[tuple[str, ...]] = ()
    HIDDEN: ClassVar[frozenset[str]] = frozenset()  # fields the repr leaves out (secrets)

    def _values(self) -> tuple[Any, ...]:
        return tuple([getattr(self, name) for name in self.FIELDS])

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.FIELDS
                          if name not in self.HIDDEN)
        return f"{type(self).__qualname__}({inner})"


class Frozen(Record):
    """A `Record` whose fields never change once `__init__` has set them (through `_set`)."""

    def _set(self, **fields: Any) -> None:
        """Set fields from `__init__` (plain assignment is refused)."""
        self.__dict__.update(fields)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"cannot assign to field {name!r} of a {type(self).__name__}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r} of a {type(self).__name__}")

    def __hash__(self) -> int:
        return hash(self._values())

    def replace(self: _F, **changes: Any) -> _F:
        """A copy with `changes` applied (through `__init__`, so its checks run again)."""
        values = {name: getattr(self, name) for name in self.FIELDS}
        values.update(changes)
        return type(self)(**values)
