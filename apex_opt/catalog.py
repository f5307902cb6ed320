"""The built-in catalog of models, GPUs, clusters, engines and workloads, and lookups by name or path.

The catalog lives in ``specs/``: inside an installed wheel at ``apex_opt/_specs``, in a source checkout at
``<repo>/specs``. Every name goes through a :class:`Registry`, the same path third-party entries take
(``register``); a duplicate name raises, an unknown one raises :class:`UnknownNameError` with close matches.

>>> get_model("llama-3.1-70b").num_layers
80
>>> get_gpu("h100-sxm").name
Traceback (most recent call last):
...
apex_opt.errors.UnknownNameError: unknown GPU 'h100-sxm'; did you mean 'h100-sxm-80gb' or ...
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any, Generic, TypeVar

import yaml

from . import hub
from .bounds import load_yaml
from .errors import SpecError, UnknownNameError, shorten
from .plugins import load_plugins
from .resources import resource_dir
from .schema.cluster import ClusterSpec
from .schema.engine import EngineSpec
from .schema.gpu import GPUSpec
from .schema.model import ModelSpec, model_from_hf_config

T = TypeVar("T")
S = TypeVar("S", GPUSpec, EngineSpec)


def specs_dir() -> Path:
    """The folder holding the built-in catalog (wheel or source checkout; :func:`apex_opt.resources.resource_dir`)."""
    return resource_dir("specs")


def read_structured(path: Path) -> Any:
    """Read a YAML or JSON file; a syntax error names the file and line."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read the file ({exc.strerror}); check the path and its permissions") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise SpecError(f"{path}: line {line}: not UTF-8 text (byte {raw[exc.start]:#04x}); save the file as UTF-8 "
                        "(YAML or JSON)") from None
    try:
        if path.suffix == ".json":
            return json.loads(text)
        return load_yaml(text, path)
    except json.JSONDecodeError as exc:
        raise SpecError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise SpecError(f"{path}: {where}invalid YAML ({getattr(exc, 'problem', exc)})") from None


