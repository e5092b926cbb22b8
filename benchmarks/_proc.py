"""Process measurements shared by the benchmark workers (plain stdlib: the peer
environments import it too)."""

import resource


def peak_rss_gb() -> float:
    """This process's peak resident set (VmHWM).  Not ru_maxrss: on Linux that survives
    fork+exec and would report the parent's size."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
