"""Which worker watches which account. Pure functions of the configuration."""

from hiscrm.models import AccountSpec


def assign_accounts(
    accounts: list[AccountSpec], worker_ids: list[str], per_worker: int
) -> tuple[dict[str, list[AccountSpec]], list[AccountSpec]]:
    """Deal accounts out round-robin, at most ``per_worker`` each.

    Returns the assignment (every worker id present, possibly with no accounts) and the
    accounts that did not fit.
    """
    assigned: dict[str, list[AccountSpec]] = {w: [] for w in worker_ids}
    capacity = len(worker_ids) * per_worker
    for index, account in enumerate(accounts[:capacity]):
        assigned[worker_ids[index % len(worker_ids)]].append(account)
    return assigned, accounts[capacity:]
