"""The wire formats: broker-worker frames (``frames``), pool-host control
messages (``control``), and the ZeroMQ I/O helpers both use (``zmqio``)."""
