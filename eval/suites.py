"""Suite definitions: a named set of (face video, speech) pairs times a list of model settings.

A suite is written as YAML, as CSV, or found in a server folder:

.. code-block:: yaml

    name: examples                # required: runs of the same name are compared
    pairs:                        # required: one entry per clip
      - name: astronaut           # optional (default: the video's file stem)
        video: video.mp4          # a path, relative to the suite file's folder
        audio: speech.wav
    folder: clips/                # optional: more pairs, each video with the audio of its stem
    settings:                     # required: each pair runs under each setting
      - baseline
      - passthrough
      - baseline crf=40           # a model, then options as key=value
      - {name: big mouth, model: baseline, options: {pads: [0, 20, 0, 0]}}

A CSV suite is a table of pairs (header ``video,audio`` and optionally ``name``); its
settings come from the caller. Every refusal is a :class:`SuiteError` that names the file,
the line and the field, and is raised before any job runs (missing media included).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import LipSyncError
from pipeline.options import MODELS, RunOptions

VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".png", ".jpg", ".jpeg")
AUDIO_EXTS = (".wav", ".mp3", ".flac", ".m4a", ".ogg", ".aac")
SERVER_ONLY_OPTIONS = ("work_dir", "limits", "model")  # never set by a suite's options
NAME_RE = re.compile(r"[\w][\w .+=,-]{0,79}", re.UNICODE)  # names of suites, pairs, settings
TOP_KEYS = ("name", "pairs", "folder", "settings", "description")
PAIR_KEYS = ("name", "video", "audio")
SETTING_KEYS = ("name", "model", "options")


class SuiteError(LipSyncError, ValueError):
    """A suite definition that cannot run; the message names the file, line and field."""

    def __init__(self, message: str, *, source: str = "suite", line: int | None = None,
                 field_name: str | None = None) -> None:
        where = source + (f" line {line}" if line else "") + (f", field {field_name}" if field_name else "")
        super().__init__(f"{where}: {message}")
        self.line = line
        self.field_name = field_name


@dataclass(frozen=True)
class Setting:
    """One model setting: a display name, the model and its RunOptions overrides."""

    name: str
    model: str
    options: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model, "options": dict(self.options)}


@dataclass(frozen=True)
class Pair:
    """One clip: a face video (or photo) and the speech it is synced to."""

    name: str
    video: str
    audio: str

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Suite:
    name: str
    pairs: tuple[Pair, ...]
    settings: tuple[Setting, ...]
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "pairs": [p.to_dict() for p in self.pairs],
                "settings": [s.to_dict() for s in self.settings]}


# -- YAML with line numbers ------------------------------------------------------------------

def _plain(node: yaml.Node, path: tuple[Any, ...], lines: dict[tuple[Any, ...], int]) -> Any:
    """The node's Python value; ``lines[path]`` gets the 1-based line of every value."""
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            out[key] = _plain(value_node, (*path, key), lines)
            lines[(*path, key)] = key_node.start_mark.line + 1
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_plain(item, (*path, i), lines) for i, item in enumerate(node.value)]
    return yaml.safe_load(yaml.serialize(node))  # a scalar, typed as safe_load types it


class _Where:
    """Builds SuiteErrors that point at a path of the parsed document."""

    def __init__(self, source: str, lines: Mapping[tuple[Any, ...], int]) -> None:
        self.source, self.lines = source, lines

    def error(self, path: tuple[Any, ...], message: str) -> SuiteError:
        probe = path
        while probe and probe not in self.lines:
            probe = probe[:-1]
        name = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else p) for i, p in enumerate(path))
        return SuiteError(message, source=self.source, line=self.lines.get(probe), field_name=name or None)


def _check_name(where: _Where, path: tuple[Any, ...], value: Any, what: str) -> str:
    text = str(value).strip() if value is not None else ""
    if not text or isinstance(value, (dict, list)) or not NAME_RE.fullmatch(text):
        raise where.error(path, f"{what} must be 1-80 letters, digits, spaces or .+=,- "
                                f"(got {str(value)[:40]!r})")
    return text


