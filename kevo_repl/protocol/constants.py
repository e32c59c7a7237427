"""Protocol constants both ends agree on."""

#: the protocol version this implementation speaks; KevoDB peers speak 1
PROTOCOL_VERSION = 2
#: response header naming a stream's session; sent back on Acknowledge / NegativeAcknowledge
SESSION_HEADER = "session-id"
