"""A running node: the gRPC server and its services, metrics, and process settings."""
