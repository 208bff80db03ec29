"""The experiments' command line (examples/): where results go (a quick run never overwrites the
committed full-mode results), --help shows the whole description, digits' --epochs and its
deprecated --steps alias, and the plot scales derived from the data."""
import json
import math
import os

import numpy as np
import pytest

from examples import batchstats, common, digits, highfreq, spectral, sr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENTS = [digits, highfreq, spectral, sr, batchstats]


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """The default results folders, redirected to tmp_path (full, quick)."""
    full, quick = tmp_path / "results", tmp_path / "results-quick"
    monkeypatch.setattr(common, "RESULTS", str(full))
    monkeypatch.setattr(common, "QUICK_RESULTS", str(quick))
    return full, quick


@pytest.mark.parametrize("module", EXPERIMENTS, ids=lambda m: m.__name__)
def test_results_folder_defaults(module, folders):
    full, quick = folders
    p = (module.command_line() if module is digits
         else common.parser(module.__name__, module.__doc__))
    assert common.parse_args(p, ["--quick"]).out == str(quick)
    assert common.parse_args(p, []).out == str(full)
    assert common.parse_args(p, ["--quick", "--out", "elsewhere"]).out == "elsewhere"


def test_quick_run_writes_elsewhere_and_says_where(folders, tmp_path, capsys):
    # The experiments' own packages (README "Experiments"), not the test command's install list.
    pytest.importorskip("sklearn", reason="examples/digits.py needs scikit-learn "
                        "(pip install tqdm scipy scikit-learn scikit-image matplotlib)")
    pytest.importorskip("matplotlib", reason="the experiments' figures need matplotlib")
    full, quick = folders
    digits.main(["--quick", "--epochs", "1", "--json", str(tmp_path / "cli.json")])
    written = capsys.readouterr().out
    assert not full.exists(), "a quick run wrote into the committed results folder"
    for name in ("digits.json", "digits.md", "digits.png"):
        assert (quick / name).is_file()
        assert str(quick / name) in written
    result = json.loads((tmp_path / "cli.json").read_text())
    assert result["config"]["quick"] and result["config"]["epochs"] == 1


def test_quick_results_folder_is_git_ignored():
    ignored = open(os.path.join(ROOT, ".gitignore")).read().split()
    assert "/" + os.path.relpath(common.QUICK_RESULTS, ROOT) + "/" in ignored


@pytest.mark.parametrize("module", EXPERIMENTS, ids=lambda m: m.__name__)
def test_help_shows_the_whole_description(module, capsys):
    with pytest.raises(SystemExit) as exit_:
        (digits.parse if module is digits else module.main)(["--help"])
    assert exit_.value.code == 0
    shown = " ".join(capsys.readouterr().out.split())
    body = module.__doc__.strip().split("\n\n")
    for paragraph in body:
        if paragraph.lstrip().startswith("python -m "):
            assert paragraph.strip() not in shown  # argparse prints its own usage
        else:
            assert " ".join(paragraph.split()) in shown
    assert "minutes" not in shown


def test_digits_epochs_and_deprecated_steps():
    assert digits.parse(["--epochs", "3"]).epochs == 3
    with pytest.warns(FutureWarning, match="--epochs"):
        assert digits.parse(["--steps", "4"]).epochs == 4
    with pytest.raises(SystemExit):
        digits.parse(["--steps", "4", "--epochs", "3"])


def test_padded_limits_fit_the_data():
    lo, hi = common.padded_limits([50.0, 67.0], [2.0, 1.0], lower=0, upper=100)
    assert lo < 48 and hi > 68  # every value ± its error is inside
    assert lo > 40 and hi < 80  # and the axis is not mostly empty
    assert common.padded_limits([97.0, 99.5], [1.0, 1.0], lower=0, upper=100)[1] == 100
    assert common.padded_limits([5.0], pad=0.1) == pytest.approx((4.5, 5.5))
    assert common.padded_limits([0.0]) == pytest.approx((-0.1, 0.1))
    with pytest.raises(ValueError, match="values"):
        common.padded_limits([1.0, math.nan])


def test_log_range_spans_the_data():
    amps = np.concatenate([np.linspace(1e-3, 0.05, 99), [0.0]])  # a quick run's amplitudes
    vmin, vmax = common.log_range(amps)
    assert vmax == pytest.approx(0.05)
    assert 1e-3 <= vmin < 2e-3  # the zero is not on a log scale; the small values are
    vmin, vmax = common.log_range(np.r_[1e-9, np.full(999, 0.5), 1.2])
    assert vmin == pytest.approx(0.5) and vmax == pytest.approx(1.2)  # one outlier ignored
    assert common.log_range([0.3, 0.3]) == pytest.approx((0.03, 0.3))
    with pytest.raises(ValueError, match="positive"):
        common.log_range([0.0, -1.0])


def test_one_seed_prints_no_interval():
    assert common.pm(0.2261, 0.0, ".3e", 1, ".1e") == "2.261e-01"
    assert common.pm(0.2261, 0.016, ".3e", 5, ".1e") == "2.261e-01 ± 1.6e-02"
    assert common.pm(97.3, 0.8, ".2f", 5) == "97.30 ± 0.80"
