"""hiscrmctl: control a running master through its HTTP API. Imports neither side."""
