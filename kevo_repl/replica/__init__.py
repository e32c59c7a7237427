"""The replica: the receive/apply/ack pipeline, its state machine, and snapshot bootstrap."""
