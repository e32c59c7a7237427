"""Telling a damaged store from a failing one: engine exceptions classified as StoreDamaged."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from kevo_repl.errors import StoreDamaged

#: how deep the chain of causes is followed (engines wrap their library's error once or twice)
_MAX_CHAIN = 8

DamageTest = Callable[[BaseException], bool]


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < _MAX_CHAIN:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_damage(exc: BaseException, test: DamageTest | None) -> bool:
    """Whether `exc`, or an exception it was raised from, says the store's files are damaged:
    a StoreDamaged, or what the engine's own `test` recognises."""
    for link in _chain(exc):
        if isinstance(link, StoreDamaged):
            return True
        if test is not None:
            try:
                if test(link):
                    return True
            except Exception:  # a broken test must not hide the original error
                return False
    return False


def damaged(name: str, path: Path, during: str, exc: BaseException) -> StoreDamaged:
    """The one error a damaged store is reported with: which store, where, doing what."""
    if isinstance(exc, StoreDamaged) and exc.store == str(path):
        return exc
    return StoreDamaged(
        f"the {name} store at {path} is damaged ({during}: {type(exc).__name__}: {exc})",
        str(path),
    )
