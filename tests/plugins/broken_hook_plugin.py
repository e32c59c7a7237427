"""Test plugin implementing a hook that does not exist: loading it must fail clearly."""

from kevo_repl import hookimpl


@hookimpl
def kevo_repl_no_such_hook() -> None:
    pass
