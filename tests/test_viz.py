"""Figures of elastic_lab.viz: each test builds a figure from small inputs and checks its DATA
against an independent computation (formulas, scipy, brute force)."""
import itertools
import json
import math

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from PIL import Image
from scipy import stats

from elastic_lab import viz
from elastic_lab.distribution_loss import beta_w1, distribution_loss, fit_beta_moments, target_beta
from elastic_lab.viz import traces_of

B_S, B_L, K = 32.0, 96.0, 6.0


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def p_up_formula(s, g, b_s=B_S, b_l=B_L, k=K):
    """P_up written out from method.md §3, independently of the package."""
    m = 2 * k / math.log(b_l / b_s) * (np.log(s) - 0.5 * math.log(b_s * b_l) - g)
    return sigmoid(-m)


def bce(u, p):
    return -(p * np.log(u) + (1 - p) * np.log(1 - u))


def arr(v):
    return np.asarray(v, dtype=np.float64)


def random_sides(n_images, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.exp(torch.empty(int(torch.randint(1, 6, (), generator=g))).uniform_(
        math.log(6), math.log(200), generator=g)) for _ in range(n_images)]


# ------------------------------------------------------------------------ scale loss figures
def test_up_probability_curves_monotone_half_at_geometric_mean_and_boundaries():
    log_gammas = [-0.5, 0.0, 0.7]
    mids = [math.sqrt(B_S * B_L) * math.exp(g) for g in log_gammas]
    sides = np.sort(np.concatenate([np.geomspace(4, 600, 50), mids]))
    fig = viz.up_probability_curves(log_gammas, sides=sides)
    curves, bounds = traces_of(fig, "curve"), traces_of(fig, "boundary")
    assert len(curves) == len(bounds) == 3
    assert fig.layout.xaxis.type == "log"
    for g, mid, curve, bound in zip(log_gammas, mids, curves, bounds, strict=True):
        x, y = arr(curve.x), arr(curve.y)
        assert np.all(np.diff(y) < 0)  # strictly decreasing in side
        np.testing.assert_allclose(y, p_up_formula(x, g), rtol=1e-9)
        assert y[np.argmin(np.abs(x - mid))] == pytest.approx(0.5, abs=1e-9)
        np.testing.assert_allclose(arr(bound.x), [B_S * math.exp(g), B_L * math.exp(g)])
        np.testing.assert_allclose(arr(bound.y), [sigmoid(K), sigmoid(-K)], rtol=1e-9)
    # larger γ -> larger boundaries -> more up-scaling at every side
    assert np.all(arr(curves[2].y) > arr(curves[0].y))


@pytest.mark.parametrize("over,values", [("log_gamma", [-0.6, -0.2, 0.0, 0.3, 0.9]),
                                         ("k", [1.0, 3.0, 6.0, 12.0])])
def test_up_probability_slider_has_one_frame_per_value(over, values):
    sides = np.geomspace(5, 400, 30)
    fig = viz.up_probability_slider(values, over=over, sides=sides)
    assert len(fig.frames) == len(values)
    assert len(fig.layout.sliders[0].steps) == len(values)
    assert [s.args[0][0] for s in fig.layout.sliders[0].steps] == [f.name for f in fig.frames]
    for v, frame in zip(values, fig.frames, strict=True):
        curve = next(t for t in frame.data if t.meta["kind"] == "curve")
        g, k = (v, K) if over == "log_gamma" else (0.0, v)
        np.testing.assert_allclose(arr(curve.y), p_up_formula(sides, g, k=k), rtol=1e-9)
    # the figure's initial data is the first frame
    np.testing.assert_allclose(arr(traces_of(fig, "curve")[0].y), arr(fig.frames[0].data[0].y))
    with pytest.raises(ValueError, match="over"):
        viz.up_probability_slider(values, over="tau")


