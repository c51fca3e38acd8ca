#!/usr/bin/env python3
"""reliability.py - the spa program under a full disk, signals and corrupt
input files (issue 9). One check per invocation:

  disk_full  20 runs at 2, 3 and 4 ranks; an LD_PRELOAD shim makes the k-th
             write of the output's temporary file fail with ENOSPC on one
             rank (each rank in turn, k spread over every write step, the
             disk staying full or not). Each run: no hang, exit 1 or 3,
             exactly one "spa: error:" line naming "No space left on
             device", no temporary file left, the existing output byte for
             byte unchanged.
  layer_disk_full
             the same for `spa layer --save-attention` (y, out and lse): a
             few runs at 2 and 3 ranks, the write failing on each rank.
  signals    SIGTERM, SIGINT, SIGUSR1 and SIGXCPU to every rank of a 2-rank
             run while it reads, computes and writes (as srun and scancel
             deliver them); SIGTERM to one rank only; SIGTERM, SIGINT and
             SIGUSR1 to mpirun. Each: exit 128 + signal (mpirun reports 1
             for the signals it turns into a job kill), one message, no
             temporary file, the target untouched. Then kill -9 during the
             write leaves a temporary file named for host and pid, and the
             next successful run of the same target removes it (but not the
             files of a live process or of another host).
  corrupt    60 byte-flipped inputs through a plain `spa run` (one rank):
             exit 0 or 3, never anything else, at most one stderr line.
             (test_corrupt tries 300 more in process, with the open-object
             count.) Then the files of damaged/, on which HDF5 itself
             faults, aborts, loops or allocates without bound: exit 3 and
             one line, at 1 and 2 ranks.
  crashes    a fault inside MPI_Init_thread at 2 ranks: one line, exit 1,
             the relaunch marker of jobs/spa.sbatch created; then a fault
             after start-up: the rank, the signal and a backtrace.

The run is held inside a phase with SPA_TEST_DELAY_<PHASE> (see io.c and
cli_stop.c); SPA_TEST_DELAY_MARK tells this driver when it has begun.
"""
import argparse
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from checks import check, finish  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("check", choices=["disk_full", "layer_disk_full", "signals", "corrupt", "crashes"])
ap.add_argument("--spa", required=True)
ap.add_argument("--mpiexec", required=True)
ap.add_argument("--npflag", default="-n")
ap.add_argument("--preflags", default="")
ap.add_argument("--shim", required=True)
ap.add_argument("--workdir", required=True)
ap.add_argument("--data", required=True)
args = ap.parse_args()

os.makedirs(args.workdir, exist_ok=True)
W = args.workdir
SMALL = ["--n", "8192", "--heads", "2", "--dim", "32"]


def mpirun(np_, spa_args, env=None):
    """The command line and environment of spa at np_ ranks; env entries
    are exported to the ranks with -x."""
    cmd = [args.mpiexec, args.npflag, str(np_)] + shlex.split(args.preflags)
    full = dict(os.environ)
    for k, v in (env or {}).items():
        full[k] = v
        cmd += ["-x", k]
    return cmd + [args.spa] + spa_args, full


def run(np_, spa_args, env=None, timeout=60):
    cmd, full = mpirun(np_, spa_args, env)
    try:
        p = subprocess.run(cmd, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=timeout, universal_newlines=True)
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        return None, e.stdout or "", e.stderr or ""


def temporaries(name):
    return sorted(f for f in os.listdir(W) if f.startswith("." + name + ".tmp."))


def clear_temporaries(name):
    for f in temporaries(name):
        os.unlink(os.path.join(W, f))


def error_lines(err):
    if isinstance(err, bytes):
        err = err.decode(errors="replace")
    return [l for l in err.splitlines() if l.startswith("spa: error:")]


def make_target(path):
    data = bytes(random.Random(7).getrandbits(8) for _ in range(4096))
    with open(path, "wb") as f:
        f.write(data)
    return data


def read(path):
    with open(path, "rb") as f:
        return f.read()


# ------------------------------------------------------------- disk full

