"""Ahead-of-time compile of a kernel module's specs for sm_80/89/90, in a subprocess."""

import json
import os
import subprocess
import sys

_AOT_SCRIPT = r"""
import json, os, re, subprocess, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
import importlib
mod = importlib.import_module(sys.argv[1])
tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
rows = []
from hrm_fast.compile_report import preset_shape
for preset in ("seed", "paper"):
    for s in mod.aot_specs(preset_shape(preset)):
        for cc in (80, 89, 90):
            src = triton.compiler.ASTSource(fn=s.fn, signature=s.signature, constexprs=s.constexprs)
            opts = {"num_warps": s.num_warps, "num_stages": s.num_stages}
            k = triton.compile(src, target=GPUTarget("cuda", cc, 32), options=opts)
            with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
                f.write(k.asm["cubin"])
                f.flush()
                out = subprocess.run([tool, "--dump-resource-usage", f.name],
                                     capture_output=True, text=True).stdout
            use = {k: int(v) for k, v in re.findall(r"(REG|STACK|LOCAL):(\d+)", out)}
            rows.append(dict(preset=preset, name=s.name, cc=cc, **use))
print(json.dumps(rows))
"""


def aot_resource_usage(module: str) -> list[dict]:
    """Compile every aot_spec for sm_80/89/90 in a subprocess (the kernels in this process are
    interpreter functions) and return cuobjdump's REG/STACK/LOCAL per kernel."""
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    proc = subprocess.run(
        [sys.executable, "-c", _AOT_SCRIPT, module], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])
