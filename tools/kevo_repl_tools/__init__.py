"""kevo-repl-tools: the demo, the benchmarks, the chaos suite and its fault injection.

Not part of the core `kevo-repl` wheel: this distribution adds `kevo-repl demo|bench|chaos`
through the `kevo_repl.commands` entry-point group and the fault-injecting appliers through
the `kevo_repl` plugin group.
"""