def test_landscape_u_side_is_bce_with_minimum_at_p_up_and_boundaries_marked():
    u = np.linspace(0.01, 0.99, 197)
    sides = np.geomspace(6, 300, 15)
    g = 0.3
    fig = viz.scale_loss_landscape_u_side(u=u, sides=sides, log_gamma=g)
    heat = traces_of(fig, "loss")[0]
    assert isinstance(heat, go.Heatmap)
    z = arr(heat.z)
    assert z.shape == (u.size, sides.size)
    p = p_up_formula(sides, g)
    np.testing.assert_allclose(z, bce(u[:, None], p[None, :]), rtol=1e-6)
    # in each column the loss is smallest at a grid neighbour of P_up(s) (BCE is convex in u)
    argmin_u = u[np.argmin(z, axis=0)]
    assert np.all(np.abs(argmin_u - np.clip(p, u[0], u[-1])) <= u[1] - u[0] + 1e-12)
    np.testing.assert_allclose(arr(traces_of(fig, "argmin")[0].y), p, rtol=1e-9)
    xs = sorted(t.meta["x"] for t in traces_of(fig, "boundary"))
    np.testing.assert_allclose(xs, [B_S * math.exp(g), B_L * math.exp(g)])
    surface = viz.scale_loss_landscape_u_side(u=u[::20], sides=sides, kind="surface")
    assert isinstance(surface.data[0], go.Surface)
    with pytest.raises(ValueError, match="kind"):
        viz.scale_loss_landscape_u_side(kind="contour")


def test_landscape_u_gamma_columns_and_boundary_gammas():
    side, u, gammas = 48.0, np.linspace(0.05, 0.95, 19), np.geomspace(0.3, 3.0, 11)
    fig = viz.scale_loss_landscape_u_gamma(side, u=u, gammas=gammas)
    z = arr(traces_of(fig, "loss")[0].z)
    assert z.shape == (u.size, gammas.size)
    p = p_up_formula(side, np.log(gammas))
    np.testing.assert_allclose(z, bce(u[:, None], p[None, :]), rtol=1e-6)
    # P_up of a fixed object grows with γ, so the loss at u near 1 falls with γ
    assert np.all(np.diff(z[-1]) < 0)
    xs = sorted(t.meta["x"] for t in traces_of(fig, "boundary"))
    np.testing.assert_allclose(xs, [side / B_L, side / B_S])
    with pytest.raises(ValueError, match="side"):
        viz.scale_loss_landscape_u_gamma(0.0)


def test_gradient_direction_small_pushes_up_large_pushes_down():
    u = np.linspace(0.05, 0.95, 31)
    fig = viz.scale_loss_gradient_direction([8.0, 12.0, 10.0], [250.0, 400.0], u=u)
    grads = {t.meta["image"]: arr(t.y) for t in traces_of(fig, "grad")}
    losses = {t.meta["image"]: arr(t.y) for t in traces_of(fig, "loss")}
    assert np.all(grads["small"] < 0) and np.all(grads["large"] > 0)
    assert np.all(np.diff(losses["small"]) < 0) and np.all(np.diff(losses["large"]) > 0)
    # one bin per image: L = mean_j BCE(u, p_j), dL/du = mean_j (u - p_j) / (u (1 - u))
    p = p_up_formula(np.array([8.0, 12.0, 10.0]), 0.0)
    expected = ((u[:, None] - p[None, :]) / (u * (1 - u))[:, None]).mean(axis=1)
    np.testing.assert_allclose(grads["small"], expected, rtol=1e-6)


def test_gradient_sums_bins_for_mixed_image():
    """A mixed image: one small object outweighs three large ones (bins are summed)."""
    u = np.array([0.3, 0.5, 0.7])
    loss, grad = viz.scale_loss_gradient_on_u(u, [10.0, 300.0, 320.0, 350.0])
    p = p_up_formula(np.array([10.0, 300.0, 320.0, 350.0]), 0.0)
    expected = bce(u, p[0]) + bce(u[:, None], p[None, 1:]).mean(axis=1)
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    d = (u[:, None] - p[None, :]) / (u * (1 - u))[:, None]  # dBCE/du per object
    np.testing.assert_allclose(grad, d[:, 0] + d[:, 1:].mean(axis=1), rtol=1e-6, atol=1e-9)
    assert grad[1] == pytest.approx(0.0, abs=0.05)  # two bins pull equally: balance at 1/2


