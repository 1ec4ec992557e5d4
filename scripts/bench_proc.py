"""/proc readings for scripts/bench: memory and CPU of processes and process trees."""
import os, time

TICKS = os.sysconf("SC_CLK_TCK")


def _status_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def mem(pid):
    """(RSS, PSS) in bytes."""
    rss = _status_kb(pid, "VmRSS:")
    pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    return rss, pss


def hwm(pid):
    """Peak RSS so far (VmHWM) in bytes."""
    return _status_kb(pid, "VmHWM:")


def alive(pid):
    return os.path.exists(f"/proc/{pid}/smaps_rollup")


def tree(pid):
    """pid and all its descendants, from the kernel's children lists."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return out


def tree_mem(pid):
    """(RSS, PSS) summed over the process tree of pid."""
    rss = pss = 0
    for p in tree(pid):
        try:
            r, s = mem(p)
        except OSError:
            continue
        rss, pss = rss + r, pss + s
    return rss, pss


def cpu_seconds(pid):
    """user + system CPU seconds of one process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def cpu_ns_seconds(pid):
    """CPU seconds of pid's live threads, to the nanosecond (/proc/PID/task/*/schedstat).

    /proc/PID/stat counts in clock ticks (10 ms), too coarse for a one-second sample of a
    process using about 1%; a thread that exited is missing here, which cpu_seconds covers."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
            pass
    return total / 1e9


def cpu_percent_samples(pid, seconds, clock=cpu_ns_seconds):
    """CPU % of pid in each second of a `seconds`-long window (at least one sample)."""
    samples = []
    step = min(1.0, seconds)
    before, t = clock(pid), time.monotonic()
    for _ in range(max(1, round(seconds / step))):
        time.sleep(step)
        now, t2 = clock(pid), time.monotonic()
        samples.append(100.0 * (now - before) / (t2 - t))
        before, t = now, t2
    return samples
