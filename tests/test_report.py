"""Report tables from synthetic tidy records: escaping, bold best, markers, formats, comparisons."""

import re

import numpy as np
import pandas as pd
import pytest

from lmconv_bench.errors import UserError
from lmconv_bench.records import PER_IMAGE_COLUMNS, RECORD_COLUMNS, RunDir
from lmconv_bench.report import comparisons_for_run, write_report


def _row(**kw):
    base = dict(run_id="r_1", task="mnist_top_half", task_version=1, dataset="mnist", split="test",
                profile="quick", model="lmconv", preset="tiny", n_params=1000, checkpoint_sha256="ab" * 32,
                order="s_curve/0", order_trained=True, trained_coverage=1.0, metric="cond_nll_bpd", value=1.0,
                unit="bits/dim", n=10, stderr=0.1, ci_low=0.8, ci_high=1.2, context="all_observed", seed=0,
                nfe=1.0, wall_s=0.5)
    base.update(kw)
    base.setdefault("model_label", base["model"])  # labels as plain names keep the expected strings short
    base.setdefault("effective_order", base["order"])
    if not base["order_trained"] and "trained_coverage" not in kw:
        base["trained_coverage"] = 0.3
    return base


@pytest.fixture
def run_dir(tmp_path):
    rd = RunDir(tmp_path / "run", {"x": 1}).open({"command": "test"})
    rng = np.random.default_rng(0)
    ids = [str(i) for i in range(12)]
    arms = [("lmconv", "s_curve/0", True, 1.0), ("lmconv", "hilbert/0", False, 1.3), ("pixelcnnpp", "raster/0", True, 1.6)]
    for model, order, trained, level in arms:
        vals = level + 0.05 * rng.standard_normal(len(ids))
        ctx = "preceding_only" if model == "pixelcnnpp" else "all_observed"
        rows = [_row(model=model, order=order, order_trained=trained, value=vals.mean(), context=ctx),
                _row(model=model, order=order, order_trained=trained, metric="test_bpd", value=level - 0.5,
                     context="unconditional"),
                _row(model=model, order=order, order_trained=trained, metric="fid", unit="fid", value=level * 10,
                     stderr=float("nan"))]
        per = [dict(run_id="r_1", task="mnist_top_half", model=model, model_label=model, checkpoint_sha256="ab" * 32,
                    order=order, effective_order=order, context=ctx, metric="cond_nll_bpd", image_id=i, sample=0,
                    value=v) for i, v in zip(ids, vals)]
        rd.save_cell(f"{model}-{order.replace('/', '-')}", rows, per)
    rd.rebuild(comparisons=comparisons_for_run(rd.path))
    return rd.path


def test_records_are_tidy_and_complete(run_dir):
    df = pd.read_csv(run_dir / "records.csv")
    assert list(df.columns) == list(RECORD_COLUMNS) and len(df) == 9
    per = pd.read_csv(run_dir / "per_image.csv")
    assert list(per.columns) == list(PER_IMAGE_COLUMNS) and len(per) == 36


def test_comparisons_use_paired_wilcoxon_against_baseline(run_dir):
    comp = pd.read_csv(run_dir / "comparisons.csv")
    assert set(comp["model_b"]) == {"pixelcnnpp"} and len(comp) == 2
    # lmconv s_curve is lower on every image: Wilcoxon two-sided exact p for n=12 is 2/4096
    row = comp[comp["order_a"] == "s_curve/0"].iloc[0]
    assert row["n"] == 12 and row["p_value"] == pytest.approx(2 / 2**12, rel=1e-6)


def test_latex_tables_escape_everything_and_bold_the_best(run_dir, tmp_path):
    out = write_report([str(run_dir)], "latex", str(tmp_path / "rep"))
    task = (out / "task_mnist_top_half.tex").read_text()
    for f in out.glob("*.tex"):
        text = f.read_text()
        assert not re.search(r"(?<!\\)_", text), f"unescaped underscore in {f.name}"
        assert "\\toprule" in text and "\\bottomrule" in text
    assert "0.30*" in task and "not comparable to published" in task  # coverage of the untrained order
    assert "(untrained, coverage 0.30)" in (out / "test_bpd.tex").read_text()
    bold = re.findall(r"\\textbf\{([^}]*)\}", task)
    assert len(bold) == 2  # best cond_nll and best fid
    assert any(b.startswith("1.0") and "$\\pm$" in b for b in bold)
    assert (out / "comparisons.tex").exists() and (out / "test_bpd.tex").exists()
    assert (out / "cond_nll_per_order.png").stat().st_size > 1000


