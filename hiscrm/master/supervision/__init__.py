"""Supervision: the master's loop, worker slots and their processes, launchers and the
fork template, rolling reload, code status. Uses the data wing only through the narrow
interfaces it is handed at wiring time."""
