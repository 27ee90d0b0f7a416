from hiscrm.backoff import RestartBackoff


def test_first_crash_restarts_at_once_then_doubles_up_to_max() -> None:
    backoff = RestartBackoff(initial_s=0.5, max_s=4, reset_after_s=60)
    delays = [backoff.record_failure(ran_for_s=1) for _ in range(7)]
    assert delays == [0, 0.5, 1, 2, 4, 4, 4]


def test_a_healthy_run_resets_the_count() -> None:
    backoff = RestartBackoff(initial_s=0.5, max_s=30, reset_after_s=60)
    for _ in range(5):
        backoff.record_failure(ran_for_s=1)
    assert backoff.record_failure(ran_for_s=60) == 0
    assert backoff.record_failure(ran_for_s=1) == 0.5


def test_failures_during_start_always_wait() -> None:
    backoff = RestartBackoff(initial_s=0.5, max_s=2, reset_after_s=60)
    delays = [backoff.record_failure(0, during_start=True) for _ in range(5)]
    assert delays == [0.5, 1, 2, 2, 2]


def test_many_failures_do_not_overflow() -> None:
    backoff = RestartBackoff(initial_s=0.5, max_s=30, reset_after_s=60)
    for _ in range(5000):
        delay = backoff.record_failure(0)
    assert delay == 30
