"""Mutants: a kernel with one rule deliberately broken must fail the lockstep test.

The lockstep test (``test_kernel.py``) proves the kernel equal to the oracle; these tests prove
that the comparison can fail. Each mutant is the kernel's own source with one rule changed
(a fee rounded down, no YES/NO netting, a sold cost basis rounded up, an unknown result
settled half a tick higher, the mask's monotone shortcut testing the smallest size instead of
the largest), compiled fresh by numba, and run through the same random cases as the real
kernel: the oracle must catch it.
"""

from __future__ import annotations

import inspect
import types
from collections import Counter

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from apps.simulation import kernel
from tests.simulation.test_kernel import FEE_SCHEDULES, accounts, run_lockstep

pytestmark = pytest.mark.slow  # each mutant is a fresh numba compile of the kernel

MUTANTS = {
    "fee rounded down": (
        "fee = -(-(fee_num * terms) // (fee_den * 100_000_000)) * 100",
        "fee = (fee_num * terms) // (fee_den * 100_000_000) * 100",
    ),
    "no netting": ("pairs = min(yes, no)", "pairs = 0"),
    "sold cost basis rounded up": (
        "removed = cost * filled // held if held else 0",
        "removed = -(-(cost * filled) // held) if held else 0",
    ),
    "unknown result settled half a tick up": (
        "yes_pays = mid_e4x2[k, j] // 2",
        "yes_pays = (mid_e4x2[k, j] + 1) // 2",
    ),
    "mask shortcut on the smallest size": (
        "largest = first + by_size[N_SIZES - 1]",
        "largest = first + by_size[0]",
    ),
}


def mutant(original: str, broken: str) -> types.ModuleType:
    """The kernel module with ``original`` (which must occur once) replaced by ``broken``."""
    source = inspect.getsource(kernel)
    assert source.count(original) == 1, original
    # No on-disk cache: a mutant must never be stored where the real kernel's cache lives.
    source = source.replace(original, broken).replace("cache=True", "cache=False")
    module = types.ModuleType(f"{kernel.__name__}_mutant")
    exec(compile(source, f"<kernel mutant: {broken}>", "exec"), module.__dict__)
    return module


@pytest.mark.parametrize("name", list(MUTANTS))
def test_a_broken_kernel_rule_fails_the_lockstep_test(name: str) -> None:
    rules = mutant(*MUTANTS[name])

    # The lockstep test's own strategies; no shrinking (the first failure is enough).
    @settings(
        max_examples=300,
        deadline=None,
        derandomize=True,
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=[HealthCheck.too_slow],
        database=None,
    )
    @given(
        seed=st.integers(0, 2**32 - 1),
        m=st.one_of(st.integers(1, 4), st.just(kernel.N_MARKETS)),
        steps=st.integers(1, 8),
        account=accounts(),
        fees=st.lists(st.sampled_from(FEE_SCHEDULES), min_size=10, max_size=10),
    )
    def check(seed, m, steps, account, fees) -> None:
        run_lockstep(
            seed=seed, m=m, steps=steps, fees=fees[:m], coverage=Counter(), rules=rules, **account
        )

    with pytest.raises(AssertionError):
        check()


def test_the_unbroken_source_compiled_the_same_way_passes() -> None:
    """The mutants' build (source, fresh compile, no cache) is sound: with no change, the
    kernel passes the same cases, so a mutant fails for its broken rule and nothing else."""
    rules = mutant("pairs = min(yes, no)", "pairs = min(yes, no)")

    @settings(max_examples=60, deadline=None, derandomize=True, database=None)
    @given(
        seed=st.integers(0, 2**32 - 1),
        m=st.one_of(st.integers(1, 4), st.just(kernel.N_MARKETS)),
        steps=st.integers(1, 8),
        account=accounts(),
        fees=st.lists(st.sampled_from(FEE_SCHEDULES), min_size=10, max_size=10),
    )
    def check(seed, m, steps, account, fees) -> None:
        run_lockstep(
            seed=seed, m=m, steps=steps, fees=fees[:m], coverage=Counter(), rules=rules, **account
        )

    check()