def disk_full():
    # Every rank an MPI-IO aggregator, so that every rank writes (Open MPI's
    # OMPIO otherwise lets rank 0 write a small file alone)
    os.environ["OMPI_MCA_io_ompio_num_aggregators"] = "4"
    target = os.path.join(W, "target.h5")
    before = make_target(target)
    clear_temporaries("target.h5")
    match = os.path.join(W, ".target.h5.tmp.")
    # calibration: how many writes of the temporary file each rank makes
    writes = {}
    for np_ in (2, 3, 4):
        log = os.path.join(W, "writes_p%d.log" % np_)
        if os.path.exists(log):
            os.unlink(log)
        rc, out, err = run(np_, ["run"] + SMALL + ["--output", os.path.join(W, "calib.h5")],
                           {"LD_PRELOAD": args.shim, "SPA_ENOSPC_AT": "1000000000",
                            "SPA_ENOSPC_MATCH": os.path.join(W, ".calib.h5.tmp."),
                            "SPA_ENOSPC_LOG": log})
        check(rc == 0, "calibration at %d ranks: exit %s, %s" % (np_, rc, err[-300:]))
        counts = [0] * np_
        for line in open(log) if os.path.exists(log) else []:
            counts[int(line.split()[1])] += 1
        writes[np_] = counts
        print("writes of the temporary file per rank at %d ranks: %s" % (np_, counts))

    plan = [(2, i) for i in range(6)] + [(3, i) for i in range(6)] + [(4, i) for i in range(8)]
    hangs = leftovers = changed = 0
    for run_no, (np_, i) in enumerate(plan):
        rank = i % np_
        n = max(writes[np_][rank], 1)
        # spread over the write steps: rank 0's own (the file's creation,
        # the copy of its skeleton) and every rank's raw data
        k = [1, 2, 3, 5, 7, 4][run_no % 6] if rank == 0 else 1 + (i // np_ + rank + run_no) % n
        k = min(k, n)
        sticky = "1" if run_no % 2 else "0"
        rc, out, err = run(np_, ["run"] + SMALL + ["--output", target],
                           {"LD_PRELOAD": args.shim, "SPA_ENOSPC_AT": str(k),
                            "SPA_ENOSPC_RANK": str(rank), "SPA_ENOSPC_STICKY": sticky,
                            "SPA_ENOSPC_MATCH": match})
        lines = error_lines(err)
        tmp = temporaries("target.h5")
        what = "run %d: %d ranks, write %d of %d fails on rank %d%s" % (
            run_no + 1, np_, k, n, rank, " (and every later one)" if sticky == "1" else "")
        print("%s: exit %s, %s" % (what, rc, lines[0] if lines else "no message"))
        hangs += rc is None
        leftovers += len(tmp) > 0
        check(rc is not None, what + ": hung")
        check(rc in (1, 3), what + ": exit %s" % rc)
        check(len(lines) == 1 and "No space left on device" in lines[0],
              what + ": messages %s" % lines)
        check(not tmp, what + ": temporary files left: %s" % tmp)
        same = read(target) == before
        changed += not same
        check(same, what + ": the existing output changed")
        clear_temporaries("target.h5")
    print("disk full: %d runs, %d hangs, %d left a temporary file, %d changed the output"
          % (len(plan), hangs, leftovers, changed))


# ------------------------------------------------------- layer disk full

def make_layer_input(path, n=2048, dm=32, H=2, D=16):
    """x and the projection weights of `spa layer` (attribute heads = H)."""
    import h5py
    import numpy as np
    rng = np.random.default_rng(3)
    with h5py.File(path, "w") as f:
        f["x"] = rng.standard_normal((n, dm)).astype("f4")
        for w in ("wq", "wk", "wv"):
            f[w] = (rng.standard_normal((H * D, dm)) / np.sqrt(dm)).astype("f4")
        f["wo"] = (rng.standard_normal((dm, H * D)) / np.sqrt(H * D)).astype("f4")
        f.attrs["heads"] = H


def layer_disk_full():
    os.environ["OMPI_MCA_io_ompio_num_aggregators"] = "4"
    inp = os.path.join(W, "layer_in.h5")
    make_layer_input(inp)
    layer = ["layer", "--input", inp, "--save-attention"]
    target = os.path.join(W, "layer_out.h5")
    before = make_target(target)
    clear_temporaries("layer_out.h5")
    match = os.path.join(W, ".layer_out.h5.tmp.")
    writes = {}
    for np_ in (2, 3):
        log = os.path.join(W, "layer_writes_p%d.log" % np_)
        if os.path.exists(log):
            os.unlink(log)
        rc, out, err = run(np_, layer + ["--output", os.path.join(W, "layer_calib.h5")],
                           {"LD_PRELOAD": args.shim, "SPA_ENOSPC_AT": "1000000000",
                            "SPA_ENOSPC_MATCH": os.path.join(W, ".layer_calib.h5.tmp."),
                            "SPA_ENOSPC_LOG": log})
        check(rc == 0, "calibration at %d ranks: exit %s, %s" % (np_, rc, err[-300:]))
        counts = [0] * np_
        for line in open(log) if os.path.exists(log) else []:
            counts[int(line.split()[1])] += 1
        writes[np_] = counts
        print("writes of the temporary file per rank at %d ranks: %s" % (np_, counts))

    # each rank of 2 and 3 in turn: rank 0's first writes create the file
    # and copy its skeleton, later ones (and every other rank's) are rows of
    # y, out and lse
    # (k = -1: its last write)
    plan = [(2, 0, 1), (2, 1, 1), (2, 0, -1), (2, 0, 4), (3, 0, 2), (3, 1, 2), (3, 2, -1),
            (3, 0, -1)]
    hangs = leftovers = changed = 0
    for run_no, (np_, rank, k) in enumerate(plan):
        n = max(writes[np_][rank], 1)
        k = n if k < 0 else min(k, n)
        sticky = "1" if run_no % 2 else "0"
        rc, out, err = run(np_, layer + ["--output", target],
                           {"LD_PRELOAD": args.shim, "SPA_ENOSPC_AT": str(k),
                            "SPA_ENOSPC_RANK": str(rank), "SPA_ENOSPC_STICKY": sticky,
                            "SPA_ENOSPC_MATCH": match})
        lines = error_lines(err)
        tmp = temporaries("layer_out.h5")
        what = "layer run %d: %d ranks, write %d of %d fails on rank %d%s" % (
            run_no + 1, np_, k, n, rank, " (and every later one)" if sticky == "1" else "")
        print("%s: exit %s, %s" % (what, rc, lines[0] if lines else "no message"))
        hangs += rc is None
        leftovers += len(tmp) > 0
        check(rc is not None, what + ": hung")
        check(rc == 1, what + ": exit %s" % rc)
        check(len(lines) == 1 and "No space left on device" in lines[0],
              what + ": messages %s" % lines)
        check(not tmp, what + ": temporary files left: %s" % tmp)
        same = read(target) == before
        changed += not same
        check(same, what + ": the existing output changed")
        clear_temporaries("layer_out.h5")
    # and the same target written when the disk has room
    rc, out, err = run(2, layer + ["--output", target])
    check(rc == 0 and read(target) != before and not temporaries("layer_out.h5"),
          "layer with room: exit %s, target written, no temporary file" % rc)
    print("layer disk full: %d runs, %d hangs, %d left a temporary file, %d changed the output"
          % (len(plan), hangs, leftovers, changed))


# --------------------------------------------------------------- signals

SIGS = [("SIGTERM", signal.SIGTERM), ("SIGINT", signal.SIGINT), ("SIGUSR1", signal.SIGUSR1),
        ("SIGXCPU", signal.SIGXCPU)]


def children(pid):
    """The spa processes of an mpirun: its child processes."""
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def signalled_run(phase, how, signum, input_path, target):
    """Starts a 2-rank run held in phase, signals it once the hold has
    begun, returns (exit code, stderr)."""
    mark = os.path.join(W, "mark")
    if os.path.exists(mark):
        os.unlink(mark)
    env = {"SPA_TEST_DELAY_" + phase: "30", "SPA_TEST_DELAY_MARK": mark}
    cmd, full = mpirun(2, ["run", "--input", input_path, "--output", target], env)
    p = subprocess.Popen(cmd, env=full, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t0 = time.time()
    while not os.path.exists(mark) and time.time() - t0 < 30 and p.poll() is None:
        time.sleep(0.02)
    ranks = children(p.pid)
    if how == "all":
        for r in ranks:
            os.kill(r, signum)
    elif how == "one":
        os.kill(ranks[-1], signum)
    elif how == "mpirun":
        p.send_signal(signum)
    elif how == "kill9":
        for r in ranks:
            os.kill(r, signal.SIGKILL)
    try:
        out, err = p.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        return None, err.decode(errors="replace")
    return p.returncode, err.decode(errors="replace")


def signals():
    input_path = os.path.join(W, "in.h5")
    rc, out, err = run(2, ["gen", "--output", input_path] + SMALL)
    check(rc == 0, "gen the input: %s" % err[-300:])
    target = os.path.join(W, "target.h5")
    before = make_target(target)
    clear_temporaries("target.h5")
    cases = [(ph, "all", name, num) for ph in ("READ", "COMPUTE", "WRITE") for name, num in SIGS]
    cases += [("WRITE", "one", "SIGTERM", signal.SIGTERM), ("READ", "one", "SIGUSR1", signal.SIGUSR1)]
    cases += [("WRITE", "mpirun", name, num) for name, num in SIGS[:3]]
    for phase, how, name, num in cases:
        rc, err = signalled_run(phase, how, num, input_path, target)
        lines = error_lines(err)
        tmp = temporaries("target.h5")
        what = "%s to %s during %s" % (name, {"all": "every rank", "one": "rank 1 only",
                                               "mpirun": "mpirun"}[how], phase.lower())
        print("%s: exit %s, %s" % (what, rc, lines[0] if lines else "no message"))
        # Open MPI's mpirun turns SIGTERM and SIGINT into a job kill (a
        # SIGTERM to every rank) and then exits 1 itself
        want = 1 if how == "mpirun" and num in (signal.SIGTERM, signal.SIGINT) else 128 + num
        check(rc == want, what + ": exit %s, want %d" % (rc, want))
        check(len(lines) == 1 and "stopped by" in lines[0], what + ": messages %s" % lines)
        check(not tmp, what + ": temporary files left: %s" % tmp)
        check(read(target) == before, what + ": the target changed")
        clear_temporaries("target.h5")

    # kill -9 cannot clean up; the next successful write of the target does
    host = socket.gethostname()
    rc, err = signalled_run("WRITE", "kill9", signal.SIGKILL, input_path, target)
    tmp = temporaries("target.h5")
    print("SIGKILL during the write: exit %s, left %s" % (rc, tmp))
    check(rc is not None and rc != 0, "SIGKILL: exit %s" % rc)
    check(len(tmp) == 1 and tmp[0].startswith(".target.h5.tmp.%s." % host),
          "SIGKILL leaves one temporary file named for host and pid: %s" % tmp)
    check(read(target) == before, "SIGKILL: the target changed")
    keep = [".target.h5.tmp.%s.%d" % (host, os.getpid()),  # a live writer
            ".target.h5.tmp.other-host.12345"]              # another host's
    for k in keep:
        open(os.path.join(W, k), "w").close()
    rc, out, err = run(2, ["run", "--input", input_path, "--output", target])
    left = temporaries("target.h5")
    print("next successful run: exit %s, temporary files left: %s" % (rc, left))
    check(rc == 0, "the run after SIGKILL: exit %s %s" % (rc, err[-300:]))
    check(sorted(left) == sorted(keep), "stale temporary file removed, others kept: %s" % left)
    check(read(target) != before, "the run after SIGKILL wrote the target")
    clear_temporaries("target.h5")


# --------------------------------------------------------------- corrupt

def corrupt():
    import h5py
    base = os.path.join(W, "base.h5")
    rc, out, err = run(1, ["gen", "--output", base, "--n", "300", "--heads", "2", "--dim", "8"])
    check(rc == 0, "gen the base input: %s" % err[-300:])
    img = bytearray(read(base))
    raw = []
    with h5py.File(base, "r") as f:
        for name in ("q", "k", "v"):
            off = f[name].id.get_offset()
            raw.append((off, off + f[name].id.get_storage_size()))
    rng = random.Random(9)
    outcomes = {}
    variants = 60
    path = os.path.join(W, "variant.h5")
    for vno in range(variants):
        v = bytearray(img)
        for _ in range(rng.randint(1, 3)):
            while True:  # mostly metadata: that is where HDF5's parsers are
                pos = rng.randrange(len(v))
                if not any(a <= pos < b for a, b in raw) or rng.random() < 0.1:
                    break
            mode = rng.randrange(3)
            v[pos] = 0 if mode == 0 else 0xFF if mode == 1 else v[pos] ^ rng.randint(1, 255)
        with open(path, "wb") as f:
            f.write(v)
        # a plain `spa run` is one rank (no launcher, whose own banner would
        # add lines)
        try:
            p = subprocess.run([args.spa, "run", "--input", path], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, timeout=60, universal_newlines=True)
            rc, err = p.returncode, p.stderr
        except subprocess.TimeoutExpired as e:
            rc, err = None, e.stderr or ""
        lines = [l for l in err.splitlines() if l.strip()]
        outcomes[rc] = outcomes.get(rc, 0) + 1
        check(rc in (0, 3), "variant %d: exit %s, stderr %s" % (vno, rc, lines[:3]))
        check(len(lines) <= 1, "variant %d: %d stderr lines: %s" % (vno, len(lines), lines[:3]))
    print("%d byte-flipped inputs: exit codes %s" % (variants, outcomes))

    # Files on which HDF5 1.10 itself fails (found by fuzz_input and
    # fuzz_layout): it faults on a damaged local heap (link_lookup) or data
    # address (heap_read), allocates without bound (heap_alloc, which would
    # take the node's memory), corrupts its heap and aborts, or reads a
    # chunk shape of the wrong rank for minutes (layout_*, named
    # layout_<block>_<n>_<heads>_*). The probe child and the input guard make
    # each an input error: exit 3 and one line naming the file, at one rank
    # and at two, well inside the time limit.
    damaged = os.path.join(os.path.dirname(os.path.abspath(__file__)), "damaged")
    names = sorted(os.listdir(damaged))
    for name in names:
        path = os.path.join(damaged, name)
        if name.startswith("layout_"):
            block, n, heads = name.split("_")[1:4]
            cmd = ["run", "--layout", path, "--block", block, "--n", n, "--heads", heads,
                   "--dim", "8"]
        else:
            cmd = ["run", "--input", path]
        for np_ in (1, 2):
            t0 = time.time()
            if np_ == 1:
                try:
                    p = subprocess.run([args.spa] + cmd, stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, timeout=120,
                                       universal_newlines=True)
                    rc, err = p.returncode, p.stderr
                except subprocess.TimeoutExpired as e:
                    rc, err = None, e.stderr or ""
                lines = [l for l in (err or "").splitlines() if l.strip()]
            else:
                rc, out, err = run(np_, cmd, timeout=120)
                lines = error_lines(err)
            took = time.time() - t0
            check(rc == 3, "%s at %d rank(s): exit %s after %.0f s, stderr %s"
                  % (name, np_, rc, took, str(err)[-400:]))
            check(len(lines) == 1 and name in lines[0],
                  "%s at %d rank(s): want one line naming the file, got %s" % (name, np_, lines[:3]))
            print("%s at %d rank(s): exit %s in %.1f s: %s"
                  % (name, np_, rc, took, lines[0] if lines else ""))
    print("damaged files: %d, each exit 3 with one line at 1 and 2 ranks" % len(names))


# ------------------------------------------------------------- crashes

def crashes():
    """A fault inside MPI_Init_thread (the test hook SPA_TEST_INIT_FAULT
    faults the first process to create its file, as Open MPI 4.1 does under
    srun over TCP): one line saying so, exit 1, the file SPA_INIT_FAULT_FILE
    names created, and a launch after it succeeds. A fault after start-up
    (SPA_TEST_CRASH_AFTER_INIT): the rank, the signal and a backtrace, then
    the default action."""
    hook, marker = os.path.join(W, "init-hook"), os.path.join(W, "init-fault")
    for f in (hook, marker):
        if os.path.exists(f):
            os.unlink(f)
    env = {"SPA_TEST_INIT_FAULT": hook, "SPA_INIT_FAULT_FILE": marker}
    rc, out, err = run(2, ["--version"], env=env)
    lines = [l for l in error_lines(err) if "MPI_Init_thread" in l]
    check(rc not in (0, None), "start-up fault: exit %s (want a failure)" % rc)
    check(len(lines) == 1 and "crashed inside MPI_Init_thread (signal 11)" in lines[0],
          "start-up fault: want one line about it, got %s" % error_lines(err)[:3])
    check(os.path.exists(marker), "start-up fault: SPA_INIT_FAULT_FILE was not created")
    check("Process received signal" not in err, "start-up fault: MPI's own handler ran: %s" % err[-300:])
    os.unlink(marker)
    rc, out, err = run(2, ["--version"], env=env)  # the hook's file exists: no fault
    check(rc == 0 and "spa " in out, "launch after the fault: exit %s, %s" % (rc, err[-300:]))
    check(not os.path.exists(marker), "launch after the fault created SPA_INIT_FAULT_FILE")
    print("start-up fault: one line, exit 1, marker created; the next launch ran")

    p = subprocess.run([args.spa, "--version"], env=dict(os.environ, SPA_TEST_CRASH_AFTER_INIT="1"),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60, universal_newlines=True)
    check(p.returncode == -signal.SIGSEGV, "fault after start-up: exit %s (want SIGSEGV)" % p.returncode)
    check("spa: error: rank 0 crashed with signal 11 (SIGSEGV); backtrace:" in p.stderr,
          "fault after start-up: no rank and signal line: %s" % p.stderr[-300:])
    frames = p.stderr.split("backtrace:", 1)[-1].count("[0x")
    check(frames >= 3, "fault after start-up: %d backtrace frames: %s" % (frames, p.stderr[-300:]))
    print("fault after start-up: rank, signal and backtrace, then SIGSEGV")


{"disk_full": disk_full, "layer_disk_full": layer_disk_full, "signals": signals,
 "corrupt": corrupt, "crashes": crashes}[args.check]()
finish()