# ---------------------------------------------------------------- distribution loss figures
def test_beta_target_pdfs_integrate_to_one_and_mean_follows_small_loss():
    examples = {"small hard": [0.9, 0.5, 0.3], "even": [0.5, 0.5, 0.5],
                "large hard": [0.3, 0.5, 0.9]}
    x = np.linspace(0.0, 1.0, 4001)
    fig = viz.beta_target_from_losses(examples, x=x)
    pdfs = traces_of(fig, "pdf")
    assert len(pdfs) == 3
    for t, ema in zip(pdfs, examples.values(), strict=True):
        assert np.trapezoid(arr(t.y), arr(t.x)) == pytest.approx(1.0, abs=1e-3)
        a, b = target_beta(ema)
        assert (t.meta["alpha"], t.meta["beta"]) == pytest.approx((a, b))
        np.testing.assert_allclose(arr(t.y), stats.beta.pdf(x, a, b))
    means = [t.meta["mean"] for t in pdfs]
    assert means[0] > 0.5 == pytest.approx(means[1]) and means[2] < 0.5
    assert [t.x[0] for t in traces_of(fig, "mean")] == pytest.approx(means)
    with pytest.raises(ValueError, match="triple"):
        viz.beta_target_from_losses([])


@pytest.mark.parametrize("ema", [[0.9, 0.6, 0.3], [0.3, 0.6, 0.9]])
def test_w1_gamma_minimum_marker_at_argmin_of_distribution_loss(ema):
    sides = random_sides(24, seed=3)
    gammas = np.geomspace(0.3, 3.0, 25)
    fig = viz.w1_landscape_gamma(sides, ema, gammas=gammas, current_gamma=1.0)
    expected = np.array([float(distribution_loss(sides, torch.tensor(math.log(g)), ema))
                         for g in gammas])
    curve = traces_of(fig, "w1")[0]
    np.testing.assert_allclose(arr(curve.y), expected, rtol=1e-5, atol=1e-7)
    (marker,) = traces_of(fig, "minimum")
    assert marker.x[0] == pytest.approx(gammas[np.argmin(expected)])
    assert marker.y[0] == pytest.approx(expected.min(), rel=1e-5)
    assert traces_of(fig, "current")[0].y[0] == pytest.approx(
        float(distribution_loss(sides, torch.tensor(0.0), ema)), rel=1e-5)


def test_w1_gamma_minimum_moves_with_which_bin_is_harder():
    sides = random_sides(32, seed=5)
    best = {}
    for name, ema in (("small", [0.9, 0.6, 0.3]), ("large", [0.3, 0.6, 0.9])):
        fig = viz.w1_landscape_gamma(sides, ema, gammas=np.geomspace(0.2, 5.0, 41))
        best[name] = traces_of(fig, "minimum")[0].meta["gamma"]
    assert best["small"] > best["large"]  # harder small objects ask for larger boundaries


def test_w1_alpha_beta_grid_zero_at_true_parameters():
    n = 200
    samples = stats.beta.ppf((np.arange(n) + 0.5) / n, 2.0, 5.0)  # exact quantiles of Beta(2, 5)
    alphas, betas = np.array([1.0, 2.0, 3.0, 4.0]), np.array([3.0, 5.0, 7.0])
    fig = viz.w1_landscape_alpha_beta(samples, alphas, betas)
    z = arr(traces_of(fig, "w1")[0].z)
    assert z.shape == (betas.size, alphas.size)
    for (j, b), (i, a) in itertools.product(enumerate(betas), enumerate(alphas)):
        assert z[j, i] == pytest.approx(float(beta_w1(torch.tensor(samples), a, b)), abs=1e-12)
    (marker,) = traces_of(fig, "minimum")
    assert (marker.x[0], marker.y[0]) == (2.0, 5.0) and z.min() < 1e-12
    # the quantile form agrees with scipy's empirical W1 against many Beta draws
    draws = stats.beta.rvs(3.0, 7.0, size=20000, random_state=np.random.default_rng(0))
    assert z[2, 2] == pytest.approx(stats.wasserstein_distance(samples, draws), abs=3e-3)
    (fit,) = traces_of(fig, "fit")
    assert (fit.x[0], fit.y[0]) == pytest.approx(fit_beta_moments(torch.tensor(samples)))


