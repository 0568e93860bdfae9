"""Trace the fused training step through torch.compile on a machine without a GPU.

Run as a script (``python tests/support/trace_fused_step.py TASK_DIR [MODEL_JSON]``; MODEL_JSON
overrides fields of the debug preset's model), in its own process: it needs
TRITON_INTERPRET=0 before triton is imported. Prints one JSON object: the hrm_fast ops in
dynamo's graph and the Triton launches aot_autograd lowers them to, forward and backward.

Tracing asks Triton's driver for nothing but the compile target (to build each kernel's
TTIR and find what it mutates), so a stand-in driver naming sm_89 lets it run here. Nothing
is executed: the compiled forward raises ``Traced`` instead of launching.
"""

import collections
import json
import os
import sys

os.environ["TRITON_INTERPRET"] = "0"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402


class TargetOnlyDriver:
    def get_current_target(self):
        return GPUTarget("cuda", 89, 32)

    def get_current_device(self):
        return 0

    def is_active(self):
        return True


class Traced(Exception):
    pass


def main(task_dir: str, model_overrides: dict) -> dict:
    triton.runtime.driver.set_active(TargetOnlyDriver())
    import hrm_fast.kernels.dispatch as dispatch
    import torch._functorch.config as functorch_config
    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_module_simplified
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    from hrm_fast.presets import from_name
    from hrm_fast.trainer.step import Trainer

    cfg = from_name("debug")
    cfg.data.source = task_dir
    for k, v in model_overrides.items():
        setattr(cfg.model, k, v)
    cfg.train.device, cfg.train.backend = "cpu", "fused"
    trainer = Trainer(cfg)

    graphs = {}

    def record(name):
        def compiler(gm, example_inputs):
            graphs[name] = gm

            def run(*args):
                raise Traced

            return make_boxed_func(run)

        return compiler

    def backend(gm, example_inputs):
        graphs["dynamo"] = gm
        return aot_module_simplified(
            gm, example_inputs, fw_compiler=record("forward"), bw_compiler=record("backward")
        )

    functorch_config.force_non_lazy_backward_lowering = True  # trace the backward now
    dispatch._triton_on_cpu = True  # CPU tensors take the triton_ops, as CUDA ones would
    step = torch.compile(trainer._forward_loss, fullgraph=True, backend=backend)
    try:
        step(trainer.carry)
    except Traced:
        pass

    def calls(gm):
        c = collections.Counter()
        for n in gm.graph.nodes:
            if n.op == "call_function":
                name = str(n.target)
                if name.startswith("hrm_fast.") or "triton_kernel_wrapper" in name:
                    kernel = n.kwargs.get("kernel_idx")
                    if kernel is not None:
                        name = kernel_side_table.get_kernel(kernel).fn.__name__
                    c[name] += 1
        return dict(c)

    return {k: calls(gm) for k, gm in graphs.items()}


if __name__ == "__main__":
    overrides = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    print(json.dumps(main(sys.argv[1], overrides)))
