"""The analysis parts sped up for issue 22, timed beside another checkout's versions in one run.

Loads ``periods``, ``diffusion``, ``stability`` and ``base`` from ``--baseline`` (a checkout's
root) next to this checkout's, and times each part alternately (best of ``--repeats``), so that
the load of a shared machine hits both versions alike:

- ``three Welch spectra``: :func:`geomtraj.analysis.periods.spectral_period` on the log loss,
  log update norm and mean ``log v`` of a 50,000-step run (segments 8192, 8192 and 2048), with
  ``scipy.signal.welch`` once on the update norm printed beside;
- ``diffusion MSD + exponents``: the curve (``msd``) and the block-bootstrap exponent
  (``diffusion_exponent``) of a detrended and a raw 50,000 x 8 trajectory, as a run's analysis
  calls them;
- ``stability state reads``: the full states at every checkpoint of every run of ``STORE`` (a
  geomtraj store with snapshots, e.g. one trained by ``bench_analyze.py --keep DIR``), read the
  way the analysis reads them;
- ``RunData reads``: what the period analysis reads of each run of ``STORE`` (hyper-parameters,
  per-step series, ``theta``, ``m``, ``v``, parameter names) from the block of runs that
  ``geomtraj analyze`` holds in memory (:func:`geomtraj.analysis.runner.scan_block`);
- ``bursts, four readers``: a run's bursts asked for by four analyses (periods, spirals,
  stability, twins), each run of ``STORE``, the block's rows held as in ``geomtraj analyze``;
- ``stability curvature``: both eigenproblems at every checkpoint of every run of ``STORE``
  (:func:`geomtraj.analysis.stability._fill_checkpoints`, Hessian-vector products included).

Each output is checked to agree between the two versions (spectra and MSD to 1e-9 relative,
states, reads and bursts bit for bit, sharpness to 1e-9 relative).

    .venv/bin/python benchmarks/bench_analysis_parts.py --baseline /path/to/old/checkout STORE
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import numpy as np
from scipy import signal as sps


def _load(root: Path, name: str, alias: str, patch: dict | None = None):
    """Module ``geomtraj.analysis.<name>`` of the checkout at ``root``, as ``alias``."""
    path = root / "geomtraj" / "analysis" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(alias, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[alias] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    for key, value in (patch or {}).items():
        setattr(mod, key, value)
    return mod


def _best(fns: dict, repeats: int) -> dict[str, float]:
    best = dict.fromkeys(fns, np.inf)
    for _ in range(repeats):
        for label, fn in fns.items():  # alternate, so both see the same load
            t0 = time.process_time()
            fn()
            best[label] = min(best[label], time.process_time() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", help="a store with snapshots (for the stability reads)")
    ap.add_argument("--baseline", required=True, help="root of the checkout to compare with")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    base = Path(args.baseline).resolve()
    old_base = _load(base, "base", "baseline_base")
    old = {
        "events": _load(base, "events", "baseline_events"),
        "periods": _load(base, "periods", "baseline_periods"),
        "diffusion": _load(base, "diffusion", "baseline_diffusion"),
        "stability": _load(
            base, "stability", "baseline_stability", {"RunData": old_base.RunData}
        ),  # fmt: skip
    }
    from geomtraj.analysis import periods as new_periods
    from geomtraj.analysis import stability as new_stability
    from geomtraj.analysis.diffusion import detrend_linear
    from geomtraj.store.zarrstore import open_store

    new_diffusion = sys.modules["geomtraj.analysis.diffusion"]
    print(f"baseline {base}; this checkout {Path(new_periods.__file__).parents[2]}")

    rng = np.random.default_rng(0)
    n, p = 50_000, 8
    series = [np.cumsum(rng.standard_normal(n)) * 1e-2 + np.sin(np.arange(n) / 40.0)
              for _ in range(3)]  # fmt: skip
    segments = (8192, 8192, 2048)

    def spectra(mod):
        return [mod.spectral_period(x, 1.0, mod.PeriodParams(), seg).power
                for x, seg in zip(series, segments, strict=True)]  # fmt: skip

    for a, b in zip(spectra(old["periods"]), spectra(new_periods), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12 * a.max())

    theta = np.cumsum(rng.standard_normal((n, p)), axis=0) + np.arange(n)[:, None] * 1e-3
    resid = detrend_linear(theta)
    lags = np.unique(np.geomspace(1, n // 2, 64).round().astype(np.int64))

    def dynamics(mod):
        params = mod.DiffusionParams()
        out = [mod.msd(resid, lags), mod.msd(theta, lags)]
        for x in (resid, theta):
            fit = mod.diffusion_exponent(x, detrend=False, params=params)
            out.append(np.array([fit.exponent, *fit.ci]))
        return out

    for a, b in zip(dynamics(old["diffusion"]), dynamics(new_diffusion), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-9)

    ds = open_store(args.store)
    runs = list(range(ds.sizes["run"]))

    def states_old():
        return [old["stability"].checkpoint_states(ds, r) for r in runs]

    def states_new():
        views = new_stability._StateViews(ds, runs)
        try:
            return [new_stability.checkpoint_states(views(r), r) for r in runs]
        finally:
            views.close()

    states = states_new()
    for a, b in zip(states_old(), states, strict=True):
        assert a.theta.tobytes() == b.theta.tobytes() and a.v.tobytes() == b.v.tobytes()

    # the block of runs as geomtraj analyze holds it (one run chunk of STORE)
    from geomtraj.analysis import runner
    from geomtraj.analysis.base import RunData, rows_in_memory
    from geomtraj.analysis.events import run_bursts

    block = runner.plan_blocks(ds, runs)[0]
    _, data = runner.scan_block(ds, block, keep=True)
    view = runner._with_block(ds, data)
    r0 = int(data.pop("_runs")[0])

    def reads(cls):
        out = []
        for r in block:
            rd = cls(view, r)
            out += [rd.update_norm, rd.train_loss, rd.theta, rd.m, rd.v, rd.param_names]
        return out

    def reads_new():
        with rows_in_memory(view, r0, data):
            return reads(RunData)

    def bursts(fn):
        with rows_in_memory(view, r0, data):  # reads alike: only the detection differs
            return [fn(cls(view, r)) for r in block for cls in [RunData] * 4]

    def bursts_old():
        return bursts(old["events"].run_bursts)

    def bursts_new():
        return bursts(run_bursts)

    for a, b in zip(reads(old_base.RunData), reads_new(), strict=True):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
    for a, b in zip(bursts_old(), bursts_new(), strict=True):
        assert a.onset.tobytes() == b.onset.tobytes() and a.end.tobytes() == b.end.tobytes()

    def curvature(mod):
        from threadpoolctl import threadpool_limits

        out = []
        for r, st in zip(runs, states, strict=True):
            rd = RunData(ds, r)
            obj = new_stability.MLPObjective(
                new_stability.run_spec(ds, r), *new_stability.run_data_arrays(ds, r),
                rd.hyper["weight_decay"],
            )  # fmt: skip
            cols = {k: np.full(st.steps.size, np.nan) for k in mod._CHECKPOINT_COLUMNS.values()}
            with threadpool_limits(1):
                mod._fill_checkpoints(st, obj, mod.StabilityParams(), rd.hyper, cols)
            out.append(np.stack([cols["sharpness"], cols["hessian_max"]]))
        return out

    for a, b in zip(curvature(old["stability"]), curvature(new_stability), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-9)

    x_welch = series[0]
    t = _best({
        "welch": lambda: sps.welch(x_welch, nperseg=8192, noverlap=4096, detrend="linear"),
        "spectra old": lambda: spectra(old["periods"]),
        "spectra new": lambda: spectra(new_periods),
        "dynamics old": lambda: dynamics(old["diffusion"]),
        "dynamics new": lambda: dynamics(new_diffusion),
        "states old": states_old,
        "states new": states_new,
        "reads old": lambda: reads(old_base.RunData),
        "reads new": reads_new,
        "bursts old": bursts_old,
        "bursts new": bursts_new,
        "curvature old": lambda: curvature(old["stability"]),
        "curvature new": lambda: curvature(new_stability),
    }, args.repeats)  # fmt: skip
    k = len(runs)
    print(f"best of {args.repeats}, CPU milliseconds (old -> new, speed-up):")
    parts = (("three Welch spectra (one run)", "spectra", 1),
             ("diffusion MSD + exponents (one run)", "dynamics", 1),
             (f"stability state reads (per run, {k} runs)", "states", k),
             (f"RunData reads (per run, {len(block)} runs)", "reads", len(block)),
             (f"bursts, four readers (per run, {len(block)})", "bursts", len(block)),
             (f"stability curvature (per run, {k} runs)", "curvature", k))  # fmt: skip
    for label, key, per in parts:
        a, b = t[f"{key} old"] / per * 1e3, t[f"{key} new"] / per * 1e3
        print(f"  {label:<40} {a:8.1f} -> {b:8.1f}   {a / b:5.2f}x")
    print(f"  scipy.signal.welch, one 50,000-step series  {t['welch'] * 1e3:8.1f}")


if __name__ == "__main__":
    main()
