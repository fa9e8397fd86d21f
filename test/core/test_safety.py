"""Safety of what the package loads and runs: model weights from safetensors only (a pickled
checkpoint is refused without being opened), ``trust_remote_code`` off unless the parameter
enables it, and no code path that executes or unpickles data (a scan of the package's syntax
tree: model text, messages and files are never ``eval``/``exec``-ed or unpickled)."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest

from csr_ros.core.config import load_config

pytestmark = pytest.mark.core
PACKAGE = Path(__file__).resolve().parents[2] / "csr_ros"

FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}
FORBIDDEN_MODULES = {"pickle", "cPickle", "dill", "marshal", "shelve", "cloudpickle", "joblib"}
FORBIDDEN_ATTRS = {("yaml", "load"), ("yaml", "unsafe_load"), ("yaml", "full_load"), ("os", "system"),
                   ("os", "popen"), ("numpy", "load"), ("np", "load")}


def _findings(tree: ast.AST, rel: str) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            out += [f"{rel}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in FORBIDDEN_MODULES]
        if not isinstance(node, ast.Call):
            continue
        f, kw = node.func, {k.arg: k.value for k in node.keywords}
        constant_arg = bool(node.args) and isinstance(node.args[0], ast.Constant)
        if isinstance(f, ast.Name) and f.id in FORBIDDEN_CALLS and not (f.id == "__import__" and constant_arg):
            out.append(f"{rel}:{node.lineno} calls {f.id}()")
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
            if (f.value.id, f.attr) in FORBIDDEN_ATTRS:
                out.append(f"{rel}:{node.lineno} calls {f.value.id}.{f.attr}()")
            if (f.value.id, f.attr) == ("torch", "load"):
                wo = kw.get("weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    out.append(f"{rel}:{node.lineno} torch.load without weights_only=True")
        if "shell" in kw and not (isinstance(kw["shell"], ast.Constant) and kw["shell"].value is False):
            out.append(f"{rel}:{node.lineno} runs a shell")
        trc = kw.get("trust_remote_code")
        if isinstance(trc, ast.Constant) and trc.value is True:
            out.append(f"{rel}:{node.lineno} hard-codes trust_remote_code=True")
    return out


def test_the_package_never_executes_or_unpickles_data():
    findings = []
    for path in sorted(PACKAGE.rglob("*.py")):
        findings += _findings(ast.parse(path.read_text(), str(path)), str(path.relative_to(PACKAGE.parent)))
    assert findings == []


def test_the_scan_finds_what_it_forbids():
    """The scanner itself works (so the test above can fail)."""
    bad = ("import pickle\nx = eval(text)\nimport torch\ntorch.load(f)\nyaml.load(s)\n"
           "subprocess.run(c, shell=True)\nAutoModel.from_pretrained(p, trust_remote_code=True)\n"
           "m = __import__(name)\nok = __import__('pkgutil')\n")
    assert len(_findings(ast.parse(bad), "bad.py")) == 7


def test_trust_remote_code_is_off_by_default():
    assert load_config().model.trust_remote_code is False


class _Sentinel:
    """Unpickling this creates a directory: proof that a checkpoint was unpickled."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        import os

        return os.makedirs, (str(self.path),)


def test_a_pickled_checkpoint_is_refused_without_being_opened(tmp_path):
    pytest.importorskip("transformers")
    from csr_ros.core.model.backends.embedded import ModelNotAvailable
    from csr_ros.core.model.backends.hf import load_hf

    folder, sentinel = tmp_path / "model", tmp_path / "unpickled"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Sentinel(sentinel)))
    with pytest.raises(ModelNotAvailable, match="safetensors"):
        load_hf(str(folder), device="cpu")
    assert not sentinel.exists()


def test_weights_load_with_safetensors_only_and_remote_code_as_configured(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    import transformers

    from csr_ros.core.model.backends import hf

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(b"")
    seen = []

    class Stop(Exception):
        pass

    def capture(*_a, **kw):
        seen.append(kw)
        raise Stop()

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", staticmethod(lambda *a, **kw: seen.append(kw)))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", staticmethod(capture))
    for trust in (False, True):
        with pytest.raises(Stop):
            hf.load_hf(str(folder), device="cpu", trust_remote_code=trust)
        tok_kw, model_kw = seen[-2], seen[-1]
        assert tok_kw["trust_remote_code"] is trust and model_kw["trust_remote_code"] is trust
        assert model_kw["use_safetensors"] is True
