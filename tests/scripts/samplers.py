"""emcee's ``EnsembleSampler(..., pool=pool)`` and DEAP's
``toolbox.register("map", pool.map)``, as a scientific script passes a pool
to them; run as ``python samplers.py EXECUTOR`` (``__main__`` is this file).

EXECUTOR is ``local`` (a ``Pool(2)``) or ``control`` (a
``ProcessPoolExecutor(2)``). emcee: a log-probability function of the
script with ``args`` (an object of a class of the script) and ``kwargs``,
with blobs, must give the chain of the same seeded run done serially; an
error of the function reaches the caller as its own type. DEAP: the classes
that ``creator.create`` makes are made in the pool's ``initializer`` too (the
workers do not run the script's top level), so a task that makes an
individual works, and the seeded evolution gives the serial one's result.
Prints ``OK``.
"""

import random
import sys
from concurrent.futures import ProcessPoolExecutor

import emcee
import numpy as np
from deap import algorithms, base, creator, tools

from distex_zmq import Pool


class Gaussian:
    def __init__(self, mu):
        self.mu = mu


def log_prob(x, model, scale=1.0):
    return -0.5 * float(np.sum(((x - model.mu) / scale) ** 2)), float(x[0])


def failing_log_prob(x):
    if x[0] > 0.5:
        raise FloatingPointError(f"diverged at {x[0]:.3f}")
    return -0.5 * float(np.sum(x**2))


def chain(pool):
    np.random.seed(42)
    sampler = emcee.EnsembleSampler(
        8, 2, log_prob, args=(Gaussian(np.array([1.0, 2.0])),), kwargs={"scale": 2.0}, pool=pool
    )
    sampler.run_mcmc(np.random.randn(8, 2), 30, progress=False)
    return sampler.get_chain(), sampler.get_blobs()


def make_classes():
    creator.create("FitnessMax", base.Fitness, weights=(1.0,))
    creator.create("Individual", list, fitness=creator.FitnessMax)


make_classes()


def ones(individual):
    return (sum(individual),)


def made_in_a_task(n):
    return creator.Individual([1] * n)


def evolve(map_func):
    toolbox = base.Toolbox()
    toolbox.register("attr", random.randint, 0, 1)
    toolbox.register("individual", tools.initRepeat, creator.Individual, toolbox.attr, 30)
    toolbox.register("population", tools.initRepeat, list, toolbox.individual)
    toolbox.register("evaluate", ones)
    toolbox.register("mate", tools.cxTwoPoint)
    toolbox.register("mutate", tools.mutFlipBit, indpb=0.05)
    toolbox.register("select", tools.selTournament, tournsize=3)
    toolbox.register("map", map_func)
    random.seed(64)
    population = toolbox.population(n=40)
    population, _ = algorithms.eaSimple(
        population, toolbox, cxpb=0.5, mutpb=0.2, ngen=10, verbose=False
    )
    return [list(ind) for ind in population], [ind.fitness.values for ind in population]


def main(executor):
    serial_chain, serial_evolution = chain(None), evolve(map)
    if executor == "control":
        pool = ProcessPoolExecutor(2, initializer=make_classes)
    else:
        pool = Pool(2, initializer=make_classes)
    with pool:
        samples, blobs = chain(pool)
        assert np.array_equal(samples, serial_chain[0]) and np.array_equal(blobs, serial_chain[1])
        sampler = emcee.EnsembleSampler(8, 2, failing_log_prob, pool=pool)
        try:
            sampler.run_mcmc(np.random.randn(8, 2) + 1, 5, progress=False)
        except FloatingPointError as e:
            assert "diverged at" in str(e), e
        else:
            raise AssertionError("the error of the log-probability function was not raised")
        made = list(pool.map(made_in_a_task, [2, 3]))
        # (unpickling an individual makes its class again in deap.creator)
        assert [type(ind).__qualname__ for ind in made] == ["Individual"] * 2, made
        assert [ind.fitness.valid for ind in made] == [False, False], made
        assert evolve(pool.map) == serial_evolution
    print("OK")


if __name__ == "__main__":
    main(sys.argv[1])
