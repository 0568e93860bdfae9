"""Training: ``step`` (the Trainer: model, optimisers and the static step with its CUDA-graph
capture), ``state`` (the checkpoint payload, saving, restoring and the resume checks) and
``loop`` (``train()``: the loop, the run writer and the stop signal)."""
