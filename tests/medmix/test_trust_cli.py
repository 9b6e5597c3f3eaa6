"""User errors on the real command lines: one line ``error: <message>`` naming the file or
option, exit code 2, no traceback (``medmix.cli.run_cli``); bugs keep their traceback (exit 1).
Numeric options are refused by argparse; expert presets are checked against the expert class
before extraction starts (``extractors.presets``); atomic writes honour the umask."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medmix.cli import BUG_LINE, run_cli
from medmix.config import ConfigError
from medmix.io import atomic_path, write_text_atomic

REPO = Path(__file__).resolve().parents[2]


def cli(module: str, *args: str, umask: int | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    pre = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300, preexec_fn=pre)  # fmt: skip


def user_error(proc: subprocess.CompletedProcess) -> str:
    """The one stderr line of a user error (exit 2, no traceback)."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    return lines[0]


def usage_error(proc: subprocess.CompletedProcess) -> str:
    """argparse's usage error: exit 2, no traceback, the last line ``PROG: error: …``."""
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert ": error: argument " in last, proc.stderr
    return last


@pytest.fixture(scope="module")
def cfg_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cfg")
    cfg = yaml.safe_load((REPO / "config.yaml").read_text())
    cfg["results"] = str(d / "results")
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    return d


def _config(cfg_dir: Path, name: str, edit) -> Path:
    cfg = yaml.safe_load((cfg_dir / "config.yaml").read_text())
    edit(cfg)
    path = cfg_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# -- config files ------------------------------------------------------------------------------