def test_markdown_and_csv_formats(run_dir, tmp_path):
    md = write_report([str(run_dir)], "markdown", str(tmp_path / "md"))
    text = (md / "test_bpd.md").read_text()
    assert "| lmconv s_curve/0 | **0.500 ± 0.100** |" in text
    comp = pd.read_csv(run_dir / "comparisons.csv")
    assert len(comp) == 2
    comp.iloc[::-1].to_csv(run_dir / "comparisons.csv", index=False)  # rows in the wrong order
    csv = write_report([str(run_dir)], "csv", str(tmp_path / "csv"))
    comp = pd.read_csv(csv / "comparisons.csv")
    assert list(comp["order_a"]) == ["hilbert/0", "s_curve/0"]  # sorted by task, metric, model, order
    assert len(pd.read_csv(csv / "task_mnist_top_half.csv")) == 6


def test_report_refuses_bad_input(tmp_path, run_dir):
    with pytest.raises(UserError, match="records.csv"):
        write_report([str(tmp_path)], "latex", str(tmp_path / "o"))
    with pytest.raises(UserError, match="did you mean"):
        write_report([str(run_dir)], "latx", str(tmp_path / "o"))


def test_run_dir_refuses_other_configuration(tmp_path):
    RunDir(tmp_path / "r", {"a": 1}).open({})
    RunDir(tmp_path / "r", {"a": 1}).open({})  # same config: resumable
    with pytest.raises(UserError, match="different configuration"):
        RunDir(tmp_path / "r", {"a": 2}).open({})
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="not a lmconv-bench run"):
        RunDir(tmp_path / "other", {"a": 1}).open({})
    assert (tmp_path / "other" / "keep.txt").read_text() == "x"


def test_summary_table_contrasts_baseline_ensemble_and_best_single_order():
    from lmconv_bench.report import summary_table

    rows = [_row(order="s_curve/0", value=1.0, stderr=0.05), _row(order="s_curve/1", value=1.2),
            _row(order="hilbert/0", order_trained=False, value=5.0),
            _row(order="ensemble(s_curve)", value=0.9),
            _row(model="pixelcnnpp", order="raster/0", value=1.5),
            _row(task="mnist_center", model="pixelcnnpp", order="raster/0", value=0.7),
            _row(task="mnist_center", order="ensemble(s_curve)", value=0.8)]
    disp, values, best = summary_table(pd.DataFrame(rows))
    # the best single order, not the mean over orders (which any mixture beats by Jensen)
    assert values.loc["mnist_top_half", "cond_nll_bpd: lmconv best single order"] == pytest.approx(1.0)
    assert disp.loc["mnist_top_half", "cond_nll_bpd: lmconv best single order"] == "1.000 ± 0.050"
    assert values.loc["mnist_top_half", "cond_nll_bpd: pixelcnnpp raster/0"] == 1.5
    # best is per task (row), not per column
    assert best.loc["mnist_top_half", "cond_nll_bpd: lmconv ensemble"]
    assert best.loc["mnist_center", "cond_nll_bpd: pixelcnnpp raster/0"]
    assert not best.loc["mnist_center", "cond_nll_bpd: lmconv ensemble"]


def test_summary_is_split_per_dataset_when_the_records_span_several():
    from lmconv_bench.report import summary_tables

    mnist = [_row(model_label="lmconv 468k"), _row(model_label="pixelcnnpp 461k", model="pixelcnnpp", order="raster/0", value=0.9)]
    cifar = [_row(dataset="cifar10", task="cifar10_top_half", model_label="lmconv 469k", value=4.3),
             _row(dataset="cifar10", task="cifar10_top_half", model_label="pixelcnnpp 462k", model="pixelcnnpp",
                  order="raster/0", value=3.9)]
    assert [t["name"] for t in summary_tables(pd.DataFrame(mnist))] == ["summary"]
    tables = {t["name"]: t for t in summary_tables(pd.DataFrame(mnist + cifar))}
    assert set(tables) == {"summary_cifar10", "summary_mnist"}
    # each holds only its dataset's tasks and models: no column of dashes for the other's models
    c = tables["summary_cifar10"]["values"]
    assert list(c.index) == ["cifar10_top_half"] and all("469k" in k or "462k" in k for k in c.columns)
    assert c.notna().all().all()
    assert tables["summary_cifar10"]["best"].loc["cifar10_top_half", "cond_nll_bpd: pixelcnnpp 462k raster/0"]


def test_test_bpd_rows_are_shared_across_datasets_with_the_parameter_counts_in_the_caption():
    from lmconv_bench.report import build_tables

    rows = [_row(dataset=ds, task=f"{ds}_top_half", model_label=f"lmconv-small [s_curve] {k}", metric="test_bpd",
                 value=v, context="unconditional") for ds, k, v in (("mnist", "468k", 1.1), ("cifar10", "469k", 4.3))]
    t = {x["name"]: x for x in build_tables(pd.DataFrame(rows))}["test_bpd"]
    assert list(t["display"].index) == ["lmconv-small [s_curve] s_curve/0"]  # one row, no dashes
    assert t["values"].loc["lmconv-small [s_curve] s_curve/0"].to_dict() == {"cifar10": 4.3, "mnist": 1.1}
    assert "lmconv-small [s_curve]: cifar10 469k, mnist 468k" in t["caption"]
    one = {x["name"]: x for x in build_tables(pd.DataFrame(rows[:1]))}["test_bpd"]
    assert list(one["display"].index) == ["lmconv-small [s_curve] 468k s_curve/0"]  # one dataset: label kept


