"""The module next to ``sibling_module.py``, as a user's ``utils.py``: the
script imports it from its own directory, which a spawner's workers do not
have on their path."""

import dataclasses


@dataclasses.dataclass
class Box:
    n: int


def double(x):
    return 2 * x


def bump(box):
    return Box(box.n + 1)
