"""What the numba CPU kernels of every operation share: their scalar float math (:mod:`.kernel_math`:
vectorisable float32 exp, softplus and sigmoid, libm for float64), the split of their work over threads
(:mod:`.threads`), the atomic counters of the fused decode stack (:mod:`.atomics`), a software prefetch
for the loops that stream weights (:mod:`.prefetch`) and the upkeep of numba's cache of them
(:mod:`.kernel_cache`)."""

from .kernel_cache import drop_stale_kernels

drop_stale_kernels()   # before any kernel loads from numba's cache (see kernel_cache)
