"""``hrm-fast`` command line: train, adapt, probe, eval, predict, check, report, convert, params,
kernels-report, bench.

Bad input ends with one line ``hrm-fast: <file or flag>: <what is wrong>`` and exit code 2,
never a traceback. A failed input-sensitivity probe exits 3. Every exit code: hrm_fast/errors.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import sys
from pathlib import Path

from hrm_fast.config import RunConfig, iter_fields, parse_value
from hrm_fast.errors import (
    EXIT_BROKEN_PIPE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PROBE_FAILED,
    UserError,
    WriteFailed,
)
from hrm_fast.files import os_reason, prepare_dir, write_output
from hrm_fast.presets import PRESETS, from_name


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("config overrides (any field of the preset)")
    for section, f in iter_fields(RunConfig()):
        g.add_argument(_flag(f.name), dest=f"cfg__{section}__{f.name}", metavar="V", default=None,
                       help=f"{section}.{f.name}")  # fmt: skip


def _apply_overrides(cfg: RunConfig, args: argparse.Namespace) -> RunConfig:
    given = {k for k, text in vars(args).items() if k.startswith("cfg__") and text is not None}
    if "cfg__train__steps" in given and "cfg__train__epochs" not in given:
        cfg.train.epochs = 0  # an explicit --steps replaces the preset's (or run's) epochs
    for key, text in vars(args).items():
        if not key.startswith("cfg__") or text is None:
            continue
        _, section, name = key.split("__")
        sub = getattr(cfg, section)
        try:
            setattr(sub, name, parse_value(text, getattr(sub, name)))
        except ValueError as e:
            raise UserError(f"{_flag(name)}: {e}") from None
    if {"cfg__train__steps", "cfg__train__epochs"} <= given and cfg.train.epochs > 0:
        raise UserError("--steps and --epochs both set the run length; give one of them")
    names = {k.split("__")[2] for k in given}
    try:
        cfg.validate(names)
    except ValueError as e:
        raise UserError(str(e)) from None
    return cfg


def _config_for_train(args) -> RunConfig:
    """--resume starts from the run's config.json (else the preset); flags override it, and
    train() checks the result against the checkpoint. A --preset given with --resume must
    describe the run's model."""
    stored = Path(args.out) / "config.json"
    if not (args.resume and (stored.exists() or stored.is_symlink())):
        return _apply_overrides(from_name(args.preset or "seed"), args)
    cfg = _apply_overrides(_read_run_config(stored), args)
    if args.preset is not None:
        preset = _apply_overrides(from_name(args.preset), args).model
        for f in dataclasses.fields(preset):
            ours, theirs = getattr(preset, f.name), getattr(cfg.model, f.name)
            if ours != theirs:
                raise UserError(
                    f"--preset {args.preset}: {stored.parent} was trained with another model "
                    f"(model.{f.name} = {theirs!r}, the preset gives {ours!r}); "
                    "drop --preset to resume it"
                )
    return cfg


def _read_run_config(path: Path) -> RunConfig:
    try:
        cfg = RunConfig.from_dict(json.loads(path.read_text()))
        cfg.validate()
        return cfg
    except OSError as e:
        raise UserError(f"{path}: cannot read: {os_reason(e)}") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise UserError(
            f"{path}: malformed JSON at line {e.lineno} col {e.colno}: {e.msg}"
        ) from None
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: not a run config ({e})") from None


def _output_file(path: str | None, flag: str) -> Path | None:
    """A file the command will write at the end, checked now: exit 2 before any work."""
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{flag} {p}: is a directory, expected a file name")
    prepare_dir(p.parent, flag)
    return p


# --------------------------------------------------------------------------- subcommands


def cmd_train(args) -> int:
    from hrm_fast.trainer.loop import train

    cfg = _config_for_train(args)
    return train(cfg, args.out, resume=args.resume, quiet=args.quiet)


def cmd_adapt(args) -> int:
    from hrm_fast.adapt import AdaptOptions, adapt

    opts = AdaptOptions(
        source=args.source, mode=args.mode, steps=args.steps, time_budget=args.time_budget,
        n_aug=args.n_aug, init=args.init, lr=args.lr, puzzle_emb_lr=args.puzzle_emb_lr,
        checkpoint_every=args.checkpoint_every, log_every=args.log_every,
        allow_overlap=args.allow_overlap, device=args.device,
    )  # fmt: skip
    return adapt(args.checkpoint, opts, args.out, resume=args.resume, quiet=args.quiet)


