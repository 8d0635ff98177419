"""Packages whose public names are imported on first use.

`graft ls` must start about as fast as DuckDB does, so importing
`graft.registry` may not import every module the registry has (the add path,
remotes, repacking): each package lists its public names by module and
`lazy_exports` imports a module when one of its names is first used. The
package's `if TYPE_CHECKING:` imports say the same for type checkers (a test
checks that both lists agree).
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Mapping


class _LazyPackage(types.ModuleType):
    _exports: dict[str, str]  # public name -> the module defining it

    def __getattr__(self, name: str) -> object:
        module = self._exports.get(name)
        if module is None:
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(self, name, value)
        return value

    def __setattr__(self, name: str, value: object) -> None:
        # Importing a submodule binds it as an attribute of its package; where it is
        # named like the function it exports (`registry.add`), keep the function, as
        # an eager `from .add import add` in the package would.
        if isinstance(value, types.ModuleType) and self._exports.get(name) == value.__name__:
            value = getattr(value, name)
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *self._exports})


def lazy_exports(package: str, exports: Mapping[str, tuple[str, ...]]) -> list[str]:
    """Make `package` import each name of `exports` (module -> names) on first use.

    Returns the names, for the package's `__all__`.
    """
    where = {name: source for source, names in exports.items() for name in names}
    module = sys.modules[package]
    module.__dict__["_exports"] = where
    module.__class__ = _LazyPackage
    return sorted(where)
