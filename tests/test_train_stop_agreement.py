"""``StopAgreement`` without processes: a fake coordination-service client stands in for JAX's.

Several agreements share one store as the processes of a run would; the tests check that they stop
at the same step, that checks are spaced by time (not every step), and that a process whose
verdict never comes fails with one line instead of waiting forever.
"""

from __future__ import annotations

import signal

import pytest

from autext_jax.errors import AutextError
from autext_jax.train.preemption import StopAgreement


class FakeClient:
    """The key-value part of ``jax._src.distributed`` client's API, in memory; counts the calls."""

    def __init__(self, store: dict[str, str]):
        self.store, self.calls = store, 0

    def key_value_set(self, key: str, value: str) -> None:
        self.calls += 1
        self.store[key] = value

    def key_value_dir_get(self, prefix: str) -> list[tuple[str, str]]:
        self.calls += 1
        return [(k, v) for k, v in self.store.items() if k.startswith(prefix)]

    def blocking_key_value_get(self, key: str, timeout_ms: int) -> str:
        self.calls += 1
        if key not in self.store:
            raise RuntimeError(f"DEADLINE_EXCEEDED: {key}")
        return self.store[key]

    def key_value_delete(self, key: str) -> None:
        self.store.pop(key, None)


def _run(processes: int, steps: int, signal_at: dict[int, int], every: int = 1, step_s: float = 0.5):
    """Step the processes in lockstep (process 0 first); returns (stop step, signal, client calls)."""
    store: dict[str, str] = {}
    now = [0.0]
    clients = [FakeClient(store) for _ in range(processes)]
    agreements = [
        StopAgreement(every, client=c, process_index=i, interval_s=5.0, clock=lambda: now[0])
        for i, c in enumerate(clients)
    ]
    requested = [0] * processes
    for step in range(1, steps + 1):
        now[0] += step_s
        for index, at in signal_at.items():
            if step == at:
                requested[index] = signal.SIGTERM
        verdicts = []
        for agreement, wanted in zip(agreements, requested, strict=True):
            if agreement.due(step):
                verdicts.append(agreement.check(step, wanted))
            agreement.post(wanted)
        assert len(verdicts) in (0, processes)  # every process checks at the same steps
        assert len(set(verdicts)) <= 1  # and decides the same
        if verdicts and verdicts[0]:
            return step, verdicts[0], [c.calls for c in clients]
    return None, 0, [c.calls for c in clients]


def test_checks_are_spaced_by_time_not_by_step():
    stop, signum, calls = _run(3, 200, {})
    assert stop is None and signum == 0
    # 200 steps of 0.5 s: a check every ~10 steps (5 s), not 200; process 0 reads and writes per check.
    assert calls[1] == calls[2] <= 200 // 10 + 3 and calls[0] <= 2 * calls[1], calls


@pytest.mark.parametrize("signalled", [0, 1, 2])
def test_all_processes_stop_at_one_step_soon_after_any_signal(signalled):
    stop, signum, _ = _run(3, 200, {signalled: 37})
    assert signum == signal.SIGTERM
    assert 37 <= stop <= 37 + 2 * 10 + 1  # within two check intervals


def test_stop_check_every_is_the_fewest_steps_between_checks():
    _, _, calls = _run(2, 100, {}, every=25, step_s=1.0)  # 5 s would be 5 steps: 25 wins
    assert calls[1] == 100 // 25
    one = StopAgreement(3)
    assert [s for s in range(1, 13) if one.due(s) and one.check(s, 0) == 0] == [3, 6, 9, 12]


def test_a_missing_verdict_is_one_line_not_a_hang():
    lonely = StopAgreement(1, client=FakeClient({}), process_index=1)
    with pytest.raises(AutextError, match="process 1: process 0 gave no stop verdict for step 1"):
        lonely.check(1, 0)
