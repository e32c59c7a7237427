"""On-disk state of a node: the write-ahead log, opening the node's store, and digests over a
store.
"""
