"""`python -m f2d_core bench` runs without ComfyUI or pytest fixtures and reports what it measured.
(Its speed goals live in the bench itself, not in timed tests.)"""
import json

from f2d_core import bench


def test_the_bench_runs_the_sections_asked_for_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["--quick", "--only", "load,reuse", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    ids = {r["id"] for r in data["rows"]}
    assert {"load.pt", "load.safetensors", "reuse.detector"} <= ids
    assert data["memory"]["load"]["peak_rss_mb"] > 0
    printed = capsys.readouterr().out
    assert "encoder load from .safetensors" in printed and "targets (issue #4)" in printed


def test_targets_are_judged_per_device():
    report = bench.Report(device="cpu")
    report.add(bench.Row("encode.fp32.b1", "encode batch 1", "ms", median=49.0, p90=52.0, batch=1, per_face=49.0))
    report.add(bench.Row("encode.fp32.b8", "encode batch 8", "ms", median=400.0, p90=410.0, batch=8, per_face=50.0))
    report.add(bench.Row("encode.best.b1", "best batch 1 (a CUDA figure)", "ms", median=5.0, p90=5.0))
    bench.judge(report)
    assert [r.status for r in report.rows] == ["met", "MISSED", ""]


def test_the_flop_count_matches_the_architecture():
    flops = bench.encoder_flops()
    assert abs(sum(flops.values()) / 1e9 - 8.50) < 0.01  # 9.14 before the last block went CLS-only