class Registry(Generic[T]):
    """Named entries of one kind, filled lazily from a loader (the built-in catalog) and by :meth:`register`."""

    def __init__(self, kind: str, loader: Callable[[], dict[str, T]], hint: str = "",
                 options: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self._loader = loader
        self._entries: dict[str, T] | None = None
        self._hint = hint
        self._options = options  # the options ``hint`` names with placeholders

    def _all(self) -> dict[str, T]:
        if self._entries is None:
            self._entries = dict(self._loader())
        return self._entries

    def register(self, name: str, entry: T) -> None:
        """Add an entry; a name that exists already raises :class:`SpecError`."""
        entries = self._all()
        if name in entries:
            article = "an" if self.kind[:1].lower() in "aeiou" else "a"
            raise SpecError(f"{article} {self.kind} named '{name}' is already registered; choose another name")
        entries[name] = entry

    def unregister(self, name: str) -> None:
        self._all().pop(name, None)

    def get(self, name: str) -> T:
        if not isinstance(name, str):
            raise SpecError(f"a {self.kind} name must be a string, got {type(name).__name__} {shorten(name)}; "
                            f"see 'apex-opt catalog {self.kind.lower()}s' for the names")
        found = self._find(name)
        if found is None and load_plugins():  # a name the catalog lacks: installed plug-ins may register it
            found = self._find(name)
        if found is None:
            raise UnknownNameError(self.kind, name, self._all(), self._hint, option=self._options or None)
        return found

    def _find(self, name: str) -> T | None:
        """The entry of ``name``, matched exactly, else ignoring case; None when there is none."""
        entries = self._all()
        if name in entries:
            return entries[name]
        lowered = {k.lower(): k for k in entries}
        return entries[lowered[name.lower()]] if name.lower() in lowered else None

    def names(self) -> list[str]:
        """Every registered name, sorted, installed plug-ins' included (:mod:`apex_opt.plugins`)."""
        load_plugins()
        return sorted(self._all())

    def __iter__(self) -> Iterator[T]:
        load_plugins()
        entries = self._all()
        return iter(entries[k] for k in sorted(entries))

    def __contains__(self, name: object) -> bool:
        if name in self._all():
            return True
        return bool(load_plugins()) and name in self._all()


def _load_dir(sub: str, build: Callable[[Path, Any], Any], suffixes: tuple[str, ...] = (".yaml", ".yml")) -> dict:
    folder = specs_dir() / sub
    out: dict[str, Any] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix not in suffixes:
            continue
        spec = build(path, read_structured(path))
        out[spec.name] = spec
    return out


def _load_models() -> dict[str, ModelSpec]:
    def build(path: Path, data: Any) -> ModelSpec:
        return model_from_hf_config(data, name=path.stem, source=str(path))

    return _load_dir("models", build, suffixes=(".json",))


MODELS: Registry[ModelSpec] = Registry("model", _load_models, "Or pass a Hugging Face id (org/name) or the path of a "
                                        "Hugging Face config.json.")
GPUS: Registry[GPUSpec] = Registry(
    "GPU", lambda: _load_dir("gpus", lambda p, d: GPUSpec.parse(d, source=p, kind="GPU")),
    "Or pass the path of a GPU YAML file (same fields as specs/gpus/*.yaml; see docs/examples/gpu-custom.yaml).",
)

#: GPUs read from files in this process, by name; a later file with the same name replaces an earlier one.
#: Specs carry their GPU specs (``Specs.gpus``), so worker processes never need this table.
_FILE_GPUS: dict[str, GPUSpec] = {}
#: engines read from files (load_engine_file), by name: plans name their engine, and a later lookup finds it
_FILE_ENGINES: dict[str, EngineSpec] = {}
#: a name a GPU or engine read from a file may take (it names them in plans and launch lines)
_SPEC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,79}")
CLUSTERS: Registry[ClusterSpec] = Registry(
    "cluster",
    lambda: _load_dir("clusters", lambda p, d: ClusterSpec.parse(d, source=p, kind="cluster")),
    "Or pass a cluster YAML file, or the quick form {gpu=}NAME {nodes=}N {gpus_per_node=}M.",
    ("cluster", "gpu", "nodes", "gpus_per_node"),
)
ENGINES: Registry[EngineSpec] = Registry(
    "engine", lambda: _load_dir("engines", lambda p, d: EngineSpec.parse(d, source=p, kind="engine"))
)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a name longer than the file system allows
        return False


def _looks_like_path(ref: str) -> bool:
    return isinstance(ref, str) and (ref.endswith((".json", ".yaml", ".yml")) or "/" in ref or ref.startswith("."))


def get_model(ref: str) -> ModelSpec:
    """A catalog model by name or Hugging Face id, or any Hugging Face ``config.json`` by path or by id.

    A path wins over an id of the same spelling; a folder stands for the ``config.json`` in it. An id that is not
    in the catalog is fetched from the Hub (:func:`apex_opt.hub.fetch_config`) and named by its last part,
    lower-cased.

    >>> m = get_model("META-LLAMA/Llama-3.1-70B")  # the base model's id, any case
    >>> m.name, m.hf_repo
    ('llama-3.1-70b', 'meta-llama/Llama-3.1-70B')
    """
    if _looks_like_path(ref):
        path = Path(ref)
        if _is_file(path / "config.json"):
            path = path / "config.json"
        if _is_file(path):
            return model_from_hf_config(read_structured(path),
                                        name=path.stem if path.stem != "config" else path.parent.name,
                                        source=str(path))
        if hub.is_repo_id(ref):
            known = model_for_repo(ref)
            if known is not None:
                return known
            fetched = hub.fetch_config(ref)
            spec = model_from_hf_config(read_structured(fetched), name=hub.display_name(ref), source=str(fetched))
            return spec.model_copy(update={"hf_repo": ref})
        raise SpecError(f"{{model=}}{shorten(ref)}: no such file; give a catalog name (apex-opt catalog models), a "
                        "Hugging Face id (org/name) or the path of a Hugging Face config.json", option="model")
    return MODELS.get(ref)


