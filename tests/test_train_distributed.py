"""The trainers on several processes (torch.distributed, gloo on the CPU), as torchrun runs them.

Each rank is its own `python -m f2d_core.train` process with torchrun's environment
(tiny_train.RankProcesses). One mapping run on 2 ranks (the tiny models of the training
tests) is compared with one process trained with the same seed and global batch: the same
weights, nothing written by rank 1, a resume on 2 ranks and on 1, and, when a photo that
rank 1 reads is broken, a stop of every rank with a message. An MSID run shows that a killed
rank ends the run on the other rank, and that MSID refuses another number of ranks.
"""
import csv
import os
import shutil
import time
import types

import pytest
import torch
import torch.distributed as dist

import tiny_train as tt

pytest.importorskip("diffusers")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("this torch has no torch.distributed with gloo", allow_module_level=True)

from f2d_core.errors import F2DError  # noqa: E402
from f2d_core.train.__main__ import main  # noqa: E402
from f2d_core.train.data import SampleStream, build_index  # noqa: E402

# 2 ranks vs 1 process, mapping weights after 2 and after 3 steps of AdamW at lr 1e-4 (weights up
# to 0.026), measured: the gradients agree to 3e-6 relative (float rounding: the UNet runs batch 1
# instead of 2, the sums go in another order); the weights differ by 0 in the median and by more
# than 1e-6 in 1.8e-5 of the elements, at most by 1.5e-5 (gradients near AdamW's eps 1e-8, where its
# normalisation magnifies rounding). Resumed on 2 ranks or on 1: the same figures. One step more
# or less changes 99% of the elements by more than 1e-6 (median 5e-5).
LR = 1e-4
MAX_DIFFERENCE = LR / 2         # measured 1.5e-5
MAX_FRACTION_ABOVE = 1e-3       # of the elements differing by more than LR / 100; measured 1.8e-5
RUN_TIMEOUT_S = 120             # a hang fails the test instead of the suite


# ---- the split of a run over ranks, without processes ------------------------------------------

def test_each_rank_takes_its_slice_of_every_step():
    """Rank r of W takes samples [s·B + r·B/W, s·B + (r+1)·B/W) of step s, in micro-batches: together the
    ranks read exactly what one process reads, step by step, from any start step."""
    stream = SampleStream(7, seed=3)
    one = stream.shard(start_step=2, batch=4)
    ranks = [SampleStream(7, seed=3).shard(2, 4, rank=r, world=2, micro=1) for r in range(2)]
    for _ in range(5):
        step = next(one)
        assert step == [next(ranks[0])[0], next(ranks[0])[0], next(ranks[1])[0], next(ranks[1])[0]]
    assert next(SampleStream(7, seed=3).shard(2, 4)) == next(SampleStream(7, seed=3).batches(8, 4))


def _split(batch, micro, world):
    from f2d_core.train.distributed import Ranks
    from f2d_core.train.loop import BaseTrainer
    from f2d_core.train.mapping_trainer import MappingConfig
    tr = BaseTrainer()
    tr.cfg, tr.ranks = MappingConfig(batch_size=batch, micro_batch_size=micro), Ranks(0, world)
    tr._split_batch()
    return tr.per_rank_batch, tr.micro, tr.accumulation


def test_the_global_batch_is_split_over_the_ranks():
    assert _split(32, None, 8) == (4, 4, 1)   # the paper's batch on 8 GPUs: 4 per GPU
    assert _split(32, 2, 8) == (4, 2, 2)      # with accumulation inside each rank
    assert _split(1024, 64, 8) == (128, 64, 2)
    with pytest.raises(F2DError, match=r"--batch-size 30 cannot be split evenly over the 8 ranks .*multiple of 8"):
        _split(30, None, 8)
    with pytest.raises(F2DError, match=r"--batch-size 32 over 4 ranks is 8 per rank, which must be a multiple of "
                                       r"--micro-batch-size 3"):
        _split(32, 3, 4)


