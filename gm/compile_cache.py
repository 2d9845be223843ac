"""MindSpore's compile cache, one entry folder per graph key, so a repeated run skips graph compilation.

MindSpore (2.8, CPU too) saves the graphs a process compiles as ``compile_cache_<N>.mindir``, N counting
compilations, and a later process loads file N for its N-th compilation without checking shapes,
dtypes or settings: a folder shared by different runs hands them wrong graphs. So each run gets the
entry ``<folder>/<key>``, the key a hash of everything that shapes its graphs (the caller's settings,
MindSpore's version, device and mode, the sources of ``gm/`` and of the running script), and the
cache is switched on once per process, before its first compilation. An entry whose files do not
match the manifest written when it was made is removed and the run compiles without the cache.
"""
import atexit
import hashlib
import json
import os
import shutil
import sys
import time

import mindspore as ms

from gm.errors import UsageError, warn
from gm.files import atomic_output

ENV = "SDXL_TI_COMPILE_CACHE"
OFF = ("off", "none", "false", "0")
MANIFEST = "manifest.json"
KEY = "key.json"  # the key's text, for people looking into the folder
BUSY = 3600  # seconds: an entry without a manifest changed more recently is taken as another run's, being written
GM = os.path.dirname(os.path.abspath(__file__))
_state = {"used": False}


def default_folder():
    """``$SDXL_TI_COMPILE_CACHE``, else ``$XDG_CACHE_HOME/sdxl_ti/compile`` (``~/.cache/sdxl_ti/compile``)."""
    if os.environ.get(ENV):
        return os.environ[ENV]
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "sdxl_ti", "compile")


def resolve(value=None):
    """The cache folder of a ``--compile_cache`` value (None: :func:`default_folder`); None when turned off."""
    folder = default_folder() if value is None else value
    return None if folder.strip().lower() in OFF else folder


def _file_hash(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_hash():
    """Hash of every ``gm/*.py`` and of the running script (``__main__``)."""
    paths = sorted(os.path.join(d, f) for d, _, files in os.walk(GM) for f in files if f.endswith(".py"))
    main = getattr(sys.modules.get("__main__"), "__file__", None)
    digest = hashlib.sha256()
    for path in paths + ([os.path.abspath(main)] if main else []):
        digest.update(os.path.relpath(path, GM).encode() + b"\0" + _file_hash(path).encode())
    return digest.hexdigest()


def key_text(parts):
    """What names a run's entry: ``parts`` (the caller's graph-shaping settings, JSON-able or str-able)
    with MindSpore's version, device target and mode and :func:`source_hash`, as JSON."""
    full = {"parts": parts, "mindspore": ms.__version__, "device": ms.get_context("device_target"),
            "mode": ms.get_context("mode"), "sources": source_hash()}
    return json.dumps(full, sort_keys=True, indent=1, default=str)


def cache_key(parts, text=None):
    """The entry name of a run: a hash of :func:`key_text` (``text``, when already made)."""
    return hashlib.sha256((text or key_text(parts)).encode()).hexdigest()[:24]


# Settings of a training run that change no graph (values fed in, host-side, or output only); every
# other field, a new one too, is part of the key.
TRAINING_VALUES = {"config_path", "weight", "save_path", "concepts_path", "total_step", "learning_rate",
                   "lr_scheduler", "lr_warmup_steps", "save_ckpt_interval", "max_num_ckpt", "overwrite",
                   "from_config", "seed"}
CONCEPT_PATHS = {"data_path", "initializer_file", "initializer_file_l", "template_file", "source"}


def training_parts(settings):
    """The graph-shaping part of a training run's Settings (dataclass): the model config's content, the
    concepts' vector counts and properties, batch, resolution, precision, sampling and measuring settings."""
    from dataclasses import fields

    from omegaconf import OmegaConf

    parts = {f.name: getattr(settings, f.name) for f in fields(settings) if f.name not in TRAINING_VALUES}
    parts["config"] = OmegaConf.to_yaml(parts["config"]) if OmegaConf.is_config(parts["config"]) else parts["config"]
    parts["concepts"] = [{f.name: getattr(c, f.name) for f in fields(c) if f.name not in CONCEPT_PATHS}
                         | {"paths": sorted(k for k in CONCEPT_PATHS if getattr(c, k, None))}
                         for c in settings.concepts]
    return parts


def sampling_parts(configs, words, settings):
    """The graph-shaping part of a sampling run: the models' configs (content), the loaded words' vector
    counts ({token: n}) and ``settings`` (size, image count, sampler, steps, guidance, prompts, ...)."""
    from omegaconf import OmegaConf

    return {"configs": [OmegaConf.to_yaml(c) if OmegaConf.is_config(c) else c for c in configs],
            "words": dict(sorted(words.items())), **settings}


def _cache_files(entry):
    """{path relative to ``entry``: absolute path} of MindSpore's files in an entry."""
    found = {}
    for folder, _, files in os.walk(entry):
        for name in files:
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, entry)
            if rel not in (MANIFEST, KEY) and not name.startswith("."):  # ours: atomic_output's temporaries
                found[rel] = path
    return found


