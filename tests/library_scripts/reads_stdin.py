"""A worker that asks the terminal a question (tests/test_interrupts.py): under ``qtrain run`` only
rank 0 has the launcher's stdin, so ``input()`` here ends the job at once instead of blocking."""

import qtrain

sess = qtrain.session()
answer = input("continue? ")
