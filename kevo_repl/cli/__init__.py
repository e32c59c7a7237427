"""The command line: a thin layer over the node, the client and the plugin registry."""
