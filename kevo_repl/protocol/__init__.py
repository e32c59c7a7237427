"""Wire protocol: the entry codec, the hash chain, compression codecs, response shaping, gRPC
transport settings and the generated messages. Imports nothing above it.
"""
