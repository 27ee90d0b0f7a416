"""The worker side: bootstrap, runtime, account tasks. Imports the protocol, never the master.

Kept import-free: a spawned worker imports this package before its log file is in place.
"""
