"""What the numba CPU kernels of every operation share: their scalar float math (:mod:`.kernel_math`:
vectorisable float32 exp, softplus and sigmoid, libm for float64) and the split of their work over threads
(:mod:`.threads`)."""
