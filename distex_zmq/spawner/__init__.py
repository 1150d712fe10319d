"""The spawner daemon, run once on each host (``python -m distex_zmq.spawner``).

``daemon`` holds the spawner, ``__main__`` its command line (also the
``distex-zmq-spawner`` console script).
"""
