import os

# The thread count adapts to other processes' load (foldconv/functional/threads.py) and
# OpenBLAS's sums depend on it: keep it fixed so that runs compared bit for bit (resume
# tests) see the same count whatever else this machine is doing.
os.environ.setdefault("FOLDCONV_ADAPTIVE_THREADS", "0")

from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    deadline=None,
    max_examples=int(os.environ.get("FOLDCONV_HYPOTHESIS_EXAMPLES", "60")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
settings.load_profile("default")
