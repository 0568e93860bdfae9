"""``hrm-fast kernels-report`` (and ``python -m hrm_fast.compile_report``, which CMake runs):
compile every spec for the chosen targets, print one table, optionally write the JSON."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from hrm_fast.errors import UserError
from hrm_fast.files import prepare_dir, write_output

from .driver import DEFAULT_ARCHS, arch_name, run_report
from .occupancy_model import AMD_LIMITS, ARCH_LIMITS
from .specs import PRESETS


def parse_arch(text: str) -> int | str:
    """``sm_80`` / ``80`` -> 80 (NVIDIA compute capability); ``gfx942`` -> "gfx942" (AMD)."""
    t = text.strip().lower()
    if t in AMD_LIMITS:
        return t
    m = re.fullmatch(r"(?:sm_?)?(\d+)a?", t)
    if not m or int(m.group(1)) not in ARCH_LIMITS:
        known = [f"sm_{a}" for a in ARCH_LIMITS] + list(AMD_LIMITS)
        raise argparse.ArgumentTypeError(
            f"unsupported arch {text!r}; choose from {', '.join(known)}"
        )
    return int(m.group(1))


def format_table(rows: list[dict]) -> str:
    # regs: registers per thread (NVIDIA) or VGPRs per lane incl. AGPRs ("total/AGPRs", AMD);
    # smem: shared memory (NVIDIA) or LDS (AMD), static / dynamic; occupancy: resident warps
    # per SM (NVIDIA) or waves per SIMD (AMD).
    head = ("kernel", "preset", "arch", "regs", "spill B", "smem/LDS B", "MMA", "occupancy",
            "grid", "note")  # fmt: skip
    lines = []
    for r in rows:
        kernel = f"{r['family']}/{r['kernel']}"
        arch = arch_name(r["arch"]) if r.get("arch") else r.get("target", "-")
        if "error" in r:
            lines.append((kernel, r["preset"], arch, "ERROR", "", "", "", "", "", r["error"][:80]))
            continue
        occ = r["occupancy"]
        if r.get("vendor") == "amd":
            regs = f"{r['regs']}/{r['agprs']}" if r["agprs"] else str(r["regs"])
            waves = f"{occ['waves_per_simd']:g}"
            occ_s = f"{waves}/{occ['max_waves_per_simd']} waves/SIMD ({occ['occupancy']:.0%})"
        else:
            regs = str(r["regs"])
            occ_s = f"{occ['active_warps']}/{occ['max_warps']} warps/SM ({occ['occupancy']:.0%})"
        grid = "x".join(str(g) for g in r["grid"]) if r["grid"] else "-"
        lines.append(
            (kernel, r["preset"], arch, regs, str(r["spill_bytes"]),
             f"{r['smem_static']}+{r['smem_dynamic']}", ",".join(r["mma"]) or "-", occ_s,
             grid, r["note"])
        )  # fmt: skip
    widths = [
        max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(head)
    ]
    fmt = lambda cols: "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()
    return "\n".join([fmt(head), fmt(tuple("-" * w for w in widths)), *(fmt(l) for l in lines)])


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, exit 2 (``--help`` still shows the usage)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def main(argv: list[str] | None = None) -> int:
    p = _OneLineParser(
        prog="hrm-fast kernels-report",
        description="Ahead-of-time compile every Triton kernel spec and report registers, "
        "spills, shared memory, MMA use and occupancy. Exits 1 on any failure.",
    )
    p.add_argument("--arch", nargs="+", type=parse_arch, default=list(DEFAULT_ARCHS),
                   metavar="ARCH", help="targets: sm_80 sm_86 sm_89 sm_90 (NVIDIA), gfx90a "
                   "gfx942 gfx1100 (AMD) (default: sm_80 sm_86 sm_89 sm_90)")  # fmt: skip
    p.add_argument("--preset", nargs="+", choices=PRESETS, default=list(PRESETS))
    p.add_argument("--json", metavar="PATH", help="write the full report as JSON")
    p.add_argument(
        "--workers", type=int, default=None, help="compile processes (default min(2, cpus))"
    )
    args = p.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        p.error(f"argument --workers: expected a whole number >= 1, got {args.workers}")
    try:  # before minutes of compiling, not after
        if args.json:
            json_path = Path(args.json)
            if json_path.is_dir():
                raise UserError(f"--json {json_path}: is a directory, expected a file path")
            prepare_dir(json_path.parent, "--json")
    except UserError as e:
        print(f"hrm-fast: {e}", file=sys.stderr)
        return e.exit_code

    report = run_report(args.arch, args.preset, args.workers)
    print(format_table(report["rows"]))
    if args.json:
        try:
            write_output(json_path, json.dumps(report, indent=2) + "\n")
        except UserError as e:
            print(f"hrm-fast: {e}", file=sys.stderr)
            return e.exit_code
    n = sum(1 for r in report["rows"] if "regs" in r)
    if report["failures"]:
        print(f"\nkernels-report: {len(report['failures'])} failure(s):", file=sys.stderr)
        for msg in report["failures"]:
            print(f"FAIL {msg}", file=sys.stderr)
        return 1
    print(f"\nkernels-report: {n} compiles OK, no spills ({report['wall_s']} s)")
    return 0