def _rows(n=30):
    rows = []
    for i in range(n):
        rows.append({"step": 10 * (i + 1), "loss": 2.0 - 0.01 * i, "u_beta_alpha": 1.0 + 0.1 * i,
                     "u_beta_beta": 2.0, "target_alpha": 6.0, "target_beta": 2.0})
    rows[3]["u_beta_alpha"] = float("nan")  # a step where no Beta has the moments
    if n > 5:
        del rows[5]["target_alpha"]  # e.g. before the EMA saw a bin
    return rows


def test_beta_fit_vs_target_frames_and_densities():
    rows = _rows()
    fig = viz.beta_fit_vs_target(rows, num_frames=6)
    valid = [r for i, r in enumerate(rows) if i not in (3, 5)]
    assert len(fig.frames) == len(fig.layout.sliders[0].steps) == 6
    steps = [f.data[0].meta["step"] for f in fig.frames]
    assert steps[0] == valid[0]["step"] and steps[-1] == valid[-1]["step"]
    assert steps == sorted(set(steps))
    by_step = {r["step"]: r for r in valid}
    for frame in fig.frames:
        fit, target = frame.data
        r = by_step[fit.meta["step"]]
        np.testing.assert_allclose(arr(fit.y), stats.beta.pdf(arr(fit.x), r["u_beta_alpha"],
                                                              r["u_beta_beta"]))
        np.testing.assert_allclose(arr(target.y), stats.beta.pdf(arr(target.x), 6.0, 2.0))
    assert len(viz.beta_fit_vs_target(valid[:3], num_frames=8).frames) == 3
    with pytest.raises(ValueError, match="target_alpha"):
        viz.beta_fit_vs_target([{"step": 1, "loss": 1.0}])


# --------------------------------------------------------------------- metrics and curves
def test_load_metrics_round_trip_and_errors_name_file_and_line(tmp_path):
    rows = _rows(4)
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    loaded = viz.load_metrics(path)
    assert len(loaded) == 4 and math.isnan(loaded[3]["u_beta_alpha"])
    assert loaded[0] == rows[0]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + '{"step": 2, "loss": \n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: malformed JSON"):
        viz.load_metrics(bad)
    bad.write_text("[1, 2]\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: expected a JSON object"):
        viz.load_metrics(bad)
    with pytest.raises(FileNotFoundError):
        viz.load_metrics(tmp_path / "missing.jsonl")


def test_training_curves_one_trace_per_run_and_present_key():
    elastic = [{"step": s, "loss": 1.0 / s, "loss_dist": 0.1 * s, "phi_mean": 1.0}
               for s in (1, 2, 3)]
    fixed = [{"step": s, "loss": 2.0 / s, "phi_mean": 1.0} for s in (1, 2)]
    fig = viz.training_curves({"elastic": elastic, "fixed": fixed},
                              keys=("loss", "loss_dist", "phi_mean"))
    curves = {(t.meta["run"], t.meta["key"]): t for t in traces_of(fig, "curve")}
    assert set(curves) == {("elastic", "loss"), ("elastic", "loss_dist"), ("elastic", "phi_mean"),
                           ("fixed", "loss"), ("fixed", "phi_mean")}
    assert list(curves["fixed", "loss"].y) == [2.0, 1.0]
    assert list(curves["elastic", "loss_dist"].x) == [1, 2, 3]
    assert sum(bool(t.showlegend) for t in fig.data) == 2  # one legend entry per run
    assert curves["elastic", "phi_mean"].yaxis == "y3"  # third subplot


