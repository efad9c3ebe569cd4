"""The project's NAT lab and its drivers: test and benchmark tooling, not installed.

Network namespaces with real kernel NATs (:mod:`lab.natlab`), coturn
(:mod:`lab.coturn`), a raw UDP/TCP observer, and the peers and drivers the lab tests,
benchmarks and docs run in lab hosts. Most of it needs root. Import it from the
project's root directory (the tests and benchmarks put it on ``sys.path``); lab hosts
get the root on ``PYTHONPATH`` (:func:`lab.natlab.lab_env`).

The public test doubles that ship with the library stay in :mod:`holepunch.testing`.
"""