def test_a_named_gpu_is_refused_when_several_ranks_share_the_machine():
    from f2d_core.train.distributed import Ranks
    with pytest.raises(F2DError, match=r"--device cuda:1 names one GPU, but torchrun started 2 processes .*"
                                       r"--device cuda \(or auto\)"):
        Ranks(1, 2, 1, 2).device("cuda:1")
    assert Ranks(1, 2, 1, 2).device("cpu").type == "cpu"


def test_a_world_size_without_the_rest_of_torchrun_is_explained(monkeypatch):
    from f2d_core.train.distributed import launch
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(F2DError, match=r"WORLD_SIZE=2 asks for a distributed run, but MASTER_ADDR.* is not set: "
                                       r"start the trainer with torchrun"):
        with launch("cpu"):
            pass


def test_msid_needs_two_samples_per_forward_pass(tmp_path):
    from f2d_core.train.msid_trainer import MSIDConfig, MSIDTrainer
    with pytest.raises(F2DError, match=r"puts 1 sample in each forward pass, but MSID's BatchNorm necks need "
                                       r"at least 2"):
        MSIDTrainer(MSIDConfig(data=str(tmp_path), out=str(tmp_path / "out"), batch_size=2, micro_batch_size=1,
                               device="cpu"))


def test_bench_step_times_one_rank_of_a_larger_run(tmp_path, capsys):
    """--world-size 2 without torchrun: one rank's share (batch 4 / 2) and what that rank holds."""
    import json
    path = tmp_path / "bench.json"
    assert main(["bench-step", "--size", "tiny", "--device", "cpu", "--world-size", "2", "--batch-size", "4",
                 "--steps", "1", "--warmup", "0", "--workers", "0", "--no-expression", "--no-parsing",
                 "--json", str(path)]) == 0
    res = json.loads(path.read_text())
    assert (res["world_size"], res["world_size_simulated"], res["per_rank_batch"]) == (2, True, 2)
    held = res["holds_per_rank_gib"]
    assert held["trained weights (fp32)"] == held["gradients (fp32)"] > 0  # the mapping's 12 M parameters
    assert held["AdamW state (fp32)"] == pytest.approx(2 * held["trained weights (fp32)"], abs=0.002)
    assert held["frozen text_encoder (float32)"] > 0 and [r["rank"] for r in res["ranks"]] == [0]
    assert res["ranks"][0]["peak_process_rss_gib"] > 0.1
    assert "each rank holds (GiB)" in capsys.readouterr().out
    assert main(["bench-step", "--size", "tiny", "--device", "cpu", "--world-size", "3", "--batch-size", "4"]) == 2
    assert "--batch-size 4 cannot be split evenly over --world-size 3" in capsys.readouterr().err


# ---- 2 ranks ----------------------------------------------------------------------------------

def mapping_argv(files, out, steps, *extra):
    return ["mapping", "--data", files["data"], "--landmarks", files["landmarks"], "--sd", files["sd"],
            "--msid", files["msid"], "--out", str(out), "--steps", str(steps), "--batch-size", "2",
            "--resolution", "64", "--workers", "0", "--device", "cpu", "--lr", str(LR), "--save-every", "1",
            "--sample-every", "0", "--no-progress", *extra]


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def differences(a, b):
    """(max |a - b|, fraction of the elements differing by more than LR / 100) over two weight files."""
    a, b = weights(a), weights(b)
    d = torch.cat([(a[k].float() - b[k].float()).abs().flatten() for k in a])
    return float(d.max()), float((d > LR / 100).float().mean())


def same_weights(a, b):
    most, fraction = differences(a, b)
    return most < MAX_DIFFERENCE and fraction < MAX_FRACTION_ABOVE


