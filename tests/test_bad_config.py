"""Every bad config or option of `geomtraj train` (and analyze, plot): exit 2 and one line.

Each case is refused before anything is trained or allocated; a grid the machine cannot hold is
refused up front with a line stating the memory and the disk it needs.
"""

from __future__ import annotations

import pytest
from cli_checks import one_line_exit_2
from report_stores import small_store

from geomtraj.cli import main
from geomtraj.errors import ConfigError
from geomtraj.train.config import plan_from_config
from geomtraj.train.plan import check_resources, estimate_text, resources

GOOD = """
steps = 20
[data]
name = "sincos"
n_points = 16
[model]
hidden = ["4x3"]
[runs]
seeds = [0]
precision = "float32"
"""

#: (name, config text or bytes, expected text in the one-line message)
BAD_CONFIGS = [
    ("steps_inf", "steps = inf", "steps must be a finite number"),
    ("steps_nan", "steps = nan", "steps must be a finite number"),
    ("steps_minus_inf", "steps = -inf", "steps must be a finite number"),
    ("steps_string", 'steps = "100"', "steps must be a number"),
    ("steps_zero", "steps = 0", "steps must be >= 1"),
    ("steps_fraction", "steps = 2.5", "steps must be an integer"),
    ("twins_numbers", "steps = 20\ntwins = [1, 2]", "each [[twins]] entry must be a table"),
    ("twins_table", 'steps = 20\n[twins]\nkind = "scale"', "twins must be an array of tables"),
    ("twin_param_list", 'steps = 20\n[[twins]]\nkind = "ulp"\nparam = ["W1[0,0]"]',
     "twins.param must be a string"),
    ("twin_k_inf", 'steps = 20\n[[twins]]\nkind = "scale"\nk = inf', "twins.k must be a finite"),
    ("nested_precision", 'steps = 20\n[runs]\nprecision = [["float32"]]',
     "precision ['float32'] unknown"),
    ("nested_dataset", 'steps = 20\n[data]\nname = [["sincos"]]', "data set ['sincos'] unknown"),
    ("activation_list", 'steps = 20\n[model]\nactivation = ["tanh"]',
     "model.activation must be a string"),
    ("grid_mode_list", 'steps = 20\n[grid]\nmode = ["zip"]', "grid.mode must be a string"),
    ("record_params_ints", "steps = 20\nrecord_params = [1, 2]", "record_params must be 'all'"),
    ("record_params_float", "steps = 20\nrecord_params = 2.5", "record_params must be 'all'"),
    ("record_params_name", 'steps = 20\nrecord_params = ["nope"]', "nope"),
    ("negative_seed", "steps = 20\n[runs]\nseeds = [-1]", "runs.seeds must be an integer from 0"),
    ("seed_2_64", "steps = 20\n[runs]\nseeds = [18446744073709551616]",
     "runs.seeds must be an integer from 0"),
    ("data_seed_negative", "steps = 20\n[data]\nseed = -3", "data.seed must be an integer from 0"),
    ("lr_inf", "steps = 20\n[optimizer]\nlr = inf", "optimizer.lr must be a finite number"),
    ("lr_nan", "steps = 20\n[optimizer]\nlr = nan", "optimizer.lr must be a finite number"),
    ("eps_inf", "steps = 20\n[optimizer]\neps = inf", "optimizer.eps must be a finite number"),
    ("weight_decay_inf", "steps = 20\n[optimizer]\nweight_decay = inf",
     "optimizer.weight_decay must be a finite number"),
    ("beta2_one", "steps = 20\n[optimizer]\nbeta2 = 1.0", "must lie in [0, 1)"),
    ("noise_nan", "steps = 20\n[data]\nnoise = nan", "data.noise must be a finite number"),
    ("hidden_inf", "steps = 20\n[model]\nhidden = [[inf]]", "model.hidden"),
    ("hidden_superscript", 'steps = 20\n[model]\nhidden = ["²x3"]', "model.hidden"),
    ("chunk_rows_inf", "steps = 20\nchunk_rows = inf", "chunk_rows must be a finite number"),
    ("record_every_nan", "steps = 20\nrecord_every = nan", "record_every must be a finite"),
    ("not_utf8", b'steps = 20\nname = "caf\xe9"\n', "not UTF-8 text"),
    ("not_toml", "steps = = 3", "invalid TOML"),
    ("unknown_key", "steps = 20\nstpes = 3", "unknown key 'stpes'"),
    # grids the machine cannot hold: refused before anything grid-sized is allocated
    ("huge_widths", 'steps = 20\n[model]\nhidden = ["100000x100000"]', "of memory"),
    ("huge_steps", "steps = 1e15", "of memory"),
    ("huge_n_points", "steps = 20\n[data]\nn_points = 1e12", "of memory"),
    ("huge_record_every", "steps = 1e9\nrecord_every = 1e9", "of memory"),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_is_one_line_exit_2(case, tmp_path, capsys) -> None:
    _, text, expected = case
    cfg = tmp_path / "bad.toml"
    if isinstance(text, bytes):
        cfg.write_bytes(text)
    else:
        cfg.write_text(text)
    out = tmp_path / "s.zarr"
    for argv in (["train", str(cfg), "--dry-run"], ["train", str(cfg), "--out", str(out)]):
        one_line_exit_2(argv, capsys, expected)
        assert not out.exists()


def test_huge_grid_message_states_memory_and_disk(tmp_path, capsys) -> None:
    cfg = tmp_path / "big.toml"
    cfg.write_text('steps = 20\n[model]\nhidden = ["100000x100000"]\n')
    err = one_line_exit_2(["train", str(cfg), "--dry-run"], capsys, "of memory")
    assert "GiB of memory (" in err and "available) and " in err and "of disk" in err


def test_resources_are_estimated_and_checked_without_allocating() -> None:
    cfg = {"steps": 2000, "record_params": 16, "model": {"hidden": ["12x24"]},
           "runs": {"seeds": list(range(64)), "precision": "float32"}}  # fmt: skip
    plan = plan_from_config(cfg)
    need = resources(plan)
    # the store: 64 runs x 2000 rows x 16 coordinates x 3 (theta, m, v) + 4 per-step series,
    # in float32, and at least that much on disk
    traj = 64 * 2000 * (3 * 16 + 4) * 4
    assert traj <= need["disk_bytes"] < 1.5 * traj
    assert need["memory_bytes"] < 64 * 2**20
    # refused by disk alone, by memory alone, and accepted with room for both
    with pytest.raises(ConfigError, match="of disk for its store .* free"):
        check_resources(plan, store_dir=".", memory=2**40, disk=need["disk_bytes"] - 1)
    with pytest.raises(ConfigError, match=r"of memory \(.* available\)"):
        check_resources(plan, memory=need["memory_bytes"] - 1)
    check_resources(plan, store_dir=".", memory=need["memory_bytes"], disk=need["disk_bytes"])


def test_disk_is_checked_where_the_store_goes(tmp_path, capsys, monkeypatch) -> None:
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6 - 1000, 1000))
    cfg = tmp_path / "grid.toml"
    cfg.write_text(GOOD)
    err = one_line_exit_2(
        ["train", str(cfg), "--out", str(tmp_path / "new" / "s.zarr")], capsys, "of disk"
    )
    assert "1000 free" in err or "0.0 MiB free" in err
    assert not (tmp_path / "new").exists()


