"""The master side: supervision of worker processes, and (later) data store and API.
Imports the protocol, never the worker package."""
