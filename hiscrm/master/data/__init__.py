"""Data: accounts and their assignment, sync health, and the store (behind the ``Store``
interface) with its queries. Knows the protocol and the items, nothing of processes."""
