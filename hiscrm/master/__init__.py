"""The master process: ``cli`` (entry) and ``app`` (wiring) above three wings whose
dependencies point down: ``api`` (routes, read model, metrics) → ``supervision`` (the
loop, worker slots, launchers, reload) and ``data`` (accounts, assignment, the store),
which meet only in ``ports``. Imports the protocol and items, never the worker
package (see ``docs/ARCHITECTURE.md``)."""
