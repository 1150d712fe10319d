"""The pool loop: its thread, start-up and teardown (``loop``), and the
supervision of workers and hosts."""