def _bool(text: str) -> bool:
    try:
        return parse_value(text, False)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_probe(args) -> int:
    from hrm_fast.checkpoint import model_from_checkpoint
    from hrm_fast.device import resolve_device
    from hrm_fast.memory import check_inference_fits, check_probe_inputs_fit, num_puzzle_ids
    from hrm_fast.probe import run_probe

    if args.pairs is not None and args.pairs < 1:
        raise UserError(f"--pairs must be >= 1, got {args.pairs}")
    for flag, v in (("--min-differ", args.min_differ), ("--min-tv", args.min_tv)):
        if v is not None and not v >= 0:  # NaN fails too; above 1 can never pass
            raise UserError(f"{flag} must be >= 0, got {v}")
    if not 0 <= args.seed < 2**63:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    device = resolve_device(args.device)
    json_out = _output_file(args.json, "--json")
    model, cfg, payload = model_from_checkpoint(args.checkpoint, device=device)
    t = cfg.train
    k = args.pairs or t.probe_pairs
    flag = f"--pairs {k}" if args.pairs else f"probe_pairs {k} (the run's)"
    check_probe_inputs_fit(cfg.seq_len, k, device, flag)
    check_inference_fits(cfg, num_puzzle_ids(model), 64, device, flag)
    min_differ = t.probe_min_differ if args.min_differ is None else args.min_differ
    min_tv = t.probe_min_tv if args.min_tv is None else args.min_tv
    sampler = None
    if not args.random_inputs:
        from hrm_fast.data import build_dataset, make_sampler

        # Pairs of real inputs of the run's kind (ARC canvases, Sudokus, mazes).
        dataset = build_dataset(cfg.data, seed=t.seed)
        _check_probe_tasks(payload, dataset, num_puzzle_ids(model))
        sampler = make_sampler(dataset, device, "reference")
    report = run_probe(model, sampler, k, min_differ, min_tv, device,
                       generator_seed=args.seed, canvas=cfg.data.canvas)  # fmt: skip
    report.step = int(payload.get("step", 0))
    d = {"checkpoint": payload["path"], **report.to_dict()}
    if json_out is not None:
        write_output(json_out, json.dumps(d, indent=2), WriteFailed)
    print(report.summary())
    return EXIT_OK if report.passed else EXIT_PROBE_FAILED


def _check_probe_tasks(payload: dict, dataset, table_rows: int) -> None:
    """The data rebuilt from the run's config must give the checkpoint's puzzle ids: a changed
    task list (or a converted checkpoint, which has none) would index past its table."""
    path = payload["path"]
    trained = payload.get("dataset", {}).get("task_ids")
    if trained is not None and list(trained) != list(dataset.task_ids):
        raise UserError(
            f"{path}: the checkpoint's {len(trained)} puzzle tasks do not match the "
            f"{len(dataset.task_ids)} rebuilt from its config; is the task data the one it was "
            "trained with? (--random-inputs probes without it)"
        )
    has_table = payload["config"]["model"].get("puzzle_emb_ndim", 1) > 0  # else ids are unused
    if has_table and dataset.num_puzzle_ids > table_rows:
        raise UserError(
            f"{path}: its puzzle table has {table_rows} ids, the data rebuilt from its config "
            f"gives {dataset.num_puzzle_ids} (a converted checkpoint?); probe with --random-inputs"
        )


def cmd_eval(args) -> int:
    from hrm_fast.evaluate import main as eval_main

    return eval_main(args)


def cmd_predict(args) -> int:
    from hrm_fast.predict import main as predict_main

    return predict_main(args)


def _pass_k(text: str) -> tuple[int, ...]:
    from hrm_fast.scoring import parse_pass_k

    try:
        return parse_pass_k(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _act_steps(text: str) -> tuple[int, ...]:
    from hrm_fast.board_eval import parse_act_steps

    try:
        return parse_act_steps(text)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix(f"--act-steps {text!r}: ")) from None


def cmd_convert(args) -> int:
    from hrm_fast.convert import convert_to_checkpoint

    names = ("num_heads", "H_cycles", "L_cycles", "halt_max_steps", "puzzle_emb_tokens",
             "pos_encodings")  # fmt: skip
    overrides = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    path = convert_to_checkpoint(
        args.src, args.out, kind=args.kind, source=args.source, **overrides
    )
    print(f"wrote {path}")
    return 0