def logged(out, column="step"):
    with open(os.path.join(out, "loss.csv")) as f:
        return [float(r[column]) if column != "step" else int(r[column]) for r in csv.DictReader(f)]


def snapshot(out, step):
    return out / "checkpoints" / f"mapping_step{step:07d}.pt"


@pytest.fixture(scope="module")
def mapping_runs(tmp_path_factory):
    """one: 1 process, 3 steps (weights kept at every step). two: the same settings on 2 ranks, 2 steps;
    then a copy of it at step 2; then `two` resumed on 2 ranks towards step 4 with the photo broken that
    rank 1 is the first to read in step 4 (each rank takes 1 sample per step)."""
    tmp = tmp_path_factory.mktemp("mapping_ranks")
    marks = tt.write_faces(tmp / "img", 4, 96)
    files = {"data": str(tmp / "img"), "landmarks": tt.write_landmarks(tmp / "lm.json", marks),
             "sd": str(tt.save_diffusers_folder(tt.tiny_parts(), tmp / "sd")), "msid": tt.random_msid(tmp / "msid.pt")}
    one, two = tmp / "one", tmp / "two"
    assert main(mapping_argv(files, one, 3, "--snapshot-every", "1")) == 0

    fresh = tt.RankProcesses(2, mapping_argv(files, two, 2), tmp / "fresh", watch=two)
    fresh.codes = fresh.wait(RUN_TIMEOUT_S)
    shutil.copytree(two, tmp / "two_at_2")

    # 0-based step 3 holds samples 6 (rank 0) and 7 (rank 1); samples 4-7 are the second epoch, a
    # permutation: sample 7's photo is read by nobody else in steps 3 and 4
    records = build_index(files["data"], landmarks_file=files["landmarks"])
    broken = tmp / "img" / records[SampleStream(len(records), seed=0).item(7)[0]].path
    good = broken.read_bytes()
    broken.write_bytes(b"not a png")
    resumed = tt.RankProcesses(2, mapping_argv(files, two, 4, "--resume"), tmp / "resumed", watch=two)
    resumed.codes = resumed.wait(RUN_TIMEOUT_S)
    broken.write_bytes(good)
    return types.SimpleNamespace(files=files, one=one, two=two, two_at_2=tmp / "two_at_2", fresh=fresh,
                                 resumed=resumed, broken=broken)


def test_two_ranks_train_the_weights_of_one_process(mapping_runs):
    """2 ranks of 1 sample each == 1 process with batch 2 and the same seed, after 2 steps."""
    r = mapping_runs
    assert r.fresh.codes == [0, 0], (r.fresh.codes, r.fresh.text(0), r.fresh.text(1))
    assert same_weights(snapshot(r.one, 2), r.two_at_2 / "mapping.pt"), \
        differences(snapshot(r.one, 2), r.two_at_2 / "mapping.pt")
    assert not same_weights(snapshot(r.one, 2), snapshot(r.one, 3))  # (the criterion tells steps apart)
    assert logged(r.two_at_2, "loss") == pytest.approx(logged(r.one, "loss")[:2], rel=1e-5)  # the mean of all ranks
    assert weights(r.two_at_2 / "last.pt")["world_size"] == 2
    assert "Traceback" not in r.fresh.text(0) + r.fresh.text(1)


def test_only_rank_0_writes(mapping_runs):
    """Rank 1 creates, writes, renames and deletes nothing in --out, neither in a fresh run nor resumed;
    it prints nothing on stdout."""
    for run in (mapping_runs.fresh, mapping_runs.resumed):
        assert run.writes(1) == [], run.writes(1)
        assert run.text(1, "out") == ""
    assert {"os.mkdir .", "open loss.csv", "os.rename mapping.pt", "os.rename last.pt"} <= \
        set(mapping_runs.fresh.writes(0))  # (the audit does see rank 0's files)
    assert "wrote" in mapping_runs.fresh.text(0, "out")


