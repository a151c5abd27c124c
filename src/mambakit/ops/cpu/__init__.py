"""What the numba CPU kernels of every operation share: their scalar float math (:mod:`.kernel_math`:
vectorisable float32 exp, softplus and sigmoid, libm for float64), the split of their work over threads
(:mod:`.threads`), the atomic counters of the fused decode stack (:mod:`.atomics`) and a software prefetch
for the loops that stream weights (:mod:`.prefetch`)."""
