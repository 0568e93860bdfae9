"""Data parallelism under real torchrun: gloo, 2 ranks on the CPU (one thread each).

* 2 ranks x batch B/2 against 1 process x batch B on the same data (``dp_equivalence.py``);
* ``torchrun -m hrm_fast train`` end to end, resumed, bit-exact against a straight run that
  itself ran as two torchrun "nodes" (c10d rendezvous on 127.0.0.1);
* SIGTERM on one rank, a SIGKILLed rank, a failed probe;
* NCCL + CUDA graphs on >= 2 GPUs (skipped here).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hrm_fast import checkpoint as ckpt
from hrm_fast.distributed import DataParallel, rank_seed, shard_batches
from hrm_fast.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = ROOT / "tests" / "support"
TIMEOUT = 240  # per launch; a hang fails the test instead of the suite


def rank_env() -> dict:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*launcher: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launcher]


def train_cmd(tasks, out, *extra: str, launcher=("--standalone", "--nproc-per-node", "2")):
    return torchrun(
        *launcher,
        "-m",
        "hrm_fast",
        "train",
        "--preset",
        "debug",
        "--source",
        str(tasks),
        "--out",
        str(out),
        *extra,
    )


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, env=rank_env(), cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT, **kw
    )


def records(run_dir: Path, event: str = "train") -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def last_step(run_dir: Path) -> int:
    """The newest logged step of a run in progress (0 before the first)."""
    try:
        return records(run_dir)[-1]["step"]
    except (OSError, IndexError, ValueError):  # not there yet, or a line half written
        return 0


def assert_same_checkpoint(a: Path, b: Path) -> None:
    pa, pb = ckpt.load(a), ckpt.load(b)
    assert pa["step"] == pb["step"] and pa["world_size"] == pb["world_size"] == 2
    for part in ("model", "carry"):
        assert pa[part].keys() == pb[part].keys()
        for k in pa[part]:
            assert torch.equal(pa[part][k], pb[part][k]), f"{part}.{k}"
    for r in range(2):
        for k, v in pa["rank_rng"][r].items():
            assert torch.equal(v, pb["rank_rng"][r][k]), f"rank {r} rng {k}"
    sa, sb = pa["optimizer"]["state"], pb["optimizer"]["state"]
    for i in sa:
        for k in sa[i]:
            assert torch.equal(sa[i][k], sb[i][k]), f"optimizer {i}.{k}"


# --------------------------------------------------------------------------- no process group


def test_batch_is_global_and_must_divide():
    dp = DataParallel(0, 4, 0, "gloo", torch.device("cpu"), torch.device("cpu"))
    assert dp.local_batch(768) == 192
    with pytest.raises(UserError, match="--batch-size: 6 does not divide over 4 ranks"):
        dp.local_batch(6)


def test_rank_seeds_differ_and_repeat():
    seeds = {rank_seed(0, r) for r in range(8)} | {rank_seed(1, r) for r in range(8)}
    assert len(seeds) == 16 and rank_seed(0, 3) == rank_seed(0, 3)
    assert rank_seed(0, 0, step=5) != rank_seed(0, 0)


def test_eval_shards_are_whole_single_process_batches():
    shards = [shard_batches(23, 4, r, 3) for r in range(3)]
    assert shards[0] == [0, 1, 2, 3, 12, 13, 14, 15]
    assert shards[2] == [8, 9, 10, 11, 20, 21, 22]  # the short last batch is last on its rank
    assert sorted(i for s in shards for i in s) == list(range(23))


# --------------------------------------------------------------------------- torchrun, 2 ranks


def test_two_ranks_match_one_process(tiny_tasks, tmp_path):
    out = tmp_path / "eq.json"
    cmd = torchrun(
        "--standalone",
        "--nproc-per-node",
        "2",
        str(SUPPORT / "dp_equivalence.py"),
        str(tiny_tasks),
        str(out),
        "4",
    )
    r = run(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads(out.read_text())
    assert rep["world"] == 2 and rep["grads_are_views_of_flat_buffer"]
    # Same loss (the batch penalties included: they see the global batch) and gradients.
    assert rep["loss"] == pytest.approx(rep["ref_loss"], rel=1e-6, abs=0)
    for err, scale in zip(rep["grad_max_err"], rep["grad_max_abs"], strict=True):
        assert err <= 1e-6 * scale, (err, scale)
    # After 4 steps every rank holds the same bits; they match the one-process run in fp32.
    not_same = [k for k, same in rep["ranks_bit_identical"].items() if not same]
    assert not not_same, f"ranks differ in {not_same}"
    assert any(k.startswith("opt.") for k in rep["ranks_bit_identical"])
    assert "model.inner.puzzle_emb.weights" in rep["ranks_bit_identical"]
    worst = max(rep["state_max_err"].items(), key=lambda kv: kv[1])
    assert worst[1] <= 1e-6, worst
    assert rep["state_max_err"]["model.inner.puzzle_emb.weights"] <= 1e-7


@pytest.fixture(scope="module")
def straight_two_nodes(tmp_path_factory):
    """6 steps as two torchrun "nodes" of one rank each, c10d rendezvous on 127.0.0.1."""
    from tests.support.tasks import write_tiny_tasks

    base = tmp_path_factory.mktemp("dp")
    tasks = write_tiny_tasks(base / "tasks")
    out = base / "straight"
    port = free_port()
    procs = [
        subprocess.Popen(
            train_cmd(
                tasks,
                out,
                "--steps",
                "6",
                launcher=(
                    "--nnodes",
                    "2",
                    "--nproc-per-node",
                    "1",
                    "--node-rank",
                    str(node),
                    "--rdzv-backend",
                    "c10d",
                    "--rdzv-endpoint",
                    f"127.0.0.1:{port}",
                    "--rdzv-id",
                    "hrm-fast-test",
                    "--local-addr",
                    "127.0.0.1",
                ),
            ),
            env=rank_env(),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in (0, 1)
    ]
    logs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
    return tasks, out, [p.returncode for p in procs], logs


def test_two_nodes_on_one_machine(straight_two_nodes):
    _, out, codes, logs = straight_two_nodes
    assert codes == [0, 0], "\n".join(x[-2000:] for x in logs)
    assert "2 ranks (gloo) x batch 2" in "".join(logs)
    assert [r["step"] for r in records(out)] == [1, 2, 3, 4, 5, 6]
    assert [p.name for p in ckpt.list_checkpoints(out)] == [
        "step_000000003.pt",
        "step_000000006.pt",
    ]


def test_train_resume_is_bit_exact(straight_two_nodes, tmp_path):
    tasks, straight, codes, _ = straight_two_nodes
    assert codes == [0, 0]
    split = tmp_path / "split"
    r = run(train_cmd(tasks, split, "--steps", "3"))
    assert r.returncode == 0, r.stderr[-3000:]
    r = run(train_cmd(tasks, split, "--steps", "6", "--resume"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stderr and "written by" not in r.stderr
    # Rank 0 alone writes: one metrics.jsonl line per step and probe, one set of checkpoints.
    assert sorted(p.name for p in split.iterdir()) == [
        "checkpoints",
        "config.json",
        "metrics.jsonl",
    ]
    assert [(x["step"], x["loss"]) for x in records(split)] == [
        (x["step"], x["loss"]) for x in records(straight)
    ]
    assert len(records(split, "probe")) == 3  # before step 1, at 3, at 6
    assert [p.name for p in ckpt.list_checkpoints(split)] == [
        p.name for p in ckpt.list_checkpoints(straight)
    ]
    assert_same_checkpoint(ckpt.list_checkpoints(split)[-1], ckpt.list_checkpoints(straight)[-1])

    # A different world size carries weights, optimiser, table and step over; carries restart.
    r = run(
        [
            sys.executable,
            "-m",
            "hrm_fast",
            "train",
            "--out",
            str(split),
            "--resume",
            "--steps",
            "7",
        ]
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "written by 2 rank(s), this run has 1" in r.stderr and "carries restart" in r.stderr
    assert [x["step"] for x in records(split)][-1] == 7


def test_eval_sharded_over_ranks_writes_the_same_eval_json(straight_two_nodes, tmp_path):
    _, straight, codes, _ = straight_two_nodes
    assert codes == [0, 0]
    args = ["eval", str(straight), "--batch-size", "4", "--n-aug", "3", "--render", "0"]
    one = run([sys.executable, "-m", "hrm_fast", *args, "--out", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr[-3000:]
    two = run(torchrun("--standalone", "--nproc-per-node", "2", "-m", "hrm_fast", *args,
                       "--out", str(tmp_path / "two")))  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    a = json.loads((tmp_path / "one" / "eval.json").read_text())
    b = json.loads((tmp_path / "two" / "eval.json").read_text())
    assert a["overall"]["n_test_pairs"] > 2  # several batches of 4 canvases: both ranks work
    assert a == b


def _rank_pids(launcher_pid: int) -> dict[int, int]:
    """{rank: pid} of torchrun's worker processes (read from their environment)."""
    out = {}
    for child in Path(f"/proc/{launcher_pid}/task").glob("*/children"):
        for pid in map(int, child.read_text().split()):
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            for kv in env:
                if kv.startswith(b"RANK="):
                    out[int(kv[5:])] = pid
    return out


