"""TensorRT backend, all of it: the logger and error glue (:mod:`.logger`), the build plan per
TensorRT release (:mod:`.plan`), the build and its self-check (:mod:`.build`) and the runner
(:mod:`.runner`). Importing this package imports neither tensorrt nor pycuda.
"""
