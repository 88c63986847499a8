"""Data-parallel training: 2 CPU processes with gloo hold identical weights and p, and match
one process on the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import Tensor

from cli_runner import toy_train_argv
from picoalign.config import load_config
from picoalign.model import ModelConfig, PicoAligner
from picoalign.training.distributed import (
    DistContext,
    _pad_to,
    rank_step_seed,
    reseed_rank_stream,
    state_digest,
)
from picoalign.training.loop import train

PICO = {
    "model.method": "pico",
    "model.embed_dim": 16,
    "model.pico.feedback_size": 8,
    "pico_warmup_epochs": 0,
    "triplet_warmup_epochs": 1,
}

# Gradient arithmetic on its own: DDP + gather(keep_grad) + the summing hook must give each
# rank exactly the one-process gradient of a loss with cross-sample terms (like in-batch
# negatives). Adam hides a constant gradient scale, so the training tests alone could not.
GRAD_WORKER = textwrap.dedent(
    """
    import sys
    import torch
    from picoalign.training.devices import resolve_device
    from picoalign.training.distributed import init_distributed, shutdown, wrap_ddp

    torch.manual_seed(0)
    x = torch.randn(7, 5)
    net = torch.nn.Linear(5, 3)
    ref = torch.nn.Linear(5, 3)
    ref.load_state_dict(net.state_dict())
    y = ref(x)
    (torch.logsumexp(y @ y.T, dim=1).sum() + y.pow(3).sum()).backward()

    ctx = init_distributed(resolve_device("cpu"))
    ddp = wrap_ddp(net, resolve_device("cpu"), ctx)
    sizes = ctx.shard_sizes(7)
    g = ctx.gather(ddp(x[ctx.shard(torch.arange(7))]), sizes, keep_grad=True)
    (torch.logsumexp(g @ g.T, dim=1).sum() + g.pow(3).sum()).backward()
    for a, b in ((net.weight, ref.weight), (net.bias, ref.bias)):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5)
    # a file per rank, not stdout: the ranks' prints may interleave in the shared pipe
    open(f"{sys.argv[1]}/grad-ok-{ctx.rank}", "w").close()
    ctx.barrier()  # leave together: a rank exiting with the group alive can abort the others
    del ddp, g  # as train() does: no DDP wrapper may outlive the group (see shutdown)
    shutdown(ctx)
    """
)

# PICO's own gather hook for users' DDP loops: ranks of 5 and 4 pairs, captions 4 and 6 wide
GATHER_WORKER = textwrap.dedent(
    """
    import sys
    import torch
    import torch.distributed as dist
    from picoalign.core.gather import ddp_all_gather

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    def part(r):
        n, w = (5, 4) if r == 0 else (4, 6)
        g = torch.Generator().manual_seed(r)
        tok = torch.randn(n, w, 3, generator=g)
        return tok, torch.ones(n, w, dtype=torch.bool), torch.arange(n) + 10 * r
    got = [ddp_all_gather(t) for t in part(rank)]
    a, b = part(0), part(1)
    want_tok = torch.zeros(9, 6, 3)
    want_tok[:5, :4], want_tok[5:] = a[0], b[0]
    want_mask = torch.zeros(9, 6, dtype=torch.bool)
    want_mask[:5, :4], want_mask[5:] = True, True
    assert torch.equal(got[0], want_tok) and torch.equal(got[1], want_mask)
    assert torch.equal(got[2], torch.cat([a[2], b[2]]))
    open(f"{sys.argv[1]}/gather-ok-{rank}", "w").close()
    dist.barrier()
    dist.destroy_process_group()
    """
)

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from picoalign.config import load_config
    from picoalign.training.loop import train

    torch.set_num_threads(1)
    features, overrides, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    rank = int(os.environ["RANK"])

    # how many DDP wrappers are alive when the group is destroyed (each one keeps the group
    # for the interpreter's teardown, where gloo can abort the process: see shutdown)
    destroy = torch.distributed.destroy_process_group
    def counting_destroy(*args, **kwargs):
        import gc
        from torch.nn.parallel import DistributedDataParallel as DDP
        gc.collect()
        alive = sum(isinstance(o, DDP) for o in gc.get_objects())
        with open(os.path.join(out, f"ddp-alive-{rank}"), "w") as f:
            f.write(str(alive))
        return destroy(*args, **kwargs)
    torch.distributed.destroy_process_group = counting_destroy

    fs = torch.load(features, weights_only=False)  # written by the test itself
    cfg = load_config(None, {**overrides, "out": out, "progress": False})
    result = train(cfg, fs)
    torch.save(result.model.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    """
)


