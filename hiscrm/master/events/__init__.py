"""The master's events: the hub that orders and fans them out, the stream clients follow,
and hooks."""
