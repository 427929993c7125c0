"""The readable oracle of the trading rules (tests only).

The product executes one implementation of the rules, the compiled
:mod:`apps.simulation.kernel`. These modules state the same rules in plain Python, with exact
integers and named types: :mod:`.fills` (a taker order walking the book, its fee),
:mod:`.portfolio` (cash, positions, netting, limits, settlement) and :mod:`.actions` (decide,
execute, masks). ``tests/simulation/test_kernel.py`` runs the kernel and the oracle in lockstep
and ``test_kernel_mutants.py`` checks that a broken kernel rule makes that comparison fail.
Adding an order type means changing the kernel and this oracle.
"""