def test_utf8_bom_is_accepted(tmp_path, capsys) -> None:
    cfg = tmp_path / "bom.toml"
    cfg.write_bytes(b"\xef\xbb\xbf" + GOOD.encode())
    assert main(["train", str(cfg), "--dry-run"]) == 0
    assert "grid: 1 runs x 20 steps" in capsys.readouterr().out


def test_dry_run_prints_days_of_work_as_hours() -> None:
    from geomtraj.train.plan import estimate_seconds

    plan = plan_from_config(
        {
            "steps": 10**8,
            "record_params": 4,
            "record_every": 10**4,
            "runs": {"seeds": list(range(64)), "precision": "float64"},
        }  # fmt: skip
    )
    seconds = estimate_seconds(plan, 1)
    assert seconds > 24 * 3600
    text = estimate_text(plan, cores=1)
    hours = int(text.split("time: about ")[1].split(":")[0])
    assert hours == round(seconds) // 3600, text  # (not the remainder of a day)


def test_durations_over_a_day() -> None:
    from geomtraj.train.plan import _hms

    assert _hms(25 * 3600 + 45 * 60) == "25:45:00"
    assert _hms(59.6) == "00:01:00"
    assert _hms(100 * 3600 + 1) == "100:00:01"


def _analyze_argv(tmp_path, *extra):
    return ["analyze", str(small_store()), "--out", str(tmp_path / "r"), "--quiet", *extra]


BAD_OPTIONS = [
    ("runs_superscript", lambda t: _analyze_argv(t, "--runs", "²"), "--runs"),
    ("memory_limit_nan", lambda t: _analyze_argv(t, "--memory-limit", "nan"), "--memory-limit"),
    ("memory_limit_inf", lambda t: _analyze_argv(t, "--memory-limit", "inf"), "--memory-limit"),
    ("analyses_empty", lambda t: _analyze_argv(t, "--analyses", ""), "names no analysis"),
    ("analyses_commas", lambda t: _analyze_argv(t, "--analyses", " , "), "names no analysis"),
    ("out_inside_store", lambda t: ["analyze", str(small_store()), "--out",
                                    str(small_store() / "rep"), "--quiet"], "inside the store"),
    ("out_is_store", lambda t: ["analyze", str(small_store()), "--out", str(small_store())],
     "inside the store"),
    ("plot_txt", lambda t: ["plot", str(small_store()), "--run", "1", "--out",
                            str(t / "p.txt")], "name it *.png"),
    ("jobs_word", lambda t: _analyze_argv(t, "--jobs", "two"), "invalid int value"),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_OPTIONS, ids=[c[0] for c in BAD_OPTIONS])
def test_bad_option_is_one_line_exit_2(case, tmp_path, capsys) -> None:
    _, argv, expected = case
    one_line_exit_2(argv(tmp_path), capsys, expected)
    assert not (small_store() / "rep").exists() and not (tmp_path / "p.txt").exists()


@pytest.mark.parametrize("key", ["lr", "eps", "weight_decay"])
def test_python_entry_point_refuses_non_finite_hyper_parameters(key) -> None:
    """`train()` builds its plan without a config; the plan itself refuses inf (contract 3)."""
    import numpy as np

    from geomtraj.train.data import make_dataset
    from geomtraj.train.trainer import train

    X, y = make_dataset("sincos", 16, 0)
    with pytest.raises(ConfigError, match=rf"{key}=inf must lie in [\[(]0, inf\)"):
        train(X, y, hidden=(3,), steps=2, **{key: np.inf})
