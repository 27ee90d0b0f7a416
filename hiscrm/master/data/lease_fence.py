"""What the store's writer checks before it commits an account's data in a cluster: the
lease epoch this node holds on the account, against the lease row, in the same
transaction (``pg_leases.stale``). The lease keeper sets the epochs; the writer thread
reads them. A refusal is told to ``on_refused`` (from the writer's thread), so the
account's task is stopped at once.

With SQLite (one host) there is no fence: the master owns every account.
"""

from collections.abc import Callable, Iterable

from hiscrm.master.data import pg_leases
from hiscrm.master.data.pg_leases import Conn

RefusedCallback = Callable[[str, str], None]  # (account id, why)


class Fence:
    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._epochs: dict[str, int] = {}  # replaced whole, never changed in place
        self.on_refused: RefusedCallback = lambda account_id, why: None
        self.refused = 0  # writes refused, ever

    def set(self, epochs: dict[str, int]) -> None:
        """The leases this node holds now (from the lease keeper, on the loop)."""
        self._epochs = dict(epochs)

    def epoch(self, account_id: str) -> int | None:
        return self._epochs.get(account_id)

    def check(
        self, conn: Conn, account_ids: Iterable[str], *, held_only: bool = False
    ) -> dict[str, str]:
        """Inside the writer's transaction: the accounts of ``account_ids`` this node may
        not write, and why. ``held_only``: check only those this node believes it holds
        (an operator's write to another node's account, such as a read mark, goes on)."""
        epochs = self._epochs
        wanted = {a: epochs.get(a) for a in account_ids if not held_only or a in epochs}
        if not wanted:
            return {}
        refused = pg_leases.stale(conn, self.node_id, wanted)
        for account_id, why in refused.items():
            self.refused += 1
            self.on_refused(account_id, why)
        return refused

    def check_at(self, conn: Conn, account_id: str, epoch: int | None) -> str | None:
        """Inside the writer's transaction: why this node may not write the account under
        the lease ``epoch`` it held when the change was made (None: it held none), or
        None if it still holds that lease. Only a refusal of the lease held now stops the
        account (one refused at an epoch since replaced says nothing of the present)."""
        why = pg_leases.stale(conn, self.node_id, {account_id: epoch}).get(account_id)
        if why is not None:
            self.refused += 1
            if epoch is not None and self._epochs.get(account_id) == epoch:
                self.on_refused(account_id, why)
        return why
