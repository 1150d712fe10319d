"""The supervising agent of one pool on one SSH host (``python -m distex_zmq.agent``).

The pool starts it over SSH; ``daemon`` holds the agent, ``__main__`` its
command line.
"""