# Records each rank's dropout masks: F.dropout on ones gives the mask the real call would have
# drawn (the same RNG draws), and the tokens times that mask is the real call's result.
DROPOUT_WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from picoalign.config import load_config
    from picoalign.training.loop import train

    torch.set_num_threads(1)
    features, overrides, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    rank = int(os.environ["RANK"])
    masks = []
    dropout = torch.nn.functional.dropout
    def recording(x, p=0.5, training=True, inplace=False):
        mask = dropout(torch.ones_like(x), p, training)
        masks.append(mask.ne(0).flatten().tolist())
        return x * mask
    torch.nn.functional.dropout = recording

    fs = torch.load(features, weights_only=False)
    cfg = load_config(None, {**overrides, "out": out, "progress": False})
    train(cfg, fs)
    with open(os.path.join(sys.argv[4], f"masks-{rank}.json"), "w") as f:
        json.dump(masks, f)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args: str, nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


def _report(proc: subprocess.CompletedProcess) -> str:
    """What a failed torchrun printed: every rank's own error lines first (one rank's failure
    makes the other's collective fail, and its traceback would bury the cause), then the tail."""
    lines = (proc.stdout + proc.stderr).splitlines()
    own = [x for x in lines if "error" in x.lower() and "Traceback" not in x][:20]
    return "\n".join([*own, "---", *lines[-40:]])


# ------------------------------------------------------------------------ pure helpers


def test_one_process_context_is_a_no_op() -> None:
    ctx = DistContext()
    idx = torch.arange(7)
    assert not ctx.enabled and ctx.is_main
    assert torch.equal(ctx.shard(idx), idx)
    x = torch.randn(3, 4)
    assert ctx.gather(x, [3]) is x


def test_shards_cover_the_global_batch_in_order() -> None:
    idx = torch.arange(11)
    shards = [DistContext(rank=r, world_size=3).shard(idx) for r in range(3)]
    assert torch.equal(torch.cat(shards), idx)
    assert DistContext(world_size=3).shard_sizes(11) == [len(s) for s in shards] == [4, 4, 3]


def test_pad_to_pads_rows_and_token_width_with_zeros() -> None:
    x = torch.ones(2, 3, 4)
    y = _pad_to(x, 5, 6)
    assert y.shape == (5, 6, 4)
    assert y[:2, :3].eq(1).all() and y.sum() == x.sum()
    mask = _pad_to(torch.ones(2, 3, dtype=torch.bool), 3, 4)
    assert mask.dtype == torch.bool and mask.sum() == 6


def test_only_ranks_past_zero_are_reseeded_and_by_their_place_only() -> None:
    torch.manual_seed(5)
    state = torch.get_rng_state()
    reseed_rank_stream(DistContext(), 5, 0, 3)  # one process
    reseed_rank_stream(DistContext(rank=0, world_size=2), 5, 0, 3)
    assert torch.equal(torch.get_rng_state(), state)  # rank 0 draws what one process draws

    def draws(rank: int, epoch: int, step: int) -> Tensor:
        reseed_rank_stream(DistContext(rank=rank, world_size=3), 5, epoch, step)
        return torch.rand(4)

    assert torch.equal(draws(1, 2, 7), draws(1, 2, 7))  # a resume draws the same
    firsts = [draws(*place) for place in ((1, 2, 7), (2, 2, 7), (1, 2, 8), (1, 3, 7))]
    assert len({tuple(x.tolist()) for x in firsts}) == 4
    assert rank_step_seed(5, 1, 2, 7) != rank_step_seed(6, 1, 2, 7)
    assert 0 <= rank_step_seed(5, 1, 2, 7) < 2**63