# ------------------------------------------------------------------------- result figures
def test_phi_vs_object_size_title_carries_scipy_spearman():
    rng = np.random.default_rng(0)
    sides = np.exp(rng.uniform(2, 5, 40))
    phis = 1.5 - 0.2 * np.log(sides) + rng.normal(0, 0.1, 40)
    fig = viz.phi_vs_object_size(sides, phis)
    rho = stats.spearmanr(sides, phis).statistic
    assert f"ρ = {rho:.3f}" in fig.layout.title.text and rho < 0
    assert fig.layout.meta["spearman"] == pytest.approx(rho)
    assert fig.layout.xaxis.type == "log"
    assert "ρ = 0.500" in viz.phi_vs_object_size(sides, phis, spearman=0.5).layout.title.text
    with pytest.raises(ValueError, match="same length"):
        viz.phi_vs_object_size([1.0, 2.0], [1.0])


def test_pareto_front_is_exactly_the_non_dominated_points():
    rng = np.random.default_rng(1)
    points = [{"name": ["fixed", "multiscale", "elastic"][i % 3], "ap": float(rng.integers(0, 8)),
               "gflops": float(rng.integers(1, 10)), "ms": float(rng.uniform(5, 50)),
               "label": f"p{i}"} for i in range(40)]
    for x in ("gflops", "ms"):
        fig = viz.pareto_figure(points, x=x)
        (front,) = traces_of(fig, "front")
        dominated = {i for i, p in enumerate(points) for q in points
                     if q[x] <= p[x] and q["ap"] >= p["ap"] and (q[x] < p[x] or q["ap"] > p["ap"])}
        assert set(front.meta["indices"]) == set(range(len(points))) - dominated
        assert list(front.x) == sorted(front.x)
        methods = traces_of(fig, "method")
        assert sorted(i for t in methods for i in t.meta["indices"]) == list(range(40))
    with pytest.raises(ValueError, match=r"points\[0\].*gflops"):
        viz.pareto_figure([{"name": "a", "ap": 0.1}])


def test_scale_sweep_figure_rows_and_predicted_line():
    sweep = {"phi": [0.5, 1.0, 1.5], "num_detections": [1, 3, 4], "mean_score": [0.2, 0.5, 0.6],
             "gflops": [1.2, 4.8, 10.8]}
    fig = viz.scale_sweep_figure(sweep, predicted_phi=1.2)
    series = {t.meta["key"]: t for t in traces_of(fig, "series")}
    assert set(series) == {"num_detections", "mean_score", "gflops"}
    assert list(series["gflops"].y) == [1.2, 4.8, 10.8]
    assert {t.meta["x"] for t in traces_of(fig, "predicted")} == {1.2}
    assert len(traces_of(fig, "predicted")) == 3
    with pytest.raises(ValueError, match="mean_score"):
        viz.scale_sweep_figure({"phi": [1.0, 2.0], "mean_score": [0.1]})


def test_detections_figure_boxes_as_shapes_on_the_image():
    img = np.zeros((48, 64, 3), dtype=np.float32)
    img[..., 0] = 1.0
    boxes = [[1.0, 2.0, 30.0, 40.0], [10.0, 5.0, 60.0, 20.0]]
    pil = Image.fromarray((img * 255).astype(np.uint8))
    for image in (img, torch.from_numpy(img).permute(2, 0, 1), pil):
        fig = viz.detections_figure(image, boxes, ["ring", "disc"], [0.91, 0.4])
        z = arr(fig.data[0].z)
        assert z.shape == (48, 64, 3) and z[0, 0, 0] == 255 and z[0, 0, 1] == 0
        shapes = fig.layout.shapes
        assert [[s.x0, s.y0, s.x1, s.y1] for s in shapes] == boxes
        assert [a.text for a in fig.layout.annotations] == ["ring 0.91", "disc 0.40"]
        assert shapes[0].line.color != shapes[1].line.color
    with pytest.raises(ValueError, match="2 boxes, 1 labels"):
        viz.detections_figure(img, boxes, ["ring"])