def model_for_repo(repo_id: str) -> ModelSpec | None:
    """The catalog model whose ``hf_repo`` or one of whose ``hf_aliases`` is ``repo_id`` (any case), else None.

    The model returned serves ``repo_id`` as the catalog spells it (its ``hf_repo`` is that id).
    """
    wanted = repo_id.lower()
    for spec in MODELS:
        for known in (spec.hf_repo, *spec.hf_aliases):
            if known and known.lower() == wanted:
                return spec if known == spec.hf_repo else spec.model_copy(update={"hf_repo": known})
    return None


def get_gpu(ref: str) -> GPUSpec:
    """A catalog GPU by name, a GPU YAML file by path, or a GPU read from a file earlier, by its name."""
    return _by_name_or_file(ref, GPUS, _FILE_GPUS, load_gpu_file)


def gpu_name(ref: str) -> str:
    """The name plans give the GPU of ``--gpu ref``: a file's ``name`` (the file is read and checked), else ``ref``."""
    return load_gpu_file(ref).name if _looks_like_path(ref) else ref


def load_gpu_file(path: str | Path, *, option: str | None = None) -> GPUSpec:
    """A GPU spec from a YAML file with the fields of ``specs/gpus/*.yaml``; its ``name`` names it in plans.

    The name may not be a catalog GPU's unless the figures are that GPU's too (a copy of a catalog file).
    ``option`` says where the path came from, for messages (a cluster file's node group); None: the ``gpu``
    parameter (``gpu=`` in Python, ``--gpu`` on the command line).
    """
    path = Path(path)
    if not _is_file(path):
        where = "{gpu=}" if option is None else option + " "
        raise SpecError(f"{where}{shorten(str(path))}: no such file; give a catalog GPU name (apex-opt catalog "
                        "gpus) or the path of a GPU YAML file (see docs/examples/gpu-custom.yaml)",
                        option="gpu" if option is None else None)
    spec = GPUSpec.parse(read_structured(path), source=path, kind="GPU")
    return _named_file_spec(path, spec, GPUS, _FILE_GPUS, "gpu", "h100-site-250w", "figures")


def _by_name_or_file(ref: str, registry: Registry[S], files: dict[str, S], load: Callable[[str], S]) -> S:
    """``ref`` as a file path (``load`` reads it), a registered name, or the name of a file read earlier."""
    if _looks_like_path(ref):
        return load(ref)
    try:
        return registry.get(ref)
    except UnknownNameError:
        if ref in files:
            return files[ref]
        raise


def _named_file_spec(path: Path, spec: S, registry: Registry[S], files: dict[str, S], option: str,
                     example: str, contents: str = "settings") -> S:
    """``spec``, read from ``path``, kept in ``files`` under its name once the name is checked: usable in plans, and
    not a catalog entry's unless the file is that entry (then the catalog's own is returned)."""
    kind = registry.kind
    if not _SPEC_NAME.fullmatch(spec.name):
        raise SpecError(f"{path}: name: {shorten(spec.name)} is not a usable {kind} name; use 1-80 letters, digits, "
                        f"'.', '_', '+' or '-', starting with a letter or digit, e.g. name: {example}")
    clash = {n.lower(): n for n in registry.names()}.get(spec.name.lower())
    if clash is not None:
        entry = registry.get(clash)
        if spec == entry:
            return entry
        differ = [f for f in type(spec).model_fields if getattr(spec, f) != getattr(entry, f)
                  and f not in ("sources", "name")]
        what = f" (its {', '.join(differ[:3])} differ{'s' if len(differ) == 1 else ''})" if differ else ""
        raise SpecError(f"{path}: name: '{spec.name}' is the catalog {kind} {clash}, with different {contents}{what}; "
                        f"give the file's {kind} a name of its own, e.g. name: {spec.name}-custom, or use "
                        f"{{{option}=}}{clash} for the catalog one", option=option)
    files[spec.name] = spec
    return spec