def cmd_params(args) -> int:
    from hrm_fast.arch import build_model
    from hrm_fast.data import dataset_kind
    from hrm_fast.layers import count_parameters

    cfg = _apply_overrides(from_name(args.preset), args)
    if args.puzzle_ids is not None and args.puzzle_ids < 0:
        raise UserError(f"--puzzle-ids must be >= 0, got {args.puzzle_ids}")
    n_ids = args.puzzle_ids
    if n_ids is None and dataset_kind(cfg.data) != "arc":
        n_ids = 2  # every board shares one puzzle id, plus the blank id
    if n_ids is None:  # the preset's pool: tasks x augmentations + the blank id
        sizes = {"arcagi": (400, 400), "arcagi2": (1000, 120)}  # (training, evaluation) tasks
        if cfg.data.source not in sizes:
            raise UserError(f"--source {cfg.data.source}: task count unknown; pass --puzzle-ids")
        n_train, n_eval = sizes[cfg.data.source]
        if cfg.data.max_tasks:
            n_train, n_eval = min(n_train, cfg.data.max_tasks), min(n_eval, cfg.data.max_tasks)
        n_tasks = n_train + (n_eval if cfg.data.include_eval_demos else 0)
        n_ids = 1 + n_tasks * (cfg.data.n_aug if cfg.data.puzzle_id_per == "augmentation" else 1)
    m = build_model(cfg.model, cfg.seq_len, 1, 1)
    c = count_parameters(m)
    table = n_ids * cfg.model.puzzle_emb_ndim
    print(f"preset {args.preset} ({cfg.model.arch.upper()}): {c['network']:,} network parameters"
          f" ({c['network'] / 1e6:.2f}M)")  # fmt: skip
    print(f"  + puzzle-embedding table {n_ids:,} ids x {cfg.model.puzzle_emb_ndim} = {table:,}")
    print(f"  = {c['network'] + table:,} in all ({(c['network'] + table) / 1e6:.2f}M)")
    return 0


def cmd_make_boards(args) -> int:
    from hrm_fast.boards import write_generated_csvs

    cfg = RunConfig()
    cfg.data.canvas = 9 if args.kind == "sudoku" else 30
    cfg = _apply_overrides(cfg, args)
    cfg.data.source = f"{args.kind}-gen"
    if args.kind == "sudoku" and cfg.data.sudoku_box != 3:
        raise UserError("--sudoku-box: the official CSV format holds 9x9 boards (box 3)")
    out = prepare_dir(args.out, "--out")
    train, test = write_generated_csvs(cfg.data, out)
    print(f"wrote {train} and {test}")
    return 0


