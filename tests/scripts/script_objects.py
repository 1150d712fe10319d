"""Script-defined objects as task data, run as ``python script_objects.py``.

``__main__`` is this script, as for a user's script. The first argument picks
the executor: ``local``, ``spawner:PORT``, ``ssh:HOST`` or ``control`` (a
``ProcessPoolExecutor``); the second, if given, a local pool's
``data_pickle`` (``cloudpickle``, ``dill``; ``auto`` if not). It prints
``OK`` when every check holds.
"""

import dataclasses
import enum
import functools
import operator
import os
import pickle
import sys
import typing
from collections import namedtuple
from concurrent.futures import ProcessPoolExecutor


@dataclasses.dataclass
class Job:
    n: int
    tags: list = dataclasses.field(default_factory=list)

    def double(self):
        return Job(self.n * 2, self.tags)


class Color(enum.Enum):
    RED = 1
    BLUE = 2


class Planet(enum.Enum):
    """The enum docs' example: members made by the enum's ``__init__``."""

    EARTH = (5.97e24, 6.37e6)
    MARS = (6.42e23, 3.39e6)

    def __init__(self, mass, radius):
        self.mass = mass
        self.radius = radius


class Coord(enum.Enum):
    """Members made by the enum's ``__new__``, with a value of its choice."""

    def __new__(cls, value, label):
        member = object.__new__(cls)
        member._value_ = value
        member.label = label
        return member

    X = (0, "the x axis")
    Y = (1, "the y axis")


class Perm(enum.IntFlag):
    """Members that are no single bit (none, all), which iterating a Flag skips."""

    NONE = 0
    R = 4
    W = 2
    X = 1
    RWX = 7


class Rank(enum.IntFlag):
    """Only members that are no single bit."""

    LOW = 11
    HIGH = 37


class Shape(enum.Enum):
    SQUARE = 2
    BOX = 2  # an alias
    CIRCLE = 3


def identity(x):
    return x


def enum_facts(_):
    """What a worker makes of the script's enums."""
    return (
        Planet.MARS.radius,
        Coord(1).label,
        list(Perm.__members__),
        Perm["RWX"] is Perm.R | Perm.W | Perm.X,
        Rank(37).name,
        Shape.BOX is Shape.SQUARE,
    )


class Box:
    def __init__(self, value):
        self.value = value


class Point:
    __slots__ = ("x", "y")

    def __init__(self, x, y):
        self.x, self.y = x, y


@dataclasses.dataclass(slots=True, frozen=True)
class Pair:
    left: int
    right: int


class Circle:
    def __init__(self, r):
        self.r = r

    @functools.cached_property
    def area(self):
        return 3 * self.r * self.r

    def twice_the_area(self):
        return 2 * self.area


class Span(typing.NamedTuple):
    start: int
    end: int = 0

    def length(self):
        return self.end - self.start


Cell = namedtuple("Cell", "row col")

T = typing.TypeVar("T")
P = typing.ParamSpec("P")


class Stack(typing.Generic[T]):
    def __init__(self, items):
        self.items = list(items)

    def top(self) -> T:
        return self.items[-1]


class Counting(type):
    """Counts the classes it makes in this process, in its environment: the
    class statement, and each class that an unpickling makes."""

    def __new__(mcls, *args, **kwargs):
        os.environ["DZQ_CLASSES_MADE"] = str(classes_made() + 1)
        return super().__new__(mcls, *args, **kwargs)


def classes_made():
    return int(os.environ.get("DZQ_CLASSES_MADE", "0"))


@dataclasses.dataclass
class Tally(metaclass=Counting):
    n: int


def tally_up(tally):
    return Tally(tally.n + 1), classes_made()


def make_stack(n):
    return Stack[int](range(n))


class Call(typing.Generic[P, T]):
    def __init__(self, func):
        self.func = func

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T:
        return self.func(*args, **kwargs)


def call_twice(x):
    return Call(operator.mul)(x, 2)


if sys.version_info >= (3, 12):
    # a type variable whose variance a type checker infers (PEP 695)
    V = typing.TypeVar("V", infer_variance=True)
