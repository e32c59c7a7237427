"""The client of a node's API, and the verification of two nodes against each other."""