def _wait_for(cond, what: str, timeout: float = TIMEOUT):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_sigterm_one_rank_then_kill_one_rank_then_resume(tiny_tasks, tmp_path):
    out = tmp_path / "run"
    long = ("--steps", "2000", "--checkpoint-every", "1000", "--log-every", "5")

    # SIGTERM on rank 1 alone: the ranks agree to stop at a log step, save once, exit 0.
    p = subprocess.Popen(
        train_cmd(tiny_tasks, out, *long),
        env=rank_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(lambda: last_step(out) > 0, "the first log line")
    pids = _rank_pids(p.pid)
    assert sorted(pids) == [0, 1]
    os.kill(pids[1], signal.SIGTERM)
    _, err = p.communicate(timeout=TIMEOUT)
    assert p.returncode == 0, err[-3000:]
    [saved] = ckpt.list_checkpoints(out)
    step = ckpt.load(saved)["step"]
    assert step % 5 == 0 and step < 2000 and f"interrupted at step {step}" in err

    # SIGKILL on rank 1: the others exit non-zero within a bound; the checkpoint stays intact.
    p = subprocess.Popen(
        train_cmd(tiny_tasks, out, *long, "--resume"),
        env=rank_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for(lambda: last_step(out) > step, "training to go on after the resume")
    os.kill(_rank_pids(p.pid)[1], signal.SIGKILL)
    t0 = time.monotonic()
    _, err = p.communicate(timeout=TIMEOUT)
    assert p.returncode != 0 and time.monotonic() - t0 < 60
    assert "hrm-fast: rank 0: lost contact with another rank" in err, err[-3000:]
    assert ckpt.list_checkpoints(out) == [saved] and ckpt.load(saved)["step"] == step

    # --resume finishes the run.
    r = run(train_cmd(tiny_tasks, out, "--resume", "--steps", str(step + 10)))
    assert r.returncode == 0, r.stderr[-3000:]
    assert ckpt.load(out)["step"] == step + 10


def test_failed_probe_stops_every_rank_with_exit_3(tiny_tasks, tmp_path):
    # The ranks are started as torchrun starts them (its env:// variables), without its agent,
    # which would stop the second rank once the first exits: each exit code is seen here.
    env = rank_env()
    env.update(WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    cmd = [
        sys.executable,
        "-m",
        "hrm_fast",
        "train",
        "--preset",
        "debug",
        "--source",
        str(tiny_tasks),
        "--out",
        str(tmp_path / "run"),
        "--probe-min-tv",
        "1",
    ]
    procs = [
        subprocess.Popen(
            cmd,
            env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    errs = [p.communicate(timeout=TIMEOUT)[1] for p in procs]
    assert [p.returncode for p in procs] == [3, 3], errs
    assert "probe FAILED before step 1" in errs[0]
    assert records(tmp_path / "run", "probe")[0]["passed"] is False


# --------------------------------------------------------------------------- GPUs


@pytest.mark.cuda
def test_nccl_cuda_graphs_two_gpus(tiny_tasks, tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs >= 2 CUDA GPUs")
    base = ("--device", "cuda", "--backend", "reference", "--dtype", "fp32", "--steps", "6")
    eager, graphs = tmp_path / "eager", tmp_path / "graphs"
    r = run(train_cmd(tiny_tasks, eager, *base))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "2 ranks (nccl)" in r.stderr
    r = run(train_cmd(tiny_tasks, graphs, *base, "--cuda-graphs", "true"))
    assert r.returncode == 0, r.stderr[-3000:]
    a = [x["loss"] for x in records(eager)]
    b = [x["loss"] for x in records(graphs)]
    assert b == pytest.approx(a, rel=1e-4)