def test_published_figures_are_shown_only_beside_full_profile_records():
    from lmconv_bench.published import load_published, published_table

    entries = load_published("results/published.yaml")
    assert any(e["model"] == "PixelCNN++" and e["value"] == 2.92 for e in entries)
    assert {2.887, 2.909, 2.762} <= {e["value"] for e in entries if e["model"] == "LMConv"}
    quick = pd.DataFrame([_row(dataset="cifar10", task="cifar10_top_half", metric="test_bpd", order="ensemble(s_curve)",
                               value=4.3, context="unconditional")])
    key = ["model (published)", "order", "metric"]
    t = published_table(quick, entries).set_index(key)
    assert t.loc[("LMConv", "ensemble", "test_bpd"), "ours (full profile)"] == "not comparable (quick profile)"
    assert t.loc[("PixelCNN++", "raster", "test_bpd"), "ours (full profile)"] == "not measured"
    assert t.loc[("LMConv", "ensemble", "cond_nll_bpd"), "ours (full profile)"] == "not measured"
    full = quick.assign(profile="full", stderr=0.01)
    t = published_table(full, entries).set_index(key)
    assert t.loc[("LMConv", "ensemble", "test_bpd"), "ours (full profile)"] == "4.300 ± 0.010"


def test_binned_tables_group_images_by_occluded_fraction():
    from lmconv_bench.report import binned_tables

    rows = []
    for i, frac in enumerate([0.05, 0.12, 0.18, 0.45, 0.47]):
        rows.append(dict(run_id="r", task="t", model="lmconv", model_label="lm", checkpoint_sha256="x", order="s_curve/0",
                         effective_order="s_curve/0", context="all_observed", metric="lpips", image_id=str(i), sample=0,
                         value=frac, occluded_fraction=frac))
    (tab,) = binned_tables(pd.DataFrame(rows), bins=10)
    vals = tab["long"].set_index("bin")["mean"]
    assert vals["0.1-0.2"] == pytest.approx(0.15) and vals["0.4-0.5"] == pytest.approx(0.46) and vals["0.0-0.1"] == 0.05
    assert "0.1-0.2: 2" in tab["caption"]
    one_bin = pd.DataFrame(rows[1:3])
    assert binned_tables(one_bin, bins=10) == []


def test_cost_table_puts_each_value_beside_its_cost():
    """Means over single orders of value, nfe and seconds per image (wall_s / n); ensembles and the
    preceding-only companions of reordered orders are not cells of their own and stay out."""
    from lmconv_bench.report import cost_table

    rows = [
        _row(order="s_curve/0", effective_order="observed_first(s_curve/0)", value=1.0, nfe=1.0, wall_s=2.0, n=10),
        _row(order="s_curve/0", context="preceding_only", value=9.0, nfe=9.0, wall_s=90.0),  # companion
        _row(order="s_curve/0", metric="context_gain_bpd", value=8.0),
        _row(order="s_curve/1", value=3.0, nfe=1.0, wall_s=4.0, n=10),
        _row(order="ensemble(s_curve)", value=0.5, nfe=2.0, wall_s=6.0),
        _row(order="s_curve/0", metric="lpips", unit="lpips", value=0.2, nfe=3.0, wall_s=20.0, n=10),
        _row(model="pixelcnnpp", order="raster/0", metric="lpips", unit="lpips", value=0.4, nfe=1.0, wall_s=5.0,
             n=10, run_id="r_2"),
    ]
    t = cost_table(pd.DataFrame(rows), {"r_1": "cached", "r_2": "naive"})
    d = t["display"].reset_index()
    cond = d[(d["model"] == "lmconv") & (d["metric"] == "cond_nll_bpd")].iloc[0]
    assert (cond["value"], cond["nfe"], cond["seconds per image"], cond["orders"]) == ("2.0000", "1.0", "0.300", "2")
    lp = d[(d["model"] == "lmconv") & (d["metric"] == "lpips")].iloc[0]
    assert (lp["value"], lp["nfe"], lp["seconds per image"], lp["sampler"]) == ("0.2000", "3.0", "2.000", "cached")
    pc = d[d["model"] == "pixelcnnpp"].iloc[0]
    assert (pc["sampler"], pc["seconds per image"]) == ("naive", "0.500")
    assert len(d) == 3
