"""Every `python -m f2d_core` command (encode, convert, bench) ends a bad path with one line,
`error: ...`, and exit code 2: no traceback, no half-written file, and before the work, not after."""
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, timeout=300):
    r = subprocess.run([sys.executable, "-m", "f2d_core", *map(str, args)], cwd=REPO, capture_output=True,
                       text=True, timeout=timeout)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def one_error(r) -> str:
    """The command's error (exit code 2; stderr ends with one message that starts a line with `error: `)."""
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert sum(line.startswith("error: ") for line in lines) == 1, r.stderr
    return "\n".join(lines[next(i for i, line in enumerate(lines) if line.startswith("error: ")):])


def test_convert_into_a_missing_folder(official_weights, tmp_path):
    out = tmp_path / "missing_dir" / "x.safetensors"
    msg = one_error(run_cli("convert", official_weights["msid"], out))
    assert f"error: output {out}: the folder {out.parent} does not exist; create it first or write elsewhere." in msg
    assert not out.parent.exists()


def test_convert_of_a_missing_input(tmp_path):
    msg = one_error(run_cli("convert", tmp_path / "msid.pt", tmp_path / "msid.safetensors"))
    assert f"error: {tmp_path / 'msid.pt'}: file not found." in msg
    assert os.listdir(tmp_path) == []


def test_convert_onto_a_folder_or_through_a_file(official_weights, tmp_path):
    (tmp_path / "x.safetensors").mkdir()
    assert "is a folder; give a file name inside it" in one_error(
        run_cli("convert", official_weights["msid"], tmp_path / "x.safetensors"))
    (tmp_path / "plain").write_text("a file, not a folder")
    assert "the folder" in one_error(run_cli("convert", official_weights["msid"], tmp_path / "plain" / "x.safetensors"))


def test_convert_writes_the_file_and_no_temp_file(official_weights, tmp_path):
    r = run_cli("convert", official_weights["mapping"], tmp_path / "mapping.safetensors")
    assert r.returncode == 0 and os.listdir(tmp_path) == ["mapping.safetensors"]


def test_encode_into_a_missing_folder_fails_before_reading_anything(tmp_path):
    out = tmp_path / "nope" / "anna"
    # neither the photo nor the models exist: the output is checked first, so it is what is reported
    msg = one_error(run_cli("encode", "--image", tmp_path / "me.jpg", "--models", tmp_path / "models",
                            "--out", out))
    assert f"error: --out {out}.f2d.safetensors: the folder {out.parent} does not exist" in msg


def test_encode_with_a_missing_models_folder(tmp_path):
    msg = one_error(run_cli("encode", "--image", tmp_path / "me.jpg", "--models", tmp_path / "models",
                            "--out", tmp_path / "anna"))
    assert f"error: model files missing: the models folder {tmp_path / 'models'} does not exist." in msg
    assert "msid.pt" in msg and "det_10g.onnx" in msg


def test_bench_json_into_a_missing_folder_fails_before_measuring(tmp_path):
    out = tmp_path / "nope" / "gpu.json"
    r = run_cli("bench", "--batches", "1", "--repeat", "1", "--json", out, timeout=60)
    assert f"error: --json {out}: the folder {out.parent} does not exist" in one_error(r)
    assert r.stdout == ""  # nothing was measured


def test_bench_with_a_missing_models_folder(tmp_path):
    msg = one_error(run_cli("bench", "--batches", "1", "--repeat", "1", "--models", tmp_path / "models", timeout=120))
    assert f"error: model files missing: the models folder {tmp_path / 'models'} does not exist." in msg
