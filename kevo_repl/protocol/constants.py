"""Protocol constants both ends agree on."""

#: the protocol version this implementation speaks; KevoDB peers speak 1
PROTOCOL_VERSION = 2
#: response header naming a stream's session; sent back on Acknowledge / NegativeAcknowledge
SESSION_HEADER = "session-id"
#: status details (with UNAVAILABLE) of a stream a primary ends because it is shutting down
#: cleanly: the replica waits a little longer before it reconnects, so that it is not setting
#: up a connection when the server's GOAWAY goes out (docs/DESIGN.md, "GOAWAY growth")
SHUTDOWN_DETAILS = "primary shutting down"