def test_phi_size_comparison_spearman_per_run_and_empty_images_left_out():
    rng = np.random.default_rng(2)
    sides = np.exp(rng.uniform(2, 5, 30))
    sides[[4, 9]] = np.nan  # images without objects
    elastic = 1.6 - 0.2 * np.log(np.nan_to_num(sides, nan=50.0)) + rng.normal(0, 0.05, 30)
    ablation = rng.uniform(0.9, 1.1, 30)
    fig = viz.phi_size_comparison({"elastic": (sides, elastic), "no scale loss":
                                   (sides, ablation), "constant": (sides, np.ones(30))})
    runs = {t.meta["run"]: t for t in traces_of(fig, "images")}
    keep = np.isfinite(sides)
    for name, phis in (("elastic", elastic), ("no scale loss", ablation)):
        np.testing.assert_allclose(arr(runs[name].x), sides[keep])
        np.testing.assert_allclose(arr(runs[name].y), phis[keep])
        rho = stats.spearmanr(sides[keep], phis[keep]).statistic
        assert runs[name].meta["spearman"] == pytest.approx(rho)
        assert f"ρ = {rho:.2f}" in runs[name].name
    assert runs["elastic"].meta["spearman"] < -0.8
    assert math.isnan(runs["constant"].meta["spearman"])  # constant φ: no rank correlation
    with pytest.raises(ValueError, match="'bad'"):
        viz.phi_size_comparison({"bad": ([1.0, 2.0], [1.0])})


def test_ap_by_size_figure_bars_are_the_metrics():
    metrics = {"fixed": {"AP": 0.2, "AP50": 0.4, "APs": 0.05, "APm": 0.25, "APl": 0.3},
               "elastic": {"AP": 0.25, "AP50": 0.45, "APs": 0.1, "APm": 0.3, "APl": 0.31,
                           "gflops_per_image": 3.0}}
    fig = viz.ap_by_size_figure(metrics)
    bars = {t.meta["run"]: t for t in traces_of(fig, "bars")}
    assert list(bars) == ["fixed", "elastic"] and fig.layout.barmode == "group"
    for name, m in metrics.items():
        assert list(bars[name].x) == ["AP", "AP50", "APs", "APm", "APl"]
        assert list(bars[name].y) == [m[k] for k in bars[name].x]
    assert list(viz.ap_by_size_figure(metrics, keys=("APs",)).data[1].y) == [0.1]
    with pytest.raises(ValueError, match=r"'fixed'.*APl"):
        viz.ap_by_size_figure({"fixed": {"AP": 0.1, "AP50": 0.2, "APs": 0, "APm": 0}})


def test_scale_sweeps_figure_marks_best_and_interpolated_predicted_phi():
    sweeps = {"tiny": {"phi": [0.5, 1.0, 1.5], "mean_score": [0.1, 0.3, 0.5]},
              "large": {"phi": [0.5, 1.0, 1.5], "mean_score": [0.6, 0.6, 0.2]},
              "flat": {"phi": [0.5, 1.0], "mean_score": [0.0, 0.0]}}
    fig = viz.scale_sweeps_figure(sweeps, predicted={"tiny": 1.25, "large": 0.75})
    lines = {t.meta["image"]: t for t in traces_of(fig, "sweep")}
    assert list(lines["tiny"].y) == [0.1, 0.3, 0.5]
    best = {t.meta["image"]: t for t in traces_of(fig, "best")}
    assert {k: t.meta["phi"] for k, t in best.items()} == {"tiny": 1.5, "large": 0.5,
                                                           "flat": 0.5}  # ties: cheapest φ
    assert best["large"].y[0] == 0.6
    pred = {t.meta["image"]: t for t in traces_of(fig, "predicted")}
    assert set(pred) == {"tiny", "large"}  # "flat" has no prediction
    assert pred["tiny"].x[0] == 1.25 and pred["tiny"].y[0] == pytest.approx(0.4)
    assert pred["large"].y[0] == pytest.approx(0.6)
    with pytest.raises(ValueError, match="increasing"):
        viz.scale_sweeps_figure({"a": {"phi": [1.0, 0.5], "mean_score": [0.1, 0.2]}})
    with pytest.raises(ValueError, match="'recall'"):
        viz.scale_sweeps_figure(sweeps, key="recall")