def parse_setting(value: Any, *, where: _Where | None = None, path: tuple[Any, ...] = ("settings",)
                  ) -> Setting:
    """A setting from ``"model key=value ..."`` or ``{name, model, options}``; the model must
    be known and each option a RunOptions field a suite may set."""
    where = where or _Where("setting", {})
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - set(SETTING_KEYS))
        if unknown:
            raise where.error((*path, unknown[0]), f"unknown key {unknown[0]!r}: use {', '.join(SETTING_KEYS)}")
        model = str(value.get("model") or "").strip()
        options = value.get("options") or {}
        if not isinstance(options, Mapping):
            raise where.error((*path, "options"), "options must be a mapping of option: value")
        name = value.get("name") or _setting_label(model, options)
    elif isinstance(value, str):
        model, options = _split_setting(value, where, path)
        name = value.strip()
    else:
        raise where.error(path, f"a setting is text like 'baseline crf=30' or a mapping, got {value!r:.40}")
    if model not in MODELS:
        raise where.error((*path, "model") if isinstance(value, Mapping) else path,
                          f"unknown model {model!r}: choose one of {', '.join(MODELS)}")
    allowed = {f.name for f in dataclasses.fields(RunOptions)} - set(SERVER_ONLY_OPTIONS)
    for key in options:
        if key not in allowed:
            raise where.error((*path, "options") if isinstance(value, Mapping) else path,
                              f"unknown option {key!r} for {model}: allowed are {', '.join(sorted(allowed))}")
    name = _check_name(where, (*path, "name") if isinstance(value, Mapping) else path, name, "a setting name")
    return Setting(name=name, model=model, options={k: _tuple(v) for k, v in options.items()})


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _split_setting(text: str, where: _Where, path: tuple[Any, ...]) -> tuple[str, dict[str, Any]]:
    model, *rest = text.split()
    options: dict[str, Any] = {}
    for part in rest:
        key, sep, raw = part.partition("=")
        if not sep or not key or not raw:
            raise where.error(path, f"option {part!r} of setting {text!r} is not key=value")
        values = [yaml.safe_load(v) for v in raw.split(",")]
        options[key] = values if len(values) > 1 else values[0]
    return model, options


def _setting_label(model: str, options: Mapping[str, Any]) -> str:
    parts = [model] + [f"{k}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
                       for k, v in options.items()]
    return " ".join(parts)


def parse_settings(values: Iterable[Any], *, where: _Where | None = None) -> tuple[Setting, ...]:
    """Settings in order; a repeated name is refused."""
    where = where or _Where("settings", {})
    out: list[Setting] = []
    for i, value in enumerate(values):
        setting = parse_setting(value, where=where, path=("settings", i))
        if any(s.name == setting.name for s in out):
            raise where.error(("settings", i), f"setting {setting.name!r} is listed twice")
        out.append(setting)
    if not out:
        raise where.error(("settings",), "a suite needs at least one setting")
    return tuple(out)


def settings_from_text(text: str) -> tuple[Setting, ...]:
    """Settings from one text field: comma- or newline-separated ``model key=value`` items
    (a comma inside an option value, as in ``pads=0,20,0,0``, stays with the option)."""
    items = [s.strip() for s in re.split(r"\n|,(?=\s*[A-Za-z_][\w]*(?:\s|$))", text or "") if s.strip()]
    return parse_settings(items, where=_Where("settings", {}))


# -- pairs ------------------------------------------------------------------------------------

def _resolve(base: Path, value: Any) -> str:
    path = Path(os.path.expanduser(str(value)))
    return os.fspath(path if path.is_absolute() else base / path)


def _pair(item: Any, i: int, base: Path, where: _Where) -> Pair:
    path = ("pairs", i)
    if not isinstance(item, Mapping):
        raise where.error(path, "a pair is a mapping with video and audio")
    unknown = sorted(set(item) - set(PAIR_KEYS))
    if unknown:
        raise where.error((*path, unknown[0]), f"unknown key {unknown[0]!r}: use {', '.join(PAIR_KEYS)}")
    for key in ("video", "audio"):
        if not item.get(key) or isinstance(item[key], (dict, list)):
            raise where.error((*path, key), f"{key} is missing: give the path of the {key} file")
    video, audio = _resolve(base, item["video"]), _resolve(base, item["audio"])
    name = _check_name(where, (*path, "name"), item.get("name") or Path(video).stem, "a pair name")
    return Pair(name=name, video=video, audio=audio)


def folder_pairs(folder: str | os.PathLike[str], *, source: str = "folder") -> list[Pair]:
    """Pairs from a folder: each video (or photo) with the audio file of the same stem, or
    with the folder's only audio file when there is one."""
    root = Path(folder)
    if not root.is_dir():
        raise SuiteError(f"{os.fspath(root)!r} is not a folder", source=source, field_name="folder")
    files = sorted(p for p in root.iterdir() if p.is_file())
    videos = [p for p in files if p.suffix.lower() in VIDEO_EXTS]
    audios = {p.stem: p for p in files if p.suffix.lower() in AUDIO_EXTS}
    pairs = []
    for video in videos:
        audio = audios.get(video.stem) or (next(iter(audios.values())) if len(audios) == 1 else None)
        if audio is not None:
            pairs.append(Pair(name=video.stem, video=os.fspath(video), audio=os.fspath(audio)))
    if not pairs:
        raise SuiteError(f"no video with a matching audio file in {os.fspath(root)!r} (a video "
                         f"x.mp4 pairs with x.wav, or with the folder's only audio file)",
                         source=source, field_name="folder")
    return pairs