def get_engine(ref: str) -> EngineSpec:
    """A catalog engine by name (vllm-0.6, vllm-v1, sglang-0.4), an engine YAML file by path (the fields of
    ``specs/engines/*.yaml``), or an engine read from a file earlier, by its name."""
    return _by_name_or_file(ref, ENGINES, _FILE_ENGINES, load_engine_file)


def engine_name(ref: str) -> str:
    """The name plans give the engine of ``--engine ref``: a file's ``name`` (the file is read and checked), else
    ``ref``."""
    return load_engine_file(ref).name if _looks_like_path(ref) else ref


def load_engine_file(path: str | Path) -> EngineSpec:
    """An engine spec from a YAML file with the fields of ``specs/engines/*.yaml``; its ``name`` names it in plans.

    Start from a copy of a catalog engine's file and change what differs (its ``family`` picks the scheduler, its
    ``scheduler.behaviour`` the rules that differ from the family's). The name may not be a catalog engine's
    unless the file is that engine's too.
    """
    path = Path(path)
    if not _is_file(path):
        raise SpecError(f"{{engine=}}{shorten(str(path))}: no such file; give a catalog engine name (apex-opt catalog "
                        "engines) or the path of an engine YAML file (a copy of one in specs/engines/)",
                        option="engine")
    spec = EngineSpec.parse(read_structured(path), source=path, kind="engine")
    return _named_file_spec(path, spec, ENGINES, _FILE_ENGINES, "engine", "vllm-v1-site")


def get_cluster(ref: str) -> ClusterSpec:
    """A catalog cluster by name, or a cluster YAML file by path; its GPU kinds must be in the catalog."""
    if _looks_like_path(ref):
        path = Path(ref)
        if not _is_file(path):
            raise SpecError(f"{{cluster=}}{shorten(ref)}: no such file; give a catalog name (apex-opt catalog "
                            "clusters) or the path of a cluster YAML file", option="cluster")
        cluster = ClusterSpec.parse(_gpu_files_to_names(read_structured(path), path), source=path, kind="cluster")
    else:
        cluster = CLUSTERS.get(ref)
    check_cluster_gpus(cluster)
    return cluster


def _gpu_files_to_names(data: Any, path: Path) -> Any:
    """A cluster file's data with each node group's GPU file path (relative to the cluster file) read and
    replaced by the GPU's name."""
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
        return data
    nodes = []
    for i, group in enumerate(data["nodes"]):
        ref = group.get("gpu") if isinstance(group, dict) else None
        if isinstance(ref, str) and _looks_like_path(ref):
            gpu_path = Path(ref) if Path(ref).is_absolute() else path.parent / ref
            group = {**group, "gpu": load_gpu_file(gpu_path, option=f"{path}: nodes[{i}].gpu").name}
        nodes.append(group)
    return {**data, "nodes": nodes}


def check_cluster_gpus(cluster: ClusterSpec) -> None:
    """Every node group's GPU must be a catalog GPU or one read from a file."""
    for i, group in enumerate(cluster.nodes):
        if group.gpu not in GPUS and group.gpu not in _FILE_GPUS:
            err = UnknownNameError("GPU", group.gpu, GPUS.names())
            raise SpecError(f"cluster '{cluster.name}': nodes[{i}].gpu: {err}") from None


@cache
def load_calibration(name: str) -> dict[str, Any]:
    """A calibration file from ``specs/calibration`` (fitted parameters, see docs/calibration.md)."""
    folder = specs_dir() / "calibration"
    for suffix in (".yaml", ".json"):
        path = folder / f"{name}{suffix}"
        if path.is_file():
            return read_structured(path)
    raise SpecError(f"calibration '{name}' is missing from {folder}; reinstall apex-opt")
