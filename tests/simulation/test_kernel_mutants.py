"""Mutants: a kernel with one rule deliberately broken must fail the lockstep test.

The lockstep test (``test_kernel.py``) proves the kernel equal to the oracle; these tests prove
that the comparison can fail. Each mutant is the kernel's own source with one rule changed
(a trade fee rounded down, the cent refunded only above a cent or never, a balance change
floored toward zero, a fee change ignored, no YES/NO netting, a sold cost basis rounded up, an
unknown result settled half a tick higher), compiled fresh by numba, and run through the same
random cases as the real kernel: the oracle must catch it. The per-fill fee mutants must also
fail the worked examples of ``test_fees.py`` (a refund only above a cent is caught there only:
random books almost never sum an order's rounding fees to exactly a cent).
"""

from __future__ import annotations

import inspect
import types
from collections import Counter

import pytest
from hypothesis import HealthCheck, Phase, given, settings

from apps.simulation import kernel
from tests.simulation.test_fees import fee_examples
from tests.simulation.test_kernel import LOCKSTEP_CASES, run_lockstep

pytestmark = pytest.mark.slow  # each mutant is a fresh numba compile of the kernel

MUTANTS = {
    "trade fee rounded down": (
        "trade_fee = -(-(fee_num * term) // fee_den)",
        "trade_fee = (fee_num * term) // fee_den",
    ),
    "refund only above a cent": (
        "if accumulator >= CENT_E6:",
        "if accumulator > CENT_E6:",
    ),
    "balance change floored toward zero": (
        "accumulator += -(-debit // precision) * precision - debit",
        "accumulator += (debit // precision if debit >= 0 else -(-debit // precision))"
        " * precision - debit",
    ),
    "no refunds": ("accumulator -= CENT_E6", "accumulator -= 0"),
    "fee change ignored (first tick's fees)": (
        "fee_table[fee_ids[t, j]],\n            limits,\n            fills[j]",
        "fee_table[fee_ids[0, j]],\n            limits,\n            fills[j]",
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
}


# Random books almost never make an order's rounding fees sum to exactly a cent, so refunding
# only above a cent passes the lockstep cases; the fee examples pin it.
EXAMPLES_ONLY = ("refund only above a cent",)
# The per-fill fee rules, which the fee examples must catch as well.
FEE_RULES = (
    "trade fee rounded down",
    "refund only above a cent",
    "balance change floored toward zero",
    "no refunds",
)


def mutant(original: str, broken: str) -> types.ModuleType:
    """The kernel module with ``original`` (which must occur once) replaced by ``broken``."""
    source = inspect.getsource(kernel)
    assert source.count(original) == 1, original
    # No on-disk cache: a mutant must never be stored where the real kernel's cache lives.
    source = source.replace(original, broken).replace("cache=True", "cache=False")
    module = types.ModuleType(f"{kernel.__name__}_mutant")
    exec(compile(source, f"<kernel mutant: {broken}>", "exec"), module.__dict__)
    return module


@pytest.mark.parametrize("name", [n for n in MUTANTS if n not in EXAMPLES_ONLY])
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
    @given(**LOCKSTEP_CASES)
    def check(seed, m, steps, account, fees, precision_e4, fee_change) -> None:
        run_lockstep(
            seed=seed,
            m=m,
            steps=steps,
            fees=fees[:m],
            coverage=Counter(),
            rules=rules,
            precision_e4=precision_e4,
            fee_change=fee_change,
            **account,
        )

    with pytest.raises(AssertionError):
        check()


@pytest.mark.parametrize("name", [n for n in MUTANTS if n in FEE_RULES])
def test_a_broken_fee_rule_fails_the_fee_examples(name: str) -> None:
    """A broken per-fill fee rule also fails the worked examples of ``test_fees.py`` (random
    books rarely make an order's rounding fees sum to exactly a cent: the examples do)."""
    rules = mutant(*MUTANTS[name])
    with pytest.raises(AssertionError):
        fee_examples(rules)


def test_the_unbroken_source_compiled_the_same_way_passes() -> None:
    """The mutants' build (source, fresh compile, no cache) is sound: with no change, the
    kernel passes the same cases, so a mutant fails for its broken rule and nothing else."""
    rules = mutant("pairs = min(yes, no)", "pairs = min(yes, no)")

    @settings(max_examples=60, deadline=None, derandomize=True, database=None)
    @given(**LOCKSTEP_CASES)
    def check(seed, m, steps, account, fees, precision_e4, fee_change) -> None:
        run_lockstep(
            seed=seed,
            m=m,
            steps=steps,
            fees=fees[:m],
            coverage=Counter(),
            rules=rules,
            precision_e4=precision_e4,
            fee_change=fee_change,
            **account,
        )

    check()
