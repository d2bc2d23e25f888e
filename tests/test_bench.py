"""The bench command's sections run to the end whether or not the bench extra is installed."""

import json
from importlib.util import find_spec

from minircnn.bench.__main__ import main


def test_vs_torch_quick(tmp_path, capsys):
    out = tmp_path / "b.json"
    results = main(["--quick", "--sections", "vs_torch", "--out", str(out)])
    printed = capsys.readouterr().out
    section = results["sections"]["vs_torch"]
    if find_spec("torch") is None or find_spec("torchvision") is None:
        assert section == {}
        assert (
            "vs_torch: skipped, needs torch and torchvision: pip install -e '.[bench]'" in printed
        )
    else:  # with the bench extra: the same computation on both sides, then the timings
        assert section["agreement"]["outputs"] < 1e-3
        assert [r["what"] for r in section["rows"]][0].startswith("train step")
    assert json.loads(out.read_text())["sections"]["vs_torch"] == section


def test_cold_start_quick(tmp_path, capsys):
    """--quick runs the child process once with the ordinary Numba cache (which the rest
    of the suite fills anyway): the child's script and its JSON line stay in working order."""
    results = main(["--quick", "--sections", "cold_start", "--out", str(tmp_path / "b.json")])
    (row,) = results["sections"]["cold_start"]["rows"]
    assert row["to_first_step_s"] > row["first_step_s"] > 0
    assert "first training step" in capsys.readouterr().out
