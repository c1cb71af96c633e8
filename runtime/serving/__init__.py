"""Serving the landmark model to many clients through NVIDIA Triton Inference Server (PyTriton).

    models          the two served models' tensors and what they compute (numpy only)
    pytriton_fixes  what PyTriton and its Python-backend stub need to serve correctly here
    client          calling the served models with tritonclient (HTTP or gRPC)
    process         the serve command as a child process on free loopback ports (load test, tests)

The command is runtime/serve.py; the load test runtime/loadtest.py. PyTriton and tritonclient (the ``serve``
extra) are imported only inside these modules' functions, so ``import runtime`` never needs them.
"""