def cmd_ablate(args) -> int:
    from hrm_fast.ablate import ablate

    cfg = _apply_overrides(from_name(args.preset), args)  # --steps K is the config's own flag
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    steps = cfg.train.steps
    probe_every = args.probe_every or max(1, steps // 4)
    return ablate(cfg, args.preset, steps, args.seeds, args.out, variants, probe_every,
                  threads=args.threads, quiet=args.quiet, merge=args.merge,
                  first_seed=args.first_seed, baseline=args.baseline)  # fmt: skip


def cmd_report(args) -> int:
    from hrm_fast.dashboard import main as dashboard_main

    return dashboard_main(args)


def cmd_kernels_report(args) -> int:
    from hrm_fast.compile_report import main as kernels_report_main

    return kernels_report_main(args.rest)


def cmd_bench(args) -> int:
    if args.against is not None:
        from hrm_fast.bench_against import main as against_main

        if args.quick or args.nproc:
            flag = "--quick" if args.quick else "--nproc"
            raise UserError(f"{flag}: a flag of the bench suite; --against takes --steps instead")

        return against_main(args)
    given = [f for f, v in (("--preset", args.preset), ("--batch-size", args.batch_size),
             ("--steps", args.steps), ("--warmup", args.warmup), ("--threads", args.threads))
             if v is not None] + (["--dtype"] if args.dtype != "auto" else [])  # fmt: skip
    given += ["--official-compile"] if args.official_compile else []
    given += ["--compile"] if args.compile != "auto" else []
    if given:
        raise UserError(f"{given[0]}: a flag of bench --against PATH")
    if args.device not in (None, "cpu", "cuda"):
        raise UserError(f"--device {args.device}: the bench suite runs on cpu or cuda")
    from hrm_fast.benchmark import main as bench_main

    args.device = args.device or "cpu"
    return bench_main(args)


def cmd_check(args) -> int:
    from hrm_fast.device import resolve_device

    device = resolve_device(args.device)
    if device.type == "mps":
        raise UserError("--device mps: the fused kernels need a CUDA or ROCm GPU (or cpu)")
    if device.type == "cpu":  # the kernels run under Triton's interpreter
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            raise UserError("--device cpu: triton was imported without TRITON_INTERPRET=1")
        os.environ["TRITON_INTERPRET"] = "1"
    json_path = _output_file(args.json, "--json")
    from hrm_fast.check import run

    return run(device, args.preset, json_path)


# --------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``--help`` still shows the usage)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="hrm-fast", description=__doc__.splitlines()[0].replace("``", ""))
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", required=True, parser_class=_Parser)

    t = sub.add_parser("train", help="train HRM on ARC (checkpoints, probe, metrics.jsonl)")
    t.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="default seed; with --resume, the run's own config.json")  # fmt: skip
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    t.add_argument("--quiet", action="store_true")
    _add_config_flags(t)
    t.set_defaults(func=cmd_train)

    ad = sub.add_parser("adapt", help="test-time adaptation: puzzle ids for new tasks, trained "
                        "on their demonstrations")  # fmt: skip
    ad.add_argument("checkpoint", help="trained checkpoint file or run directory (latest)")
    ad.add_argument("--source", required=True,
                    help="the new tasks: a *_challenges.json (solutions optional) or a "
                         "directory of task files; only their demonstrations train")  # fmt: skip
    ad.add_argument("--out", required=True, help="run directory of the adapted checkpoints")
    ad.add_argument("--mode", default="embeddings", choices=["embeddings", "full"],
                    help="embeddings: network frozen, new rows train; full: both")  # fmt: skip
    ad.add_argument("--steps", type=int, default=None, help="stop after N steps")
    ad.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                    help="stop this long after the loop starts, with a checkpoint")  # fmt: skip
    ad.add_argument("--n-aug", type=int, default=None,
                    help="puzzle ids per new task (default: the checkpoint's n_aug)")  # fmt: skip
    ad.add_argument("--init", default="mean", choices=["mean", "blank"],
                    help="new rows start at the trained rows' mean, or the blank row")  # fmt: skip
    ad.add_argument("--lr", type=float, default=None, help="network lr (full mode)")
    ad.add_argument("--puzzle-emb-lr", type=float, default=None)
    ad.add_argument("--checkpoint-every", type=int, default=None)
    ad.add_argument("--log-every", type=int, default=None)
    ad.add_argument("--allow-overlap", type=_bool, default=False, metavar="true|false",
                    help="adapt even when scored test pairs are also trained pairs")  # fmt: skip
    ad.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda")
    ad.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    ad.add_argument("--quiet", action="store_true")
    ad.set_defaults(func=cmd_adapt)

    pr = sub.add_parser("probe", help="input-sensitivity probe of a checkpoint")
    pr.add_argument("checkpoint", help="checkpoint file or run directory (latest)")
    pr.add_argument("--pairs", type=int, default=None)
    pr.add_argument("--min-differ", type=float, default=None)
    pr.add_argument("--min-tv", type=float, default=None)
    pr.add_argument("--random-inputs", action="store_true", help="random canvases, not ARC pairs")
    pr.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--json", default=None, help="write the report here")
    pr.set_defaults(func=cmd_probe)

    e = sub.add_parser("eval", help="evaluate on held-out test pairs (pass@1/2, eval.json, PNG)")
    e.add_argument("checkpoint", help="checkpoint file (RUN/best.pt: the best held-out one) "
                   "or run directory (latest)")  # fmt: skip
    e.add_argument("--out", default=None, help="where eval.json and the PNG go (default: run dir)")
    e.add_argument("--n-aug", type=int, default=8, help="augmentations to vote over (K)")
    e.add_argument("--max-tasks", type=int, default=0, help="evaluate only the first N tasks")
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--render", type=int, default=4, help="tasks drawn in the PNG")
    e.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    e.add_argument("--eval-source", default=None, help="directory of held-out ARC task files")
    e.add_argument("--pass-k", type=_pass_k, default=(1, 2), metavar="K,K,...",
                   help="pass@k for each k (default 1,2; HRM reports up to 1000)")  # fmt: skip
    e.add_argument("--act-steps", type=_act_steps, default=None, metavar="N,N,...",
                   help="Sudoku / maze: score after each of these ACT step counts (default: "
                        "powers of two up to halt_max_steps)")  # fmt: skip
    e.set_defaults(func=cmd_eval)

    pd = sub.add_parser("predict", help="answer test inputs (seen or unseen tasks): "
                        "submission.json in the ARC Prize format")  # fmt: skip
    pd.add_argument("checkpoint", help="checkpoint file (RUN/best.pt: the best held-out one) "
                    "or run directory (latest)")  # fmt: skip
    pd.add_argument("--source", required=True,
                    help="tasks to answer: a *_challenges.json (solutions optional), a "
                         "directory of task files (test outputs optional), or arcagi/arcagi2 "
                         "(their evaluation split)")  # fmt: skip
    pd.add_argument("--out", required=True, help="where submission.json, predict.json go")
    pd.add_argument("--n-aug", type=int, default=8, help="augmentations to vote over (K)")
    pd.add_argument("--time-budget", type=float, default=None, metavar="MINUTES",
                    help="stop voting this long after the start; the file is still "
                         "complete")  # fmt: skip
    pd.add_argument("--batch-size", type=int, default=32)
    pd.add_argument("--render", type=int, default=4, help="tasks drawn in predictions.png")
    pd.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    pd.set_defaults(func=cmd_predict)

    c = sub.add_parser("convert", help="official HRM or TRM state dict -> hrm-fast checkpoint")
    c.add_argument("src")
    c.add_argument("--out", required=True)
    c.add_argument("--num-heads", type=int, default=None)
    c.add_argument("--H-cycles", dest="H_cycles", type=int, default=None)
    c.add_argument("--L-cycles", dest="L_cycles", type=int, default=None)
    c.add_argument("--halt-max-steps", type=int, default=None)
    c.add_argument("--puzzle-emb-tokens", type=int, default=None, help="TRM: 16 for ARC")
    c.add_argument("--pos-encodings", choices=["rope", "none"], default=None, help="TRM")
    c.add_argument(
        "--kind",
        choices=["arc", "sudoku", "maze"],
        default="arc",
        help="the official run's data: sudoku (vocab 11) and maze (vocab 6) boards",
    )
    c.add_argument("--source", default=None,
                   help="with --kind sudoku/maze: the boards eval reads (sudoku:PATH.csv, "
                        "maze:PATH.csv; default the generated set)")  # fmt: skip
    c.set_defaults(func=cmd_convert)

    pa = sub.add_parser("params", help="parameter counts of a preset")
    pa.add_argument("--preset", default="seed", choices=sorted(PRESETS))
    pa.add_argument("--puzzle-ids", type=int, default=None)
    _add_config_flags(pa)
    pa.set_defaults(func=cmd_params)

    mb = sub.add_parser("make-boards", help="generate Sudoku or maze sets as official-format "
                        "CSV files (DIR/train.csv, DIR/test.csv)")  # fmt: skip
    mb.add_argument("kind", choices=["sudoku", "maze"])
    mb.add_argument("--out", required=True, help="directory for train.csv and test.csv")
    g = mb.add_argument_group("generator fields (data section)")
    names = ("gen_train", "gen_test", "gen_seed", "sudoku_box", "min_difficulty",
             "max_difficulty", "min_blanks", "max_blanks")  # fmt: skip
    for name in names:
        g.add_argument(_flag(name), dest=f"cfg__data__{name}", metavar="V", default=None,
                       help=f"data.{name}")  # fmt: skip
    mb.set_defaults(func=cmd_make_boards)

    ab = sub.add_parser("ablate", help="penalty ablation: variants x seeds, probe, plot")
    ab.add_argument("--preset", default="collapse", choices=sorted(PRESETS))
    ab.add_argument("--seeds", type=int, default=3)
    ab.add_argument("--first-seed", type=int, default=0, help="seeds are first .. first+N-1")
    ab.add_argument("--out", required=True, help="directory for ablation.json / ablation.png")
    ab.add_argument("--variants", default="all,none,div,dist,halt",
                    help="comma list of all,none,div,dist,halt,shuffled and weight points "
                         "such as w_div=1.0 (all, with that weight changed)")  # fmt: skip
    ab.add_argument("--probe-every", type=int, default=None, help="default: steps / 4")
    ab.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's)")
    ab.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="DIR",
        help="take over finished runs from other ablation DIRs (same settings)",
    )
    ab.add_argument("--baseline", default="none",
                    help="the variant the paired table compares each variant with")  # fmt: skip
    ab.add_argument("--quiet", action="store_true")
    _add_config_flags(ab)
    ab.set_defaults(func=cmd_ablate)
    r = sub.add_parser("report", help="draw a run's metrics.jsonl (and eval.json) as one PNG")
    r.add_argument("runs", nargs="+", metavar="RUN", help="run directories (several: compared)")
    r.add_argument("--out", default=None, help="PNG path (default: RUN/report.png)")
    r.add_argument("--html", action="store_true", help="also a self-contained HTML page")
    r.set_defaults(func=cmd_report)

    # main() hands every argument after the name to the report's own parser (argparse would
    # take its flags for ours).
    k = sub.add_parser("kernels-report", help="AOT-compile every kernel for GPU targets",
                       add_help=False)  # fmt: skip
    k.set_defaults(func=cmd_kernels_report, rest=[])

    b = sub.add_parser("bench", help="run the bench suite and print one table; --against: "
                       "beside the official code")  # fmt: skip
    b.add_argument("--device", default=None,
                   help="cpu or cuda (default: cpu; with --against, CUDA if present)")  # fmt: skip
    b.add_argument("--quick", action="store_true")
    b.add_argument("--json", default=None, help="also write the results here")
    b.add_argument("--nproc", type=int, default=0,
                   help="data-parallel table: 1 rank vs N ranks (torchrun)")  # fmt: skip
    ag = b.add_argument_group(
        "against the official code (--against PATH; it imports and runs PATH's Python: "
        "point it at a checkout you trust)"
    )
    ag.add_argument("--against", default=None, metavar="PATH",
                    help="a sapientinc/HRM or TinyRecursiveModels checkout: both training "
                         "steps, alternated, at the same config and device")  # fmt: skip
    ag.add_argument("--preset", default=None, choices=sorted(PRESETS),
                    help="default: seed (HRM checkout), trm-arc1 (TRM checkout)")  # fmt: skip
    ag.add_argument("--batch-size", type=int, default=None,
                    help="default: 2 on a CPU, the preset's on a GPU")  # fmt: skip
    ag.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16"],
                    help="hrm-fast's forward dtype (auto: as train resolves it); the official "
                         "side gets the same")  # fmt: skip
    ag.add_argument("--steps", type=int, default=None,
                    help="measured steps per side (default 10 on a CPU, 50 on a GPU)")  # fmt: skip
    ag.add_argument("--warmup", type=int, default=None,
                    help="warm-up steps per side (default 2 on a CPU, 10 on a GPU)")  # fmt: skip
    ag.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads for both sides (default: torch's)")  # fmt: skip
    ag.add_argument("--compile", default="auto", choices=["auto", "true", "false"],
                    help="hrm-fast's --compile (auto: as train decides; the presets' long runs "
                         "compile on a CPU)")  # fmt: skip
    ag.add_argument("--official-compile", type=_bool, default=False, metavar="true|false",
                    help="torch.compile the official model, as its pretrain.py does unless "
                         "DISABLE_COMPILE is set (default: false, eager)")  # fmt: skip
    b.set_defaults(func=cmd_bench)

    ch = sub.add_parser(
        "check", help="check the fused kernels on this device; JSON for bug reports"
    )
    ch.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    ch.add_argument("--preset", default=None, choices=sorted(PRESETS),
                    help="shapes to check (default: seed on a GPU, debug on the CPU)")  # fmt: skip
    ch.add_argument("--json", default=None, help="write the report here (attach it to an issue)")
    ch.set_defaults(func=cmd_check)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["kernels-report"]:  # its own parser owns every flag after the name
        args = argparse.Namespace(func=cmd_kernels_report, rest=argv[1:])
    else:
        args = build_parser().parse_args(argv)
    previous = _sigterm_interrupts()
    try:
        if isinstance(getattr(args, "out", None), str) and not args.out.strip():
            raise UserError("--out: empty; give a directory (or file) name")
        return int(args.func(args) or EXIT_OK)
    except UserError as e:
        print(f"hrm-fast: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("hrm-fast: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `hrm-fast params | head -1`: the reader has what it wanted
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _sigterm_interrupts():
    """SIGTERM ends the process the way Ctrl-C does (the training loop has its own handler,
    which saves first). Returns the previous handler, None off the main thread."""
    try:
        return signal.signal(signal.SIGTERM, _raise_interrupt)
    except ValueError:  # not the main thread
        return None


def _silence_stdout() -> None:
    # Python flushes stdout again at exit; point it at /dev/null so that is quiet too.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())