if sys.version_info >= (3, 13):
    # type parameters with defaults (PEP 696), as `class Defaults[T, B = int]` makes
    B = typing.TypeVar("B", default=int)
    Q = typing.ParamSpec("Q", default=[int, str])
    Rest = typing.TypeVarTuple("Rest", default=typing.Unpack[tuple[int, ...]])

    class Defaults(typing.Generic[T, B, Q]):
        pass

    class Row(typing.Generic[T, typing.Unpack[Rest]]):
        pass


try:
    import typing_extensions
except ImportError:  # its check is left out
    typing_extensions = None
if typing_extensions is not None:
    # typing_extensions gives a type variable a default before Python 3.13 too
    X = typing_extensions.TypeVar("X", default=int)

    class Extended(typing.Generic[X]):
        pass


# a NewType, and type aliases (Python 3.12's type statement, a SyntaxError
# before it: top-level statements of this script all the same), which pickle
# sends by name
UserId = typing.NewType("UserId", int)
if sys.version_info >= (3, 12):
    Vector = Tree = Couple = None  # (for the linter) made by these statements
    exec(
        compile(
            "type Vector = list[float]\n"
            "type Tree = int | list[Tree]\n"  # one that names itself
            "type Couple[K: (int, str)] = tuple[K, K]\n",
            __file__,
            "exec",
        )
    )
else:
    Vector = list[float]


def next_id(user: UserId) -> UserId:
    return UserId(user + 1)


def scale(vector: Vector, factor: float) -> Vector:
    return [factor * x for x in vector]


def couple_of(kind):
    return Couple[kind]


def given_str(cls):
    """The arguments of generic class ``cls`` given ``str`` for its first
    type parameter: the others' defaults."""
    return cls[str].__args__


SCALE = {"factor": 1}


class Settings:
    level = 1

    def scaled(self, x):
        return x * SCALE["factor"] * self.level


def retune(level):
    Settings.level = level
    Settings.extra = "set by a task"
    return Settings()


def stretch(span):
    return Span(span.start, span.end + 1)


@functools.lru_cache(maxsize=16)
def cached_square(x):
    return x * x


@functools.cache
def cached_cube(x):
    return x**3


@functools.singledispatch
def kind_of(x):
    return "object"


@kind_of.register
def _(x: int):
    return "int"


@kind_of.register
def _(x: Box):
    return "box"


def mirror(point):
    return Point(point.y, point.x)


def swap(pair):
    return Pair(pair.right, pair.left)


def work(job):
    return job.double()


def paint(color):
    return Color.BLUE if color is Color.RED else Color.RED


def open_box(box):
    return Box([box.value, os.getpid()])


def apply(func, value):
    return func(value)


def logged(func):
    @functools.wraps(func)
    def wrapper(*args):
        return func(*args)

    return wrapper


@logged
def halve(x):
    return x / 2


def make_jobs(n):
    return [Job(i) for i in range(n)]


def describe(color):
    return Color(color).name


def fields_of(job):
    return [f.name for f in dataclasses.fields(job)]


@dataclasses.dataclass
class Record:
    """Met by workers only as an argument: no function names it."""

    key: str


def repickled(obj):
    # a task that pickles its argument (a cache on disk, joblib.dump, a
    # queue): standard pickle finds a class of the script by its name in
    # __main__
    return pickle.loads(pickle.dumps(obj)) == obj


