"""`asit export-onnx`: onnxruntime reproduces asit's outputs on real (FSDD) and synthetic clips."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("onnx", reason="ONNX export needs onnx, onnxscript, onnxruntime (the onnx extra)")
pytest.importorskip("onnxscript", reason="ONNX export needs onnx, onnxscript, onnxruntime (the onnx extra)")
ort = pytest.importorskip("onnxruntime", reason="ONNX export needs onnx, onnxscript, onnxruntime (the onnx extra)")
import onnx  # noqa: E402

from asit.ast_model import ASTConfig, ASTModel, classifier_checkpoint, load_classifier  # noqa: E402
from asit.audio import load_audio  # noqa: E402
from asit.checkpoint import atomic_save, backbone_checkpoint, load  # noqa: E402
from asit.cli import main  # noqa: E402
from asit.errors import EXIT_USER_ERROR  # noqa: E402
from asit.features import FrontEndConfig, clip_windows, frontend_metadata  # noqa: E402
from asit.onnx_export import export_onnx  # noqa: E402
from asit.vit import build_vit  # noqa: E402

RATE = 16000
FRAMES = 128  # 1.28 s
FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd" / "recordings"


def randomised(module):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return module


def two_lengths(source):
    """A clip that fits one window and one of several windows."""
    if source == "synthetic":
        t = torch.arange(4 * RATE) / RATE
        wave = 0.3 * torch.sin(2 * math.pi * 300 * t * (1 + t)) + 0.05 * torch.randn(t.shape)
        return [wave[:int(0.7 * RATE)], wave]
    if not FSDD.is_dir():
        pytest.skip(f"real audio not available: {FSDD} is absent (it lives in the project's shared/ folder)")
    paths = sorted(FSDD.glob("*.wav"))[:8]  # spoken digits, 0.3-0.6 s each
    return [load_audio(paths[0], RATE), torch.cat([load_audio(p, RATE) for p in paths])]


def run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [torch.from_numpy(y) for y in session.run(None, {"fbank": x.numpy()})]


@pytest.fixture(scope="module", params=["token", "mean"])
def exported(request, tmp_path_factory):
    """A classifier of each pooling asit has, exported by the command."""
    root = tmp_path_factory.mktemp(request.param)
    cfg = ASTConfig("tiny", num_classes=3, num_frames=FRAMES, pool=request.param)  # stride 10: 12 x 12
    model = randomised(ASTModel(cfg))
    atomic_save(classifier_checkpoint(model, cfg, FrontEndConfig(), ["yes", "no", "up"], True), root / "best.pt")
    assert main(["export-onnx", str(root / "best.pt"), str(root / "model.onnx")]) == 0
    return root / "best.pt", root / "model.onnx"


@pytest.mark.parametrize("source", ["fsdd", "synthetic"])
def test_onnx_logits_equal_asit_s_on_clips_of_two_lengths(exported, source):
    ckpt, path = exported
    model, frontend, _, _ = load_classifier(ckpt)
    short, long = two_lengths(source)
    for wave, windows in ((short, 1), (long, 6)):  # one window, then a batch of several (dynamic batch)
        x = clip_windows(wave, frontend, FRAMES)[:, None]  # what `asit predict` feeds the model
        assert len(x) == windows
        (logits,) = run(path, x)
        with torch.no_grad():
            torch.testing.assert_close(logits, model(x), atol=1e-4, rtol=0)


def test_the_file_documents_its_input_and_labels(exported):
    ckpt, path = exported
    proto = onnx.load(path)
    dims = lambda v: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]  # noqa: E731
    assert [i.name for i in proto.graph.input] == ["fbank"] and dims(proto.graph.input[0]) == ["batch", 1, 128, FRAMES]
    assert [o.name for o in proto.graph.output] == ["logits"] and dims(proto.graph.output[0]) == ["batch", 3]
    meta = {p.key: json.loads(p.value) for p in proto.metadata_props}
    saved = load(ckpt)
    assert meta == {"asit_frontend": saved["frontend"], "asit_labels": saved["labels"], "asit_multilabel": True}
    # the documented recipe: the front end from the file's metadata alone
    frontend = FrontEndConfig(**{k: v for k, v in meta["asit_frontend"].items() if k != "num_frames"})
    x = clip_windows(two_lengths("synthetic")[1], frontend, meta["asit_frontend"]["num_frames"])[:, None]
    assert run(path, x)[0].shape == (len(x), 3)


@pytest.fixture(scope="module")
def backbone_onnx(tmp_path_factory):
    root = tmp_path_factory.mktemp("backbone")
    vit = randomised(build_vit("tiny", (128, 96)))
    atomic_save(backbone_checkpoint(vit, "tiny", 16, 16, (8, 6), frontend_metadata(FrontEndConfig(), 96)),
                root / "teacher_backbone.pt")
    assert main(["export-onnx", str(root / "teacher_backbone.pt"), str(root / "b.onnx"), "--backbone"]) == 0
    return root / "teacher_backbone.pt", root / "b.onnx"


@pytest.mark.parametrize("source", ["fsdd", "synthetic"])
def test_a_backbone_exports_its_embeddings(backbone_onnx, source):
    from asit import hear

    ckpt, path = backbone_onnx
    assert [o.name for o in onnx.load(path).graph.output] == ["cls", "mean"]
    model = hear.load_model(ckpt)  # the backbone as `asit embed` builds it
    for wave in two_lengths(source):
        x = clip_windows(wave, model.frontend, 96)[:, None]
        cls, mean = run(path, x)
        with torch.no_grad():
            pooled = model.model.embed(x)
        torch.testing.assert_close(cls, pooled["cls"], atol=1e-4, rtol=0)
        torch.testing.assert_close(mean, pooled["mean"], atol=1e-4, rtol=0)


def one_line_error(argv, capsys):
    assert main(argv) == EXIT_USER_ERROR
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    return err


def test_what_cannot_export_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    backbone = tmp_path / "teacher_backbone.pt"
    atomic_save(backbone_checkpoint(build_vit("tiny", (128, 96)), "tiny", 16, 16, (8, 6),
                                    frontend_metadata(FrontEndConfig(), 96)), backbone)
    out = str(tmp_path / "x.onnx")
    assert "pass --backbone" in one_line_error(["export-onnx", str(backbone), out], capsys)

    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    assert "garbage.pt: not a checkpoint" in one_line_error(["export-onnx", str(tmp_path / "garbage.pt"), out], capsys)
    assert "does not exist" in one_line_error(["export-onnx", str(tmp_path / "nope.pt"), out], capsys)

    # Every pooling asit has exports; one it does not have never gets as far as the exporter.
    cfg = ASTConfig("tiny", num_classes=2, num_frames=32)
    ckpt = classifier_checkpoint(ASTModel(cfg), cfg, FrontEndConfig(), ["a", "b"], False)
    ckpt["ast"]["pool"] = "attention"
    atomic_save(ckpt, tmp_path / "odd.pt")
    with pytest.raises(ValueError, match=r"ast.pool must be one of \['mean', 'token'\], got 'attention'"):
        export_onnx(tmp_path / "odd.pt", out)

    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    assert "pip install 'asit[onnx]'" in one_line_error(["export-onnx", str(tmp_path / "odd.pt"), out], capsys)
    assert not Path(out).exists()
