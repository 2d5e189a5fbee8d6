#!/usr/bin/env python3
"""Runs tests/test_*.py (unittest) against the real binary and prints
'binary tests: N passed, N skipped, N failed' (each skip with its reason:
a skipped test is not a passed one). Each test module starts its own servers
through tests/harness.py, on 127.0.0.1 only, and stops them by pid."""
import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

def main():
    suite = unittest.defaultTestLoader.discover(HERE, pattern="test_*.py",
                                                top_level_dir=HERE)
    result = unittest.TextTestRunner(verbosity=2, stream=sys.stdout).run(suite)
    bad = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    skipped = len(result.skipped)
    for test, why in result.skipped:
        print("skipped: %s: %s" % (test.id(), why))
    print("binary tests: %d passed, %d skipped, %d failed"
          % (result.testsRun - bad - skipped, skipped, bad))
    return 0 if bad == 0 else 1

if __name__ == "__main__":
    sys.exit(main())
