"""checks.py - the pass/fail bookkeeping shared by the Python test drivers.

check() records a failed condition and goes on, so one run reports every
failure; finish() exits 1 when any check failed.
"""
import sys

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)
    return cond


def finish():
    if failures:
        print("%d check(s) failed" % len(failures))
        sys.exit(1)
    print("passed")
    sys.exit(0)