def _decode_source(uri):
    import base64
    import io
    assert uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_dota_objects_figure_polygons_and_enclosing_horizontal_boxes():
    from elastic_lab.data.dota import DotaObject
    objects = [DotaObject((10, 20, 60, 10, 70, 40, 20, 50), "plane"),
               DotaObject((100, 100, 140, 100, 140, 130, 100, 130), "ship", difficult=1),
               DotaObject((200, 50, 220, 60, 210, 80, 190, 70), "plane")]
    image = Image.new("RGB", (800, 400), (40, 90, 40))
    fig = viz.dota_objects_figure(image, objects, max_side=400)  # displayed at half size
    shown = _decode_source(fig.data[0].source)
    assert shown.size == (400, 200) and fig.data[0].meta["display_scale"] == 0.5
    polys = {t.meta["category"]: t for t in traces_of(fig, "polygons")}
    boxes = {t.meta["category"]: t for t in traces_of(fig, "hboxes")}
    assert polys["plane"].meta["count"] == 2 and polys["ship"].meta["difficult"] == 1
    # two closed quadrilaterals: 4 corners + the first again + a None separator each
    xs = list(polys["plane"].x)
    assert len(xs) == 12 and xs[5] is None and xs[11] is None
    np.testing.assert_allclose(xs[:5], np.array([10, 60, 70, 20, 10]) * 0.5)
    np.testing.assert_allclose(list(polys["plane"].y)[6:11], np.array([50, 60, 80, 70, 50]) * 0.5)
    bx, by = list(boxes["plane"].x), list(boxes["plane"].y)
    np.testing.assert_allclose(bx[:5], np.array([10, 70, 70, 10, 10]) * 0.5)  # min/max of x
    np.testing.assert_allclose(by[:5], np.array([10, 10, 50, 50, 10]) * 0.5)  # min/max of y
    assert len(traces_of(viz.dota_objects_figure(image, objects, show_hboxes=False),
                         "hboxes")) == 0
    small = viz.dota_objects_figure(np.zeros((50, 60, 3), np.uint8), objects[:1])
    assert small.data[0].meta["display_scale"] == 1.0  # never upscaled


def test_patch_values_figure_centres_values_and_outlines():
    patches = [{"x": 0, "y": 0, "width": 256, "height": 256},
               {"x": 192, "y": 0, "width": 256, "height": 256},
               {"x": 0, "y": 192, "width": 256, "height": 200}]
    values = [0.7, 1.2, 1.45]
    fig = viz.patch_values_figure(np.zeros((392, 448, 3), np.uint8), patches, values,
                                  max_side=224)
    (marks,) = traces_of(fig, "patch_values")
    np.testing.assert_allclose(list(marks.x), [64.0, 160.0, 64.0])  # centres, at scale 0.5
    np.testing.assert_allclose(list(marks.y), [64.0, 64.0, 146.0])
    assert list(marks.marker.color) == values and list(marks.text) == ["0.70", "1.20", "1.45"]
    (outlines,) = traces_of(fig, "outlines")
    xs = list(outlines.x)
    np.testing.assert_allclose(xs[6:11], [96, 224, 224, 96, 96])
    assert "0.70–1.45" in fig.layout.title.text
    counts = viz.patch_values_figure(np.zeros((392, 448, 3), np.uint8), patches, [3, 0, 12],
                                     name="objects", fmt=".0f")
    assert list(traces_of(counts, "patch_values")[0].text) == ["3", "0", "12"]
    assert "objects per patch (range 0–12)" in counts.layout.title.text
    with pytest.raises(ValueError, match="3 patches, 2 values"):
        viz.patch_values_figure(np.zeros((8, 8, 3), np.uint8), patches, values[:2])
    with pytest.raises(ValueError, match=r"patches\[0\]: missing 'height'"):
        viz.patch_values_figure(np.zeros((8, 8, 3), np.uint8), [{"x": 0, "y": 0, "width": 1}],
                                [1.0])
