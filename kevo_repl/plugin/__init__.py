"""The plugin layer: hookspecs, the plugin manager and registry, the engine contract, and the
built-in default plugins.
"""
