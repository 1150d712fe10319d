"""Launchers: start and supervise a pool's workers, locally (``local``), over
SSH (``ssh``, through an agent) or through a spawner (``spawner``)."""