def check(executor, lambdas=True):
    """What ``ProcessPoolExecutor`` runs; ``lambdas``: and what it cannot
    pickle (lambdas, which the pool sends by value)."""
    out = executor.submit(work, Job(3, ["x"])).result()
    assert isinstance(out, Job) and out == Job(6, ["x"]), out
    assert executor.submit(repickled, Record("k")).result() is True
    assert executor.submit(paint, Color.RED).result() is Color.BLUE
    box = executor.submit(open_box, Box(5)).result()
    assert isinstance(box, Box) and box.value[0] == 5, box
    # a script function as argument, script objects in containers
    assert executor.submit(apply, work, Job(1)).result() == Job(2)
    assert executor.submit(apply, len, {"a": [Job(1), Color.RED]}).result() == 1
    jobs = executor.submit(make_jobs, 3).result()
    assert all(type(j) is Job for j in jobs) and [j.n for j in jobs] == [0, 1, 2]
    assert executor.submit(describe, 2).result() == "BLUE"
    assert executor.submit(fields_of, Job(1)).result() == ["n", "tags"]
    assert list(executor.map(work, [Job(i) for i in range(5)])) == [Job(2 * i) for i in range(5)]
    assert list(executor.map(paint, [Color.RED, Color.BLUE])) == [Color.BLUE, Color.RED]
    # a class of the script is made once in a worker, however many tasks
    # carry it (a worker started by this process has its count, 1, from the
    # environment), and its results are of the client's class, made by none
    made = list(executor.map(tally_up, [Tally(i) for i in range(40)], chunksize=1))
    assert [t for t, _ in made] == [Tally(i + 1) for i in range(40)], made
    assert type(made[0][0]) is Tally and max(n for _, n in made) <= 2, made
    assert classes_made() == 1, classes_made()
    # enums whose members their __init__ or __new__ made, flags that are
    # no single bit, aliases
    assert executor.submit(apply, operator.attrgetter("mass"), Planet.EARTH).result() == 5.97e24
    assert executor.submit(enum_facts, 0).result() == (
        3.39e6,
        "the y axis",
        ["NONE", "R", "W", "X", "RWX"],
        True,
        "HIGH",
        True,
    )
    members = [Coord.Y, Perm.NONE, Perm.RWX, Perm.R | Perm.X, Rank.LOW, Shape.BOX, Planet.MARS]
    back = executor.submit(identity, members).result()
    assert all(b is m for b, m in zip(back, members, strict=True)), back
    assert executor.submit(apply, operator.attrgetter("label"), Coord.X).result() == "the x axis"
    # classes with __slots__ (no __dict__), both ways
    point = executor.submit(mirror, Point(1, 2)).result()
    assert type(point) is Point and (point.x, point.y) == (2, 1), point
    assert executor.submit(swap, Pair(1, 2)).result() == Pair(2, 1)
    span = executor.submit(stretch, Span(1, 2)).result()
    assert type(span) is Span and span == (1, 3) and span.length() == 2, span
    assert executor.submit(apply, operator.methodcaller("length"), Span(2)).result() == -2
    cell = executor.submit(apply, lambda c: c._replace(col=5), Cell(1, 2)) if lambdas else None
    assert cell is None or (type(cell.result()) is Cell and cell.result() == (1, 5))
    assert executor.submit(apply, Cell._make, [3, 4]).result() == Cell(3, 4)
    # a generic class of the script, whose type variable is the script's too
    stack = executor.submit(make_stack, 3).result()
    assert type(stack) is Stack and stack.top() == 2, stack
    assert executor.submit(apply, Stack.top, Stack([4])).result() == 4
    assert executor.submit(apply, operator.attrgetter("__parameters__"), Stack).result() == (T,)
    assert executor.submit(apply, operator.attrgetter("__name__"), T).result() == "T"
    assert executor.submit(call_twice, 4).result() == 8
    assert executor.submit(apply, operator.attrgetter("__parameters__"), Call).result() == (P, T)
    assert type(executor.submit(apply, Call, len).result()) is Call
    # ... which keep their defaults (Python 3.13) and inferred variance (3.12)
    if sys.version_info >= (3, 12):
        assert executor.submit(apply, operator.attrgetter("__infer_variance__"), V).result()
    if sys.version_info >= (3, 13):
        assert executor.submit(apply, given_str, Defaults).result() == (str, int, (int, str))
        row = executor.submit(apply, given_str, Row).result()
        assert row == (str, typing.Unpack[tuple[int, ...]]), row
    if typing_extensions is not None:
        params = executor.submit(apply, operator.attrgetter("__parameters__"), Extended)
        assert params.result() == (X,)
    # a NewType and type aliases of the script, in a function's annotations
    # and globals, as arguments and as results, which are the script's own
    assert executor.submit(next_id, UserId(1)).result() == 2
    assert executor.submit(identity, UserId).result() is UserId
    assert executor.submit(apply, operator.attrgetter("__supertype__"), UserId).result() is int
    assert executor.submit(scale, [1.0, 2.0], 2).result() == [2.0, 4.0]
    if sys.version_info >= (3, 12):
        assert executor.submit(identity, Vector).result() is Vector
        assert (
            executor.submit(apply, operator.attrgetter("__value__"), Vector).result()
            == (list[float])
        )
        tree = executor.submit(apply, operator.attrgetter("__value__"), Tree).result()
        assert tree == int | list[Tree] and typing.get_args(tree)[1].__args__[0] is Tree, tree
        assert executor.submit(couple_of, int).result() == Couple[int]
    if sys.version_info >= (3, 12) and lambdas:  # pickle takes no type parameter of PEP 695
        params = executor.submit(apply, operator.attrgetter("__type_params__"), Couple).result()
        assert [(p.__name__, p.__constraints__) for p in params] == [("K", (int, str))], params
    # a result of a class of the script leaves the client's class as the
    # script made it: its attributes, and its methods, which see the script's
    # globals
    scaled = Settings.scaled
    settings = executor.submit(retune, 5).result()
    assert type(settings) is Settings and settings.level == 1, vars(Settings)
    assert Settings.scaled is scaled and not hasattr(Settings, "extra"), vars(Settings)
    SCALE["factor"] = 3
    assert settings.scaled(2) == 6, settings.scaled(2)
    # a function of the script in a result is the script's own, as
    # standard pickle sends it back (by name): a key of the script's dicts,
    # one that pickle takes again, and that sees the script's globals now
    assert executor.submit(identity, work).result() is work
    job = executor.submit(identity, Job(1, [work, halve])).result()
    assert job.tags[0] is work and job.tags[1] is halve, job
    assert executor.submit(identity, {work: 1}).result() == {work: 1}
    assert executor.submit(repickled, job).result() is True
    assert pickle.loads(pickle.dumps(job)) == job
    if lambdas:
        # one the script has not under its name (its decorator's wrapper
        # is): a copy, as before
        inner = executor.submit(apply, operator.attrgetter("__wrapped__"), halve).result()
        assert inner is not halve and inner(4) == 2
    # a class itself, as argument and result
    assert executor.submit(apply, fields_of, Job).result() == ["n", "tags"]
    assert executor.submit(apply, type, Job(1)).result() is Job
    # cached functions (standard pickle sends them by name) and a class with
    # a cached property (before Python 3.12 it holds a lock)
    assert executor.submit(apply, cached_square, 3).result() == 9
    assert executor.submit(apply, cached_cube, 2).result() == 8
    assert executor.submit(apply, operator.attrgetter("area"), Circle(2)).result() == 12
    assert executor.submit(apply, Circle, 3).result().area == 27
    # ... and its bound method as the task's function
    assert executor.submit(Circle(2).twice_the_area).result() == 24
    # a singledispatch function (its dispatch cache holds weak references)
    assert executor.submit(apply, kind_of, 1).result() == "int"
    assert executor.submit(kind_of, Box(1)).result() == "box"
    assert list(executor.map(kind_of, ["s", 2])) == ["object", "int"]
    if lambdas:
        assert executor.submit(apply, lambda x: x + 1, 1).result() == 2
        assert executor.submit(lambda j: j.n, Job(7)).result() == 7
        assert executor.submit(apply, lambda c: c, Color).result() is Color


def main():
    kind = sys.argv[1]
    if kind == "control":
        with ProcessPoolExecutor(2) as executor:
            check(executor, lambdas=False)
    else:
        from distex_zmq import PickleType, Pool

        if kind == "local":
            pool = Pool(2, data_pickle=PickleType[sys.argv[2] if len(sys.argv) > 2 else "auto"])
        elif kind.startswith("spawner:"):
            pool = Pool(None, hosts=f"127.0.0.1:{kind.split(':')[1]}/2")
        elif kind.startswith("ssh:"):
            pool = Pool(None, hosts=f"ssh://{kind.split(':', 1)[1]}", **ssh_options())
        else:
            raise SystemExit(f"unknown executor {kind}")
        with pool:
            check(pool)
    print("OK")


def ssh_options():
    import json

    return json.loads(os.environ.get("DZQ_SSH_OPTIONS", "{}"))


if __name__ == "__main__":
    main()