def test_state_digest_sees_a_one_bit_change_in_pico_state() -> None:
    model = PicoAligner(ModelConfig(image_dim=4, text_dim=4, embed_dim=8))
    before = state_digest(model)
    assert state_digest(model) == before
    model.pico.p[3] = torch.nextafter(model.pico.p[3], torch.tensor(2.0))
    assert state_digest(model) != before


# ------------------------------------------------------------------ two gloo processes


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, make_feature_set):
    """2 gloo ranks and one process, same data, config and global batch of 16 captions."""
    tmp = tmp_path_factory.mktemp("ddp")
    fs = make_feature_set(n=48)
    torch.save(fs, tmp / "features.pt")
    (tmp / "worker.py").write_text(WORKER)
    overrides = {**PICO, "epochs": 3, "batch_size": 16, "lr": 1e-3, "lr_steps": [2]}
    proc = torchrun(
        str(tmp / "worker.py"), str(tmp / "features.pt"), json.dumps(overrides), str(tmp / "out")
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = train(load_config(None, {**overrides, "progress": False}), fs, write=False)
    finally:
        torch.set_num_threads(threads)
    return {"out": tmp / "out", "single": single.model.state_dict()}


def test_ranks_hold_identical_weights_and_p(ddp_run) -> None:
    r0 = torch.load(ddp_run["out"] / "rank0.pt", weights_only=True)
    r1 = torch.load(ddp_run["out"] / "rank1.pt", weights_only=True)
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    assert int(r0["pico.steps"]) > 0 and not torch.equal(
        r0["pico.p"], torch.ones_like(r0["pico.p"])
    )


def test_no_ddp_wrapper_outlives_the_process_group(ddp_run) -> None:
    alive = [(ddp_run["out"] / f"ddp-alive-{r}").read_text() for r in (0, 1)]
    assert alive == ["0", "0"]


def test_two_ranks_match_one_process_on_the_same_global_batch(ddp_run) -> None:
    r0 = torch.load(ddp_run["out"] / "rank0.pt", weights_only=True)
    single = ddp_run["single"]
    assert int(r0["pico.steps"]) == int(single["pico.steps"])
    for k, v in single.items():
        if v.is_floating_point():
            # only the summation order differs (two partial gradient sums instead of one)
            torch.testing.assert_close(r0[k], v, atol=2e-4, rtol=2e-4, msg=k)


def test_only_rank_zero_writes_the_run_folder(ddp_run) -> None:
    out = ddp_run["out"]
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2, 3]
    assert (out / "last" / "state.pt").is_file() and (out / "best" / "config.json").is_file()
    assert not list(out.rglob("*.tmp"))


