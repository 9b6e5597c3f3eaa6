"""``python -m extractors doctor``: packages, weights and device per configured expert, without
downloading or loading anything; config/paper.yaml's experts are all registered and buildable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from extractors.__main__ import main as cli
from extractors.doctor import run_doctor
from tests.fm_helpers import TINY_BERT, gpu_available

REPO = Path(__file__).resolve().parents[2]
REV = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def hub(tmp_path: Path, monkeypatch) -> Path:
    """An offline hub cache holding one snapshot (org/present at REV)."""
    home = tmp_path / "hf"
    snap = home / "hub" / "models--org--present" / "snapshots" / REV
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (snap / "model.safetensors").write_bytes(b"x")
    (home / "hub" / "models--org--present" / "refs").mkdir()
    (home / "hub" / "models--org--present" / "refs" / "main").write_text(REV)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def _config(tmp_path: Path, experts: dict) -> Path:
    cfg = {
        "datasets": {
            "d": {
                "adapter": "demo",
                "demo": {"kind": "openi"},
                "modalities": {"report": list(experts)[:1]},
            }
        },
        "experts": experts,
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_doctor_reports_each_check(hub: Path, tmp_path: Path, capsys) -> None:
    local = tmp_path / "local"
    local.mkdir()
    (local / "model.safetensors").write_bytes(b"x")
    path = _config(
        tmp_path,
        {
            "present": {"type": "gatortron", "model_id": "org/present", "revision": REV},
            "absent": {"type": "gatortron", "model_id": "org/absent"},
            "local": {"type": "qwen2", "local_dir": str(local)},
            "tiny": {"type": "gatortron", "random_init": True, "config": TINY_BERT},
            "gpu": {"type": "minilm", "device": "cuda:3"},
            "remote": {"type": "hf-text", "model_id": "org/present", "trust_remote_code": True},
            "broken": {"type": "no-such-expert"},
            "radiomics": {"type": "texture-glcm-lbp"},
        },
    )
    report = {e.name: e for e in run_doctor(path).experts}
    assert report["present"].ready and report["present"].checks["weights"].state == "ok"
    assert REV in report["present"].checks["weights"].detail
    absent = report["absent"].checks["weights"]
    assert absent.state == "FAIL" and "org/absent" in absent.detail
    assert "local_dir" not in absent.detail and report["absent"].download == "org/absent"
    assert report["present"].checks["pin"].state == "ok"
    assert report["absent"].checks["pin"].state == "UNPINNED" and report["absent"].unpinned
    assert "pin" not in report["tiny"].checks and "pin" not in report["local"].checks
    assert report["local"].checks["weights"].state == "ok"
    assert report["tiny"].ready and report["tiny"].checks["weights"].state == "warn"  # CI stand-in
    if not gpu_available():
        assert (
            report["gpu"].checks["device"].state == "FAIL"
            and "cuda:3" in report["gpu"].checks["device"].detail
        )
    assert (
        report["remote"].checks["weights"].state == "FAIL"
        and "pinned" in report["remote"].checks["weights"].detail
    )
    assert (
        not report["broken"].ready and "no-such-expert" in report["broken"].checks["config"].detail
    )
    assert report["radiomics"].ready
    assert cli(["doctor", str(path), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ready"] is False and out["config_valid"]["state"] == "ok"
    assert {e["name"] for e in out["experts"]} >= {"present", "absent", "tiny"}
    assert cli(["doctor", str(path), "--expert", "tiny", "--expert", "radiomics"]) == 0
    assert "2/2 experts ready" in capsys.readouterr().out


def test_paper_config_experts_are_registered_and_buildable(hub: Path) -> None:
    report = run_doctor(REPO / "config" / "paper.yaml")
    cfg = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    chain = ["rag/knowledge", "rag/query_encoder", "rag/article_encoder", "rag/llm",
             "rag/bridge/image", "rag/bridge/volume", "rag/bridge/slide"]  # fmt: skip
    assert {e.name for e in report.experts} == (set(cfg["experts"]) - {"rag"}) | set(chain)
    for e in report.experts:
        assert "config" not in e.checks, f"{e.name}: {e.checks.get('config')}"
        if not e.name.startswith("rag/"):
            assert set(e.checks) - {"pin"} == {"packages", "weights", "device"}
            assert ("pin" in e.checks) == (e.name != "radfm")  # radfm: a local checkpoint
    rag = {e.name: e for e in report.experts if e.name.startswith("rag/")}
    # the paper's chain: real MedCPT / Qwen2 / MAIRA-2 / Merlin weights, none on this machine
    assert rag["rag/query_encoder"].model == "ncbi/MedCPT-Query-Encoder"
    assert rag["rag/llm"].model == "Qwen/Qwen2-0.5B"
    assert rag["rag/bridge/image"].type == "maira2" and rag["rag/bridge/volume"].type == "merlin"
    for name in ("rag/knowledge", "rag/llm", "rag/bridge/image", "rag/bridge/slide"):
        assert not rag[name].ready, name  # absent source, weights, HistGen checkout
    assert "not found" in rag["rag/bridge/slide"].checks["weights"].detail
    used = {
        n for ds in cfg["datasets"].values() for names in ds["modalities"].values() for n in names
    }
    used |= {n for ds in cfg["datasets"].values() for n in ds.get("teachers", {}).values()}
    assert used <= set(cfg["experts"])
    kinds = {e.name: e.kind for e in report.experts}
    assert kinds["merlin"] == kinds["radfm"] == kinds["ct-dinov2-b"] == "volume"
    assert kinds["wsi-biomedclip"] == "slide" and kinds["chronos-l"] == "timeseries"


def test_doctor_checks_the_demo_rag_chain() -> None:
    """The demo's RAG chain: the packaged knowledge base is there, the tiny randomly
    initialised encoders are flagged as CI stand-ins (warn), the offline bridges need nothing."""
    report = run_doctor(REPO / "config.yaml", only=["rag"])
    names = [e.name for e in report.experts]
    assert names == ["rag/knowledge", "rag/query_encoder", "rag/article_encoder", "rag/llm"]
    by = {e.name: e for e in report.experts}
    assert by["rag/knowledge"].checks["source"].state == "ok"
    for name in names[1:]:
        assert by[name].checks["weights"].state == "warn", by[name].checks
        assert by[name].ready


def _paper_with_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_paper_config_pins_every_model_it_can(tmp_path: Path, monkeypatch) -> None:
    """Every hub model of config/paper.yaml is pinned to a 40-hex commit, except the few
    whose published commit was not found; those stay `revision: null` and the doctor flags
    each of them UNPINNED."""
    _paper_with_cache(tmp_path, monkeypatch)
    cfg = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    hub = {n: s for n, s in cfg["experts"].items() if "model_id" in s}
    unpinned = {n for n, s in hub.items() if s.get("revision") is None}
    assert unpinned == {"moirai", "chronos-l", "merlin"}
    for name, spec in hub.items():
        rev = spec.get("revision")
        assert rev is None or (len(rev) == 40 and set(rev) <= set("0123456789abcdef")), name
    report = run_doctor(REPO / "config" / "paper.yaml")
    flagged = set(report.unpinned)
    # the experts themselves, the tile/slice experts over them, and the RAG chain's Merlin bridge
    assert {"moirai", "chronos-l", "merlin", "rag/bridge/volume"} == flagged
    for e in report.experts:
        if e.name in flagged:
            assert e.checks["pin"].state == "UNPINNED" and "null" in e.checks["pin"].detail
        elif "pin" in e.checks:
            assert e.checks["pin"].state == "ok", e.name
    for name in ("biomedclip", "ct-dinov2-b", "wsi-dinov3-l", "rag/query_encoder", "minilm"):
        assert next(e for e in report.experts if e.name == name).checks["pin"].state == "ok"


def test_doctor_output_flags_unpinned_and_prints_how_to_once(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    _paper_with_cache(tmp_path, monkeypatch)
    assert cli(["doctor", str(REPO / "config" / "paper.yaml")]) == 1
    out = capsys.readouterr().out
    lines = out.splitlines()
    pin_lines = [ln for ln in lines if ln.strip().startswith("pin ") and "UNPINNED" in ln]
    assert len(pin_lines) == 4  # one status line per unpinned model
    assert sum("** UNPINNED **" in ln for ln in lines) == 4
    assert "UNPINNED: 4 of " in out and "moirai, chronos-l, merlin" in out
    # the three ways to provide the weights: once, at the end, with each missing download
    assert out.count("in one of three ways") == 1 and out.count("random_init: true") == 1
    assert out.count("Provide the weights") == 0
    assert (
        "hf download facebook/dinov2-base --revision f9e44c814b77203eaa57a6bdbbd535f21ede1415"
        in out
    )
    assert "hf download amazon/chronos-t5-large\n" in out
    assert out.index("in one of three ways") > out.index("[NOT READY] wsi-dinov3-l")
    # pinned or not, weights present or not: an unpinned model with its weights is still flagged
    assert cli(["doctor", str(REPO / "config" / "paper.yaml"), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert set(data["unpinned"]) == {"moirai", "chronos-l", "merlin", "rag/bridge/volume"}
    assert len(data["how_to_provide"]) > 3


def test_unpinned_model_with_weights_present_is_flagged(hub: Path, tmp_path: Path) -> None:
    path = _config(tmp_path, {"cached": {"type": "gatortron", "model_id": "org/present"}})
    (rep,) = run_doctor(path).experts
    assert rep.checks["weights"].state == "warn"  # found, at an unpinned revision
    assert rep.checks["pin"].state == "UNPINNED" and rep.unpinned and rep.download is None


def test_missing_package_suggests_the_project_extra(monkeypatch) -> None:
    from extractors import doctor
    from extractors.experts.fm_common import install_hint, missing_package

    pip = "pip install -c envs/constraints.txt"  # the versions the tests ran with
    assert install_hint(["torchvision", "open_clip_torch"]) == f'`{pip} -e ".[vision]"`'
    assert install_hint(["chronos-forecasting"]) == f'`{pip} -e ".[fm]"`'
    assert f"{pip} --no-deps uni2ts==2.0.0" in install_hint(["uni2ts", "jaxtyping"])
    assert '-e ".[moirai]"' in install_hint(["uni2ts", "jaxtyping"])
    assert install_hint(["torch"]) == f"`{pip} -e .`"  # a core dependency
    assert '-e ".[vision]"' in str(missing_package("m", "merlin", "merlin-vlm"))

    class Fake:
        inner = None

        def missing_imports(self) -> list[str]:
            return ["torchvision", "timm"]

    check = doctor.check_packages(Fake())
    assert check.state == "FAIL" and f'`{pip} -e ".[vision]"`' in check.detail
    assert "pip install torchvision" not in check.detail


# -- the paper systems section ------------------------------------------------------------------

PAPER_SYSTEMS = {
    "maira-2": (["rag/bridge/image"], "microsoft/maira-2"),
    "merlin-ct-encoder": (["merlin"], "stanfordmimi/Merlin"),
    "merlin-ct-report-bridge": (["rag/bridge/volume"], "stanfordmimi/Merlin"),
    "histgen": (["rag/bridge/slide"], "repo_dir="),
    "radfm": (["radfm"], "does not exist"),
    "onellm": ([], "OneLLM weights"),
    "dinov3-vit-l": (["dinov3-l", "wsi-dinov3-l"], "facebook/dinov3-vitl16-pretrain-lvd1689m"),
    "qwen2-7b": (["qwen2-7b"], "Qwen/Qwen2-7B"),
    "chronos-l": (["chronos-l"], "amazon/chronos-t5-large"),
}


def test_paper_systems_are_not_ready_without_weights(tmp_path: Path, monkeypatch, capsys) -> None:
    """config/paper.yaml on a machine without weights: every system of the paper that is tested
    here only on tiny models has a NOT READY line with the reason and its readiness section."""
    _paper_with_cache(tmp_path, monkeypatch)
    monkeypatch.delenv("MEDMIX_ONELLM_WEIGHTS", raising=False)
    cfg = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    onellm = [n for n, s in cfg["experts"].items() if s.get("type") == "onellm"]
    expected = {**PAPER_SYSTEMS, "onellm": (onellm, PAPER_SYSTEMS["onellm"][1])}
    report = run_doctor(REPO / "config" / "paper.yaml")
    systems = {s.system: s for s in report.paper_systems}
    assert set(systems) == set(PAPER_SYSTEMS)
    for e in report.experts:  # the bridges' imports are checked too (all installed here)
        if e.name.startswith("rag/bridge/"):
            assert "packages" in e.checks, e.name
    readiness = (REPO / "docs" / "readiness.md").read_text()
    headings = {
        "-".join(ln[3:].strip().lower().split()) for ln in readiness.splitlines() if ln[:3] == "## "
    }
    for key, (components, reason) in expected.items():
        s = systems[key]
        assert s.state == "NOT READY" and s.components == components, (key, s)
        assert any(reason in r for r in s.reasons), (key, s.reasons)
        assert s.readiness == f"docs/readiness.md#{key}" and key in headings, key
    # qwen2-05b and chronos-s are students of the same expert types, not the large teachers
    assert "qwen2-05b" not in systems["qwen2-7b"].components
    assert cli(["doctor", str(REPO / "config" / "paper.yaml")]) == 1
    out = capsys.readouterr().out
    section = out[out.index("Paper systems") :]
    for title in ("MAIRA-2", "Merlin", "HistGen", "RadFM", "OneLLM", "DINOv3 ViT-L", "Qwen2-7B"):
        assert f"[NOT READY] {title} (" in section, title
    assert section.count("docs/readiness.md#") == len(PAPER_SYSTEMS)
    assert "0/9 paper systems ready" in section
    assert cli(["doctor", str(REPO / "config" / "paper.yaml"), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    by = {s["system"]: s for s in data["paper_systems"]}
    assert set(by) == set(PAPER_SYSTEMS) and {s["state"] for s in by.values()} == {"NOT READY"}
    assert by["histgen"]["reasons"] and by["radfm"]["readiness"] == "docs/readiness.md#radfm"


def test_paper_system_with_local_weights_is_ready(tmp_path: Path, monkeypatch, capsys) -> None:
    """A local folder for the Qwen2-7B teacher and a checkpoint file for RadFM: those two lines
    say READY (RadFM on a CPU with a warning: it wants a GPU); the others stay NOT READY."""
    _paper_with_cache(tmp_path, monkeypatch)
    monkeypatch.delenv("MEDMIX_ONELLM_WEIGHTS", raising=False)
    local = tmp_path / "qwen2-7b"
    local.mkdir()
    (local / "config.json").write_text("{}")
    (local / "model.safetensors").write_bytes(b"x")
    ckpt = tmp_path / "radfm_vit3d.safetensors"
    ckpt.write_bytes(b"x")
    cfg = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    cfg["experts"]["qwen2-7b"] = {"type": "qwen2", "local_dir": str(local), "device": "cpu"}
    cfg["experts"]["radfm"]["checkpoint"] = str(ckpt)
    path = tmp_path / "paper.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    systems = {s.system: s for s in run_doctor(path).paper_systems}
    assert systems["qwen2-7b"].state == "READY" and not systems["qwen2-7b"].reasons
    assert systems["radfm"].state == "READY"
    if not gpu_available():
        assert any("GPU" in w for w in systems["radfm"].warnings)
    assert {k for k, s in systems.items() if s.state == "READY"} == {"qwen2-7b", "radfm"}
    cli(["doctor", str(path)])
    out = capsys.readouterr().out
    assert "[READY    ] Qwen2-7B (note teacher; qwen2-7b)" in out
    assert "2/9 paper systems ready" in out


def test_paper_systems_not_used_by_a_config_are_quiet(tmp_path: Path, capsys) -> None:
    path = _config(
        tmp_path, {"tiny": {"type": "gatortron", "random_init": True, "config": TINY_BERT}}
    )
    report = run_doctor(path)
    assert {s.state for s in report.paper_systems} == {"not configured"}
    assert report.ready
    assert cli(["doctor", str(path)]) == 0
    assert "Paper systems" not in capsys.readouterr().out
    assert cli(["doctor", str(path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {s["state"] for s in data["paper_systems"]} == {"not configured"}


def test_doctor_presets_do_not_outlive_the_run(tmp_path: Path) -> None:
    """A config's presets shadow registered types only while the doctor runs: afterwards
    ``create_expert("onellm")`` is the bare type again, not the config's preset of that name."""
    from extractors.doctor import run_doctor
    from extractors.registry import create_expert

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {"experts": {"onellm": {"type": "onellm", "tokenizer": "/nowhere/tokenizer.model"}}}
        )
    )
    run_doctor(cfg)
    assert create_expert("onellm", random_init=True).params["tokenizer"] is None
