"""The primary: write path, streaming sessions and semi-sync, slots, retention and the snapshot
service.
"""