def test_rank_local_loss_with_a_learnable_temperature_stays_in_sync(
    tmp_path: Path, make_feature_set
) -> None:
    """``gather_negatives=false``: each rank's loss sees its own shard; the InfoNCE
    temperature (a parameter outside DDP) is reduced by hand — ranks must still agree."""
    torch.save(make_feature_set(n=48), tmp_path / "features.pt")
    (tmp_path / "worker.py").write_text(WORKER)
    overrides = {
        **PICO,
        "epochs": 2,
        "batch_size": 16,
        "loss": "infonce",
        "gather_negatives": False,
    }
    proc = torchrun(
        str(tmp_path / "worker.py"),
        str(tmp_path / "features.pt"),
        json.dumps(overrides),
        str(tmp_path / "out"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "out" / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "out" / "rank1.pt", weights_only=True)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    state = torch.load(tmp_path / "out" / "last" / "state.pt", weights_only=True)
    assert state["loss"], "the InfoNCE temperature is saved with the run"


def test_ranks_draw_their_own_dropout_masks(tmp_path: Path, make_feature_set) -> None:
    """Every rank seeded torch alike, so rank 1 dropped the very tokens of its shard that rank
    0 dropped of its own: the global batch saw one mask twice (the GPU-path review)."""
    torch.save(make_feature_set(n=32), tmp_path / "features.pt")
    (tmp_path / "worker.py").write_text(DROPOUT_WORKER)
    overrides = {"epochs": 1, "batch_size": 16, "model.text_dropout": 0.5}
    proc = torchrun(
        str(tmp_path / "worker.py"),
        str(tmp_path / "features.pt"),
        json.dumps(overrides),
        str(tmp_path / "out"),
        str(tmp_path),
    )
    assert proc.returncode == 0, _report(proc)
    m0, m1 = (json.loads((tmp_path / f"masks-{r}.json").read_text()) for r in (0, 1))
    assert len(m0) == len(m1) > 0  # one mask per training step (shards of 8 captions)
    assert [len(a) for a in m0] == [len(b) for b in m1]
    assert all(a != b for a, b in zip(m0, m1, strict=True))


def test_gradients_equal_the_one_process_gradient(tmp_path: Path) -> None:
    (tmp_path / "grad.py").write_text(GRAD_WORKER)
    proc = torchrun(str(tmp_path / "grad.py"), str(tmp_path), nproc=3)  # shards: 3, 2, 2
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("grad-ok-*")) == [
        "grad-ok-0",
        "grad-ok-1",
        "grad-ok-2",
    ]


def test_picos_gather_hook_takes_ranks_of_uneven_rows_and_widths(tmp_path: Path) -> None:
    """The GPU review: ddp_all_gather (the README's hook for users' DDP loops) failed when
    ranks held different numbers of pairs or caption widths (gloo: "Received data size
    doesn't match expected size"; NCCL: undefined)."""
    (tmp_path / "gather.py").write_text(GATHER_WORKER)
    proc = torchrun(str(tmp_path / "gather.py"), str(tmp_path), nproc=2)
    assert proc.returncode == 0, _report(proc)
    assert sorted(p.name for p in tmp_path.glob("gather-ok-*")) == ["gather-ok-0", "gather-ok-1"]


def test_torchrun_cli_trains_and_resumes(tmp_path: Path, write_jsonl_dataset) -> None:
    """``torchrun -m picoalign train`` end to end, then ``--resume`` under torchrun."""
    data = write_jsonl_dataset(tmp_path / "data")
    args = ["-m", "picoalign", *toy_train_argv(data, tmp_path / "run")]  # --epochs: last wins
    os.environ["PICOALIGN_CACHE"] = str(tmp_path / "cache")
    try:
        first = torchrun(*args, "--epochs", "1")
        assert first.returncode == 0, _report(first)
        assert first.stdout.count("selected epoch") == 1  # printed by rank 0 only
        again = torchrun(*args, "--epochs", "2", "--resume")
        assert again.returncode == 0, _report(again)
    finally:
        del os.environ["PICOALIGN_CACHE"]
    rows = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]
    assert PicoAligner.load(tmp_path / "run" / "best").config.embed_dim == 16


def test_torchrun_reports_a_data_error_once_and_names_it_in_its_summary(tmp_path: Path) -> None:
    """The walkthrough's report: under torchrun a bad data file printed rank 0's one-line
    error, then rank 1's traceback ("rank 0 failed ... this rank stops too"), then torchrun's
    summary with no cause in it ("To enable traceback see: ...")."""
    data = tmp_path / "bad.jsonl"
    data.write_text('{"image": "nope.png", "captions": ["a red circle"]}\n')
    proc = torchrun("-m", "picoalign", *toy_train_argv(data, tmp_path / "run"), timeout=120)
    said = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert said.count("picoalign: error:") == 1, said[-3000:]
    assert "[rank1]" not in said and "this rank stops too\n[" not in said
    cause = said.split("Root Cause", 1)[1]
    assert "rank      : 0" in cause and "image file not found" in cause, said[-3000:]
    assert not (tmp_path / "run").exists()
