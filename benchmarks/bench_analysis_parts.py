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
  way the analysis reads them.

Each output is checked to agree between the two versions (spectra and MSD to 1e-9 relative,
states bit for bit).

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
        return [new_stability.checkpoint_states(views(r), r) for r in runs]

    for a, b in zip(states_old(), states_new(), strict=True):
        assert a.theta.tobytes() == b.theta.tobytes() and a.v.tobytes() == b.v.tobytes()

    x_welch = series[0]
    t = _best({
        "welch": lambda: sps.welch(x_welch, nperseg=8192, noverlap=4096, detrend="linear"),
        "spectra old": lambda: spectra(old["periods"]),
        "spectra new": lambda: spectra(new_periods),
        "dynamics old": lambda: dynamics(old["diffusion"]),
        "dynamics new": lambda: dynamics(new_diffusion),
        "states old": states_old,
        "states new": states_new,
    }, args.repeats)  # fmt: skip
    k = len(runs)
    print(f"best of {args.repeats}, CPU milliseconds (old -> new, speed-up):")
    parts = (("three Welch spectra (one run)", "spectra", 1),
             ("diffusion MSD + exponents (one run)", "dynamics", 1),
             (f"stability state reads (per run, {k} runs)", "states", k))  # fmt: skip
    for label, key, per in parts:
        a, b = t[f"{key} old"] / per * 1e3, t[f"{key} new"] / per * 1e3
        print(f"  {label:<40} {a:8.1f} -> {b:8.1f}   {a / b:5.2f}x")
    print(f"  scipy.signal.welch, one 50,000-step series  {t['welch'] * 1e3:8.1f}")


if __name__ == "__main__":
    main()
