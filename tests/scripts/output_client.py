"""A client for tests/test_output.py: ``python output_client.py SCENARIO JSON_KWARGS GO_FILE``.

It makes ``Pool(**kwargs)``, runs one task of ``SCENARIO`` and prints
``RESULT host pid`` (or ``LOST``) on its stdout (but for the scenarios that
end a partial line: see ``ENDS_A_PARTIAL_LINE``); the workers' lines come to
its stdout and stderr as the pool writes them. Its own log handler prints
the records re-emitted from the workers as ``LOG name level host pid worker
message`` lines on stdout. Scenario ``stalled`` prints on stderr only: it
submits ``flood``, runs a map, gives the flood 2 s more, says ``ALIVE``
and whether the flood is still ``waiting`` (nobody reads its stdout so
far), and waits for it to end.
"""

import concurrent.futures
import json
import logging
import os
import signal
import socket
import sys
import time

from distex_zmq import Pool, WorkerLostError


def live(go_file):
    print("hello-out")
    print("hello-err", file=sys.stderr)
    while not os.path.exists(go_file):  # the test sees the lines while this runs
        time.sleep(0.02)
    return socket.gethostname(), os.getpid()


def sigkill(go_file):
    print("last words before SIGKILL")
    os.kill(os.getpid(), signal.SIGKILL)


def exit_partial(go_file):
    sys.stdout.write("no newline before _exit")
    os._exit(3)


def wait_for(go_file):
    while not os.path.exists(go_file):
        time.sleep(0.02)


def partial(go_file):
    sys.stdout.write("partial-out")
    sys.stdout.flush()
    print("partial-err", end="", file=sys.stderr, flush=True)
    wait_for(go_file)  # the test sees the partial lines while this runs
    print(", ended")
    print(", ended", file=sys.stderr)
    return socket.gethostname(), os.getpid()


def redraw(go_file):
    sys.stdout.write("\rstep 1")
    wait_for(go_file)
    sys.stdout.write("\rstep 2")
    time.sleep(0.5)  # a redraw on its own, or with the next: either way tagged
    sys.stdout.write("\rstep 3\n")
    return socket.gethostname(), os.getpid()


def bar(go_file):
    from tqdm import tqdm

    progress = tqdm(total=2, desc="bar", ascii=True, ncols=60, mininterval=0)
    progress.update(1)
    wait_for(go_file)
    progress.update(1)
    progress.close()
    return socket.gethostname(), os.getpid()


def long_line(go_file):
    print("z" * 300_000)  # longer than a read, and than an output event
    return socket.gethostname(), os.getpid()


def flood(go_file):
    line = "x" * 99
    for _ in range(200_000):  # 20 MB, faster than a host forwards
        print(line)
    return socket.gethostname(), os.getpid()


def logs(go_file):
    log = logging.getLogger("user.tasks")
    log.info("an info record")
    log.warning("a warning record %d", 42)
    try:
        print(1 / 0)
    except ZeroDivisionError:
        log.exception("an error record")
    return socket.gethostname(), os.getpid()


#: Scenarios that print no RESULT: it could come before the task's last
#: line is written, in the middle of the partial line that it ends.
ENDS_A_PARTIAL_LINE = ("partial", "redraw", "bar", "long_line")


def main():
    scenario, kwargs, go_file = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        logging.Formatter("LOG %(name)s %(levelname)s %(host)s %(pid)s %(worker)s %(message)s")
    )
    user = logging.getLogger("user")
    user.addHandler(handler)
    user.propagate = False
    if scenario == "stalled":
        with Pool(**kwargs, max_retries=0) as pool:
            flooding = pool.submit(flood, go_file)
            assert list(pool.map(abs, range(-50, 50))) == [abs(i) for i in range(-50, 50)]
            done, _ = concurrent.futures.wait([flooding], timeout=2)
            print("ALIVE", "done" if done else "waiting", file=sys.stderr, flush=True)
            flooding.result()
        print("SHUT DOWN", file=sys.stderr, flush=True)
        return
    # one write per line: the tasks' log records are written on the pool's
    # output thread, which may write between print's text and its newline
    with Pool(**kwargs, max_retries=0) as pool:
        try:
            host, pid = pool.run(globals()[scenario], go_file)
        except WorkerLostError:
            sys.stdout.write("LOST\n")
        else:
            if scenario not in ENDS_A_PARTIAL_LINE:
                sys.stdout.write(f"RESULT {host} {pid}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