def test_a_two_rank_run_resumes_on_two_ranks(mapping_runs):
    """Resumed at step 2 on 2 ranks, step 3 gives the weights of the uninterrupted 1-process run."""
    r = mapping_runs
    assert logged(r.two) == [1, 2, 3]
    assert weights(r.two / "last.pt")["step"] == 3
    assert same_weights(snapshot(r.one, 3), r.two / "mapping.pt"), differences(snapshot(r.one, 3), r.two / "mapping.pt")


def test_a_two_rank_run_resumes_on_one_process(mapping_runs):
    """Another number of ranks continues the same run: the same samples, the same draws per sample."""
    r = mapping_runs
    assert main(mapping_argv(r.files, r.two_at_2, 3, "--resume")) == 0
    assert logged(r.two_at_2) == [1, 2, 3]
    assert same_weights(r.one / "mapping.pt", r.two_at_2 / "mapping.pt"), \
        differences(r.one / "mapping.pt", r.two_at_2 / "mapping.pt")


def test_an_unreadable_photo_on_one_rank_stops_every_rank_with_its_message(mapping_runs):
    """Rank 1 reports the photo; rank 0 stops too and names rank 1; both end by themselves with the
    CLI's exit code 2 (nobody is left waiting for the other), without a traceback."""
    run, broken = mapping_runs.resumed, mapping_runs.broken
    assert run.codes == [2, 2], (run.codes, run.text(0), run.text(1))
    assert f"error: {broken}: not a readable image" in run.text(1)
    assert f"error: rank 1 of 2 stopped (step 4), so rank 0 stops too: {broken}: not a readable image" in run.text(0)
    assert "Traceback" not in run.text(0) + run.text(1)


# ---- MSID -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def killed_msid_run(tmp_path_factory):
    """An MSID run on 2 ranks whose rank 1 is killed (SIGKILL: no exception, no message) once a step is done."""
    from test_train_msid import write_identities
    tmp = tmp_path_factory.mktemp("msid_ranks")
    people = write_identities(tmp / "people", people=2, per_person=2)
    out = tmp / "out"
    argv = ["msid", "--data", str(people), "--out", str(out), "--steps", "100000", "--batch-size", "4",
            "--workers", "0", "--device", "cpu", "--no-progress", "--warmup-steps", "0", "--save-every", "1"]
    run = tt.RankProcesses(2, argv, tmp / "ranks", timeout_s=RUN_TIMEOUT_S)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline and not (os.path.isfile(out / "loss.csv") and logged(out)):
        assert run.procs[0].poll() is None, run.text(0)
        time.sleep(0.1)
    run.procs[1].kill()
    t0 = time.monotonic()
    run.codes = run.wait(RUN_TIMEOUT_S)
    run.seconds = time.monotonic() - t0
    return types.SimpleNamespace(run=run, people=people, out=out)


def test_a_killed_rank_ends_the_run_on_the_other_rank(killed_msid_run):
    """Rank 0 notices at its next collective and exits non-zero on its own, long before the timeout."""
    run = killed_msid_run.run
    assert run.codes[0] not in (0, None), run.text(0)
    assert run.seconds < RUN_TIMEOUT_S / 4
    assert weights(killed_msid_run.out / "last.pt")["step"] >= 1  # what was saved stays usable


def test_msid_refuses_to_resume_on_another_number_of_ranks(killed_msid_run):
    from f2d_core.train.msid_trainer import MSIDConfig, MSIDTrainer
    cfg = MSIDConfig(data=str(killed_msid_run.people), out=str(killed_msid_run.out), steps=100_000, batch_size=4,
                     warmup_steps=0, workers=0, device="cpu", progress=False, save_every=1)
    with pytest.raises(F2DError, match=r"was trained on 2 rank\(s\), this one has 1\. MSID's BatchNorm necks "
                                       r"normalise each rank's micro-batches"):
        MSIDTrainer(cfg).run(resume=True)