def test_config_file_problems(tmp_path: Path, cfg_dir: Path) -> None:
    missing = tmp_path / "nope.yaml"
    line = user_error(cli("medmix.plan", "--config", str(missing)))
    assert line == f"error: config file {missing} not found"
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: {a: [1, 2}\n")
    line = user_error(cli("medmix.plan", "--config", str(bad)))
    assert line.startswith(f"error: config file {bad} is not valid YAML: line 1, column ")
    line = user_error(cli("medmix.plan", "--config", str(tmp_path)))
    assert line == f"error: config file {tmp_path} is not a file"
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    line = user_error(cli("medmix.plan", "--config", str(listed)))
    assert (
        line
        == f"error: config file {listed}: the config must be a mapping (key: value), got a list"
    )
    bad_schema = _config(cfg_dir, "noseeds", lambda c: c.update(seeds=[], methods=["magic"]))
    line = user_error(cli("medmix.plan", "--config", str(bad_schema)))
    assert line.startswith(f"error: config file {bad_schema}: invalid config: ")
    assert "methods.0: 'magic' is not one of" in line and "; seeds: [] should be non-empty" in line


def test_doctor_config_not_found_and_yaml_error(tmp_path: Path) -> None:
    line = user_error(cli("extractors", "doctor", str(tmp_path / "gone.yaml")))
    assert line == f"error: {tmp_path / 'gone.yaml'}: not found"
    bad = tmp_path / "bad.yaml"
    bad.write_text("experts:\n  a: {type: x\n")
    line = user_error(cli("extractors", "doctor", str(bad)))
    assert line.startswith(f"error: {bad}: not valid YAML (line ")


# -- fusion ------------------------------------------------------------------------------------


def test_fusion_train_bad_inputs(cfg_dir: Path) -> None:
    cfg = str(cfg_dir / "config.yaml")
    base = ["train", "--config", cfg, "--dataset", "demo-openi", "--method", "medmix"]
    line = usage_error(cli("fusion", *base, "--seeds", "-5"))
    assert line.endswith("argument --seeds: must be a non-negative integer (>= 0), got -5")
    line = usage_error(cli("fusion", *base, "--threads", "0"))
    assert line.endswith("argument --threads: must be a positive integer (>= 1), got 0")


def test_fusion_evaluate_names_a_truncated_metrics_json(cfg_dir: Path) -> None:
    results = cfg_dir / "results" / "demo-openi" / "runs" / "full" / "medmix"
    (results / "seed0").mkdir(parents=True, exist_ok=True)
    (results / "summary.json").write_text("{}")
    metrics = results / "seed0" / "metrics.json"
    metrics.write_text('{"seed": 0, "splits": {"test": {"macro": {"auroc": 0.7')  # truncated
    out = cfg_dir / "metrics.parquet"
    line = user_error(cli("fusion", "evaluate", "--config", str(cfg_dir / "config.yaml"),
                          "--dataset", "demo-openi", "--out", str(out)))  # fmt: skip
    assert line.startswith(f"error: {metrics}: not valid JSON (")
    assert not out.exists()


def test_fusion_predict_bad_inputs(tmp_path: Path) -> None:
    out = tmp_path / "p.parquet"
    line = user_error(cli("fusion", "predict", "--model", str(tmp_path), "--input",
                          "frontal=x.parquet", "--out", str(out)))  # fmt: skip
    assert line == "error: --input 'frontal=x.parquet': expected MODALITY/EXPERT=CACHE.parquet"
    line = user_error(cli("fusion", "predict", "--model", str(tmp_path / "no-run"), "--input",
                          "a/b=x.parquet", "--out", str(out)))  # fmt: skip
    assert line == f"error: {tmp_path / 'no-run' / 'config.json'}: not found"
    assert not out.exists()


def test_other_fusion_commands(tmp_path: Path, cfg_dir: Path) -> None:
    cfg = str(cfg_dir / "config.yaml")
    line = user_error(cli("fusion.protocols", "list", "--config", cfg, "--dataset", "ghost"))
    assert line.startswith("error: unknown dataset 'ghost'")
    line = usage_error(cli("fusion", "ablation", "train", "--dataset", "d", "--variant", "v",
                           "--out", str(tmp_path), "--seeds", "1", "-1"))  # fmt: skip
    assert line.endswith("argument --seeds: must be a non-negative integer (>= 0), got -1")
    not_parquet = tmp_path / "metrics.parquet"
    not_parquet.write_text("dataset,method\n")
    line = user_error(cli("fusion.render", "tables", "--metrics", str(not_parquet),
                          "--out-dir", str(tmp_path / "t")))  # fmt: skip
    assert str(not_parquet) in line and "Parquet magic bytes not found" in line


# -- extractors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expert", "edit", "message"),
    [
        ("tfidf-svd", lambda e: e["tfidf-svd"].update(n_component=8),
         "experts.tfidf-svd: unknown parameter 'n_component' for expert type 'tfidf-svd'; "
         "accepted: batch_size, device, max_features, min_df, n_components, ngram_range, seed"),
        ("tfidf-svd", lambda e: e["tfidf-svd"].update(n_components=0),
         "experts.tfidf-svd.n_components: must be >= 1, got 0"),
        ("radiomics", lambda e: e["radiomics"].update(glcm_size=12.5),
         "experts.radiomics.glcm_size: must be an integer, got 12.5"),
        ("radiomics", lambda e: e["radiomics"].update(type="no-such-expert"),
         "experts.radiomics.type: 'no-such-expert' is not a registered expert; registered: "),
        # a wrapper's inner preset is checked with it
        ("ct-radiomics", lambda e: e["radiomics"].update(grid=-1),
         "experts.radiomics.grid: must be >= 1, got -1"),
        # a foundation-model expert: its own parameters plus its model-source keys
        ("qwen", lambda e: e.update(qwen={"type": "qwen2", "random_init": True, "max_len": 64}),
         "experts.qwen: unknown parameter 'max_len' for expert type 'qwen2'; accepted: "
         "batch_size, config, device, local_dir, max_chunks, max_length, model_class, model_id"),
        ("qwen", lambda e: e.update(qwen={"type": "qwen2", "random_init": True, "precision": "fp7"}),
         "experts.qwen (type 'qwen2'): precision must be one of"),
    ],
)  # fmt: skip
def test_extract_checks_the_preset_before_any_work(
    cfg_dir: Path, expert: str, edit, message: str
) -> None:
    path = _config(cfg_dir, f"bad-{expert}", lambda c: edit(c["experts"]))
    out = cfg_dir / "never.parquet"
    line = user_error(cli("extractors", "extract", "--config", str(path), "--dataset",
                          "demo-openi", "--modality", "report", "--expert", expert,
                          "--out", str(out)))  # fmt: skip
    assert line.startswith(f"error: {path}: {message}"), line
    assert not out.exists()


def test_extract_bad_config_unknown_expert_and_missing_manifest(cfg_dir: Path) -> None:
    cfg = str(cfg_dir / "config.yaml")
    args = ["extract", "--config", cfg, "--dataset", "demo-openi", "--modality", "report"]
    line = user_error(cli("extractors", "extract", "--config", '{"seeds": [0', "--dataset", "x",
                          "--modality", "m", "--expert", "e"))  # fmt: skip
    assert line.startswith("error: --config: the inline JSON config is not valid JSON (")
    line = user_error(cli("extractors", *args, "--expert", "ghost"))
    assert line.startswith("error: --expert ghost: not a preset of the config's experts: section")
    line = user_error(cli("extractors", *args, "--expert", "minilm"))
    manifest = cfg_dir / "results" / "demo-openi" / "manifest.parquet"
    assert line == f"error: {manifest}: manifest not found"