def _unique_pairs(pairs: Sequence[Pair], where: _Where) -> tuple[Pair, ...]:
    seen: set[str] = set()
    for i, pair in enumerate(pairs):
        if pair.name in seen:
            raise where.error(("pairs", i, "name"), f"pair name {pair.name!r} is used twice")
        seen.add(pair.name)
    if not pairs:
        raise where.error(("pairs",), "a suite needs at least one pair (pairs: or folder:)")
    return tuple(pairs)


def check_media(suite: Suite) -> None:
    """Refuse a suite whose media files are missing, naming the pair and the path."""
    for pair in suite.pairs:
        for key in ("video", "audio"):
            path = getattr(pair, key)
            if not os.path.isfile(path):
                raise SuiteError(f"{key} file {path!r} of pair {pair.name!r} does not exist",
                                 source=suite.source or suite.name, field_name=f"{pair.name}.{key}")


# -- files ------------------------------------------------------------------------------------

def parse_yaml(text: str, *, base_dir: str | os.PathLike[str], source: str = "suite.yaml") -> Suite:
    """A suite from YAML text; relative paths are resolved against ``base_dir``."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise SuiteError(f"not valid YAML: {getattr(exc, 'problem', None) or exc}", source=source,
                         line=mark.line + 1 if mark else None) from None
    lines: dict[tuple[Any, ...], int] = {}
    doc = _plain(root, (), lines) if root is not None else None
    where = _Where(source, lines)
    if not isinstance(doc, Mapping):
        raise where.error((), "a suite file is a mapping with name, pairs and settings")
    unknown = sorted(set(doc) - set(TOP_KEYS))
    if unknown:
        raise where.error((unknown[0],), f"unknown key {unknown[0]!r}: use {', '.join(TOP_KEYS)}")
    name = _check_name(where, ("name",), doc.get("name"), "the suite's name")
    items = doc.get("pairs") or []
    if not isinstance(items, list):
        raise where.error(("pairs",), "pairs must be a list")
    base = Path(base_dir)
    pairs = [_pair(item, i, base, where) for i, item in enumerate(items)]
    if doc.get("folder"):
        pairs += folder_pairs(_resolve(base, doc["folder"]), source=source)
    values = doc.get("settings")
    if not isinstance(values, list):
        raise where.error(("settings",), "settings must be a list such as [baseline, passthrough]")
    return Suite(name=name, pairs=_unique_pairs(pairs, where), settings=parse_settings(values, where=where),
                 source=source)


def parse_csv(text: str, *, base_dir: str | os.PathLike[str], settings: Sequence[Setting],
              name: str, source: str = "suite.csv") -> Suite:
    """A suite from a CSV table of pairs (columns video, audio and optionally name)."""
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    for column in ("video", "audio"):
        if column not in header:
            raise SuiteError(f"the header needs a {column!r} column (has {', '.join(header) or 'none'})",
                             source=source, line=1, field_name=column)
    unknown = sorted(set(header) - set(PAIR_KEYS))
    if unknown:
        raise SuiteError(f"unknown column {unknown[0]!r}: use {', '.join(PAIR_KEYS)}", source=source,
                         line=1, field_name=unknown[0])
    lines: dict[tuple[Any, ...], int] = {}
    rows = []
    for i, row in enumerate(reader):
        lines[("pairs", i)] = reader.line_num
        rows.append({k.strip(): (v or "").strip() for k, v in row.items() if k is not None})
    where = _Where(source, lines)
    pairs = [_pair({k: v for k, v in row.items() if v}, i, Path(base_dir), where) for i, row in enumerate(rows)]
    suite_name = _check_name(where, ("name",), name, "the suite's name")
    return Suite(name=suite_name, pairs=_unique_pairs(pairs, where), settings=tuple(settings), source=source)


def load_suite(path: str | os.PathLike[str], *, settings: Sequence[Setting] | None = None,
               name: str | None = None, check_files: bool = True) -> Suite:
    """A suite from a .yaml/.yml or .csv file, or a folder of clips (``settings`` needed for
    CSV and folders); with ``check_files`` missing media is refused here."""
    p = Path(path)
    source = p.name or os.fspath(p)
    if p.is_dir():
        if not settings:
            raise SuiteError("a folder suite needs settings", source=source, field_name="settings")
        suite = Suite(name=_check_name(_Where(source, {}), ("name",), name or p.resolve().name, "the suite's name"),
                      pairs=tuple(folder_pairs(p, source=source)), settings=tuple(settings), source=source)
    else:
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SuiteError(f"cannot read the suite file: {exc}", source=os.fspath(p)) from None
        if p.suffix.lower() == ".csv":
            if not settings:
                raise SuiteError("a CSV suite needs settings (e.g. --settings baseline,passthrough)",
                                 source=source, field_name="settings")
            suite = parse_csv(text, base_dir=p.parent, settings=settings, name=name or p.stem, source=source)
        else:
            suite = parse_yaml(text, base_dir=p.parent, source=source)
            if settings:
                suite = dataclasses.replace(suite, settings=tuple(settings))
    if check_files:
        check_media(suite)
    return suite