def _newest(files):
    """The latest modification time of ``files`` ({name: path}); 0 when none can be read."""
    times = []
    for path in files.values():
        try:
            times.append(os.path.getmtime(path))
        except OSError:
            pass
    return max(times, default=0)


def _intact(entry):
    """Whether an entry's files are exactly the ones its manifest lists, unchanged."""
    try:
        with open(os.path.join(entry, MANIFEST), encoding="utf-8") as f:
            listed = json.load(f)
        files = _cache_files(entry)
        return (isinstance(listed, dict) and set(listed) == set(files)
                and all(_file_hash(files[rel]) == digest for rel, digest in listed.items()))
    except (OSError, ValueError):
        return False


def _set_context(**values):
    """``ms.set_context`` without its deprecation notices of the compile-cache keys."""
    from gm.runtime import _HeldLog

    with _HeldLog():
        ms.set_context(**values)


def _compiled_before():
    """Whether this process has compiled a graph already (then MindSpore's cache numbering is not ours)."""
    try:
        from mindspore.common import api
        return bool(api.ms_compile_cache) or any(api.cells_compile_cache.values())
    except (ImportError, AttributeError):  # another MindSpore: assume the worst
        return True


class CompileCache:
    """The cache entry this process uses: ``entry`` (folder), ``reused`` (it held graphs already)."""

    def __init__(self, entry, reused):
        self.entry, self.reused = entry, reused
        self.open = True

    def seal(self):
        """Record the entry's files in its manifest (they are what a later run may load)."""
        files = _cache_files(self.entry)
        if not files:
            return
        listed = {rel: _file_hash(path) for rel, path in files.items()}
        try:
            with atomic_output(os.path.join(self.entry, MANIFEST)) as tmp, open(tmp, "w", encoding="utf-8") as f:
                json.dump(listed, f, indent=0, sort_keys=True)
        except UsageError:
            pass  # an entry without a manifest is rebuilt by the next run

    def close(self):
        """Seal the entry and stop caching: later compilations of this process are not saved or loaded."""
        if self.open:
            self.seal()
            _set_context(enable_compile_cache=False)
            self.open = False


def use_compile_cache(folder, parts):
    """Switch MindSpore's compile cache on in ``folder``/key(``parts``); the :class:`CompileCache`, or None.

    None (the cache stays off) when ``folder`` is None, when this process has used the cache or compiled
    a graph already, or, with one warning, when the folder cannot be written or the entry is damaged.
    Call it before the process's first graph runs; the entry is sealed at exit (or :meth:`CompileCache.close`).
    """
    if folder is None or _state["used"] or _compiled_before():
        _set_context(enable_compile_cache=False)
        return None
    _state["used"] = True
    text = key_text(parts)
    entry = os.path.join(os.path.abspath(folder), cache_key(parts, text))
    try:
        with atomic_output(os.path.join(entry, KEY)) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    except UsageError as e:
        warn(f"compile cache {folder}: cannot write there; this run compiles without it ({e})")
        _set_context(enable_compile_cache=False)
        return None
    found = _cache_files(entry)
    reused = bool(found)
    if reused and not os.path.exists(os.path.join(entry, MANIFEST)) and _newest(found) > time.time() - BUSY:
        _set_context(enable_compile_cache=False)  # another run with this key is compiling into it now
        return None
    if reused and not _intact(entry):
        warn(f"compile cache {entry}: a damaged or unfinished entry; removed, this run compiles without it")
        shutil.rmtree(entry, ignore_errors=True)
        _set_context(enable_compile_cache=False)
        return None
    _set_context(enable_compile_cache=True, compile_cache_path=entry + os.sep)
    cache = CompileCache(entry, reused)
    atexit.register(cache.seal)
    return cache