def test_doctor_reports_a_bad_preset_as_a_fail_line(cfg_dir: Path) -> None:
    path = _config(
        cfg_dir, "doctor-bad", lambda c: c["experts"]["tfidf-svd"].update(n_components=0)
    )
    proc = cli("extractors", "doctor", str(path), "--expert", "tfidf-svd")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "config   FAIL experts.tfidf-svd.n_components: must be >= 1, got 0" in proc.stdout
    assert "0/1 experts ready" in proc.stdout


def test_status_and_rag_inputs_that_do_not_exist(tmp_path: Path) -> None:
    gone = tmp_path / "gone.parquet"
    line = user_error(cli("extractors.status", "--caches", str(gone), "--md",
                          str(tmp_path / "s.md"), "--csv", str(tmp_path / "s.csv")))  # fmt: skip
    assert line == f"error: {gone}: cache not found"
    assert not (tmp_path / "s.md").exists()
    line = user_error(cli("extractors.rag", "show", "--provenance", str(gone), "--sample-id", "s1"))
    assert line == f"error: {gone}: not found"
    line = usage_error(cli("extractors.rag", "index", "--threads", "0"))
    assert line.endswith("argument --threads: must be a positive integer (>= 1), got 0")


# -- cohorts -------------------------------------------------------------------------------------


def test_cohorts_numeric_options(tmp_path: Path) -> None:
    base = ["demo", "--kind", "openi", "--dataset", "d", "--out", str(tmp_path / "o")]
    line = usage_error(cli("cohorts", *base, "--n-patients", "0", "--seed", "1"))
    assert line.endswith("argument --n-patients: must be a positive integer (>= 1), got 0")
    line = usage_error(cli("cohorts", *base, "--n-patients", "5", "--seed", "-3"))
    assert line.endswith("argument --seed: must be a non-negative integer (>= 0), got -3")
    line = usage_error(cli("cohorts", *base, "--n-patients", "many", "--seed", "1"))
    assert line.endswith("argument --n-patients: must be an integer >= 1, got 'many'")
    assert not (tmp_path / "o").exists()


# -- the mechanism itself --------------------------------------------------------------------------


def test_run_cli_sorts_user_errors_from_bugs(capsys: pytest.CaptureFixture[str]) -> None:
    def config_problem(argv: list[str] | None) -> int:
        raise ConfigError("invalid config:\n  seeds: [] should be non-empty\n  d: bad")

    def bug(argv: list[str] | None) -> int:
        return {}["missing"]

    assert run_cli(config_problem, []) == 2
    err = capsys.readouterr().err
    assert err == "error: invalid config: seeds: [] should be non-empty; d: bad\n"
    assert run_cli(bug, []) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "KeyError: 'missing'" in err
    assert err.rstrip().endswith(BUG_LINE)


# -- atomic writes honour the umask --------------------------------------------------------------


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_writes_get_the_umask_mode(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        text = write_text_atomic(tmp_path / "a.txt", "x")
        with atomic_path(tmp_path / "b.bin") as tmp:
            tmp.write_bytes(b"y")
        plain = tmp_path / "plain.txt"
        plain.write_text("z")
    finally:
        os.umask(old)
    assert (text.stat().st_mode & 0o777) == mode == (plain.stat().st_mode & 0o777)
    assert ((tmp_path / "b.bin").stat().st_mode & 0o777) == mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.bin", "plain.txt"]


def test_adapter_outputs_are_readable_by_the_group(tmp_path: Path) -> None:
    """The real command line under umask 027: manifest and summaries 0640, not 0600."""
    root = tmp_path / "c"
    root.mkdir()
    (root / "t.csv").write_text("id,note,y\na,n1,0\nb,n2,1\nc,n3,0\nd,n4,1\n")
    mapping = {"dataset": "u", "table": "t.csv", "task_type": "binary", "id": "id",
               "split": {"ratios": {"train": 0.5, "val": 0.25, "test": 0.25}},
               "modalities": {"note": {"kind": "text", "column": "note"}},
               "labels": {"y": {"column": "y"}}}  # fmt: skip
    (root / "m.yaml").write_text(yaml.safe_dump(mapping))
    out = tmp_path / "out"
    proc = cli(
        "cohorts", "table", "--mapping", str(root / "m.yaml"), "--out", str(out), umask=0o027
    )
    assert proc.returncode == 0, proc.stderr
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes == {"manifest.parquet": 0o640, "summary.csv": 0o640, "summary.md": 0o640}
    assert json.loads(json.dumps(sorted(modes)))  # the three files, nothing hidden left behind
